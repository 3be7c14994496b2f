"""SafeFetcher against real HTTP(S) servers on loopback.

Names that must look public go through two seams, never patches: a resolver
(``images.example.com`` -> a global documentation-free address) and an httpx
transport that carries connections for that address to the loopback server,
recording what it was asked to connect to.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import trustme
from aiohttp import web
from PIL import Image

from ai_engine.errors import (
    FetchTimeout,
    HttpStatus,
    ImagingError,
    InvalidInput,
    TooLarge,
    Unreachable,
    UrlNotAllowed,
)
from ai_engine.fetch import SafeFetcher, decode_base64_image, is_public_address

PUBLIC_IP = "93.184.216.34"  # a globally routable address; the transport seam maps it to loopback
NAMES = {
    "images.example.com": [PUBLIC_IP],
    "secure.example.com": [PUBLIC_IP],
    "internal.example.com": ["10.0.0.5"],
    "mixed.example.com": [PUBLIC_IP, "192.168.1.1"],
    "metadata.example.com": ["169.254.169.254"],
}
MAX_BYTES = 100_000


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


async def fake_dns(host: str, port: int) -> list[str]:
    try:
        return NAMES[host]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


@dataclass
class LoopbackTransport(httpx.AsyncBaseTransport):
    """Carries requests addressed to PUBLIC_IP to 127.0.0.1 and records them."""

    verify: ssl.SSLContext | bool = True
    seen: list[httpx.Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport(verify=self.verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.url.host == PUBLIC_IP:
            request = httpx.Request(request.method, request.url.copy_with(host="127.0.0.1"),
                                    headers=request.headers, stream=request.stream,
                                    extensions=request.extensions)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- the test server ----------------------------------------------------------


def _make_app() -> web.Application:
    async def image(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>", content_type="text/html")

    async def big_streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length
        await response.prepare(request)
        await response.write(PNG)
        for _ in range(40):
            await response.write(b"\0" * 10_000)
        await response.write_eof()
        return response

    async def big_declared(request: web.Request) -> web.StreamResponse:
        # Declares a gigabyte, sends a few bytes, then stalls: only a check of the
        # header ends this quickly.
        response = web.StreamResponse()
        response.content_length = 10**9
        await response.prepare(request)
        await response.write(PNG)
        await asyncio.sleep(30)
        return response

    async def slow_headers(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=PNG)

    async def slow_body(request: web.Request) -> web.StreamResponse:
        # Each byte arrives quickly, the whole body never does: the total cap must end it.
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(PNG)
        for _ in range(300):
            await response.write(b"\0")
            await asyncio.sleep(0.05)
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=int(request.query.get("status", "200")), headers={
            "X-Seen-Host": request.headers.get("Host", ""),
            "X-Seen-Body": body.decode(),
            "X-Seen-Type": request.headers.get("Content-Type", ""),
            "Location": "/img.png",
        })

    app = web.Application()
    app.router.add_get("/img.png", image)
    app.router.add_get("/text", text)
    app.router.add_get("/big", big_streamed)
    app.router.add_get("/big-declared", big_declared)
    app.router.add_get("/slow", slow_headers)
    app.router.add_get("/slow-body", slow_body)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_post("/hook", hook)
    return app


async def _serve(ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(_make_app(), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def port() -> AsyncIterator[int]:
    runner, port = await _serve()
    yield port
    await runner.cleanup()


@pytest.fixture
async def open_fetcher() -> AsyncIterator[SafeFetcher]:
    fetcher = SafeFetcher(allow_private=True, timeout_s=2.0, max_bytes=MAX_BYTES)
    yield fetcher
    await fetcher.aclose()


@pytest.fixture
async def strict_fetcher() -> AsyncIterator[SafeFetcher]:
    fetcher = SafeFetcher(allow_private=False, timeout_s=2.0, max_bytes=MAX_BYTES)
    yield fetcher
    await fetcher.aclose()


@pytest.fixture
async def seamed() -> AsyncIterator[tuple[SafeFetcher, LoopbackTransport]]:
    """A strict fetcher whose DNS and network are the seams above."""
    transport = LoopbackTransport()
    fetcher = SafeFetcher(allow_private=False, timeout_s=2.0, max_bytes=MAX_BYTES,
                          transport=transport, resolver=fake_dns)
    yield fetcher, transport
    await fetcher.aclose()


# -- downloads ------------------------------------------------------------------


async def test_download_from_loopback_when_private_allowed(open_fetcher: SafeFetcher,
                                                           port: int) -> None:
    assert await open_fetcher.fetch_image(f"http://127.0.0.1:{port}/img.png") == PNG


async def test_download_follows_a_relative_redirect(open_fetcher: SafeFetcher, port: int) -> None:
    assert await open_fetcher.fetch_image(f"http://127.0.0.1:{port}/redirect?to=/img.png") == PNG


async def test_redirect_loop_stops(open_fetcher: SafeFetcher, port: int) -> None:
    with pytest.raises(UrlNotAllowed, match="redirects"):
        await open_fetcher.fetch_image(f"http://127.0.0.1:{port}/loop")


async def test_public_name_connects_to_the_checked_address(
        seamed: tuple[SafeFetcher, LoopbackTransport], port: int) -> None:
    fetcher, transport = seamed
    assert await fetcher.fetch_image(f"http://images.example.com:{port}/img.png") == PNG
    (request,) = transport.seen
    assert request.url.host == PUBLIC_IP  # pinned: no second resolution downstream
    assert request.headers["Host"] == f"images.example.com:{port}"


async def test_https_pin_verifies_the_certificate_for_the_name() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("secure.example.com").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    runner, port = await _serve(server_context)
    transport = LoopbackTransport(verify=client_context)
    fetcher = SafeFetcher(allow_private=False, timeout_s=2.0, max_bytes=MAX_BYTES,
                          transport=transport, resolver=fake_dns)
    try:
        assert await fetcher.fetch_image(f"https://secure.example.com:{port}/img.png") == PNG
        assert transport.seen[0].url.host == PUBLIC_IP
        # Same address, a name the certificate does not cover: TLS must refuse.
        with pytest.raises(Unreachable):
            await fetcher.fetch_image(f"https://images.example.com:{port}/img.png")
    finally:
        await fetcher.aclose()
        await runner.cleanup()


# -- the address policy ---------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/img.png",
    "http://localhost:{port}/img.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/img.png",
    "http://[::ffff:127.0.0.1]:{port}/img.png",
    "http://0.0.0.0:{port}/img.png",
    "http://2130706433:{port}/img.png",
])
async def test_private_addresses_refused(strict_fetcher: SafeFetcher, port: int,
                                         url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        await strict_fetcher.fetch_image(url.format(port=port))


@pytest.mark.parametrize("url", [
    "ftp://images.example.com/a.png",
    "file:///etc/passwd",
    "http://user:secret@images.example.com/a.png",
    "http:///no-host",
    "not a url",
])
async def test_bad_urls_refused(seamed: tuple[SafeFetcher, LoopbackTransport], url: str) -> None:
    fetcher, transport = seamed
    with pytest.raises(UrlNotAllowed):
        await fetcher.fetch_image(url)
    assert transport.seen == []


@pytest.mark.parametrize("name", ["internal.example.com", "mixed.example.com",
                                  "metadata.example.com"])
async def test_public_looking_name_resolving_private_refused(
        seamed: tuple[SafeFetcher, LoopbackTransport], port: int, name: str) -> None:
    fetcher, transport = seamed
    with pytest.raises(UrlNotAllowed):
        await fetcher.fetch_image(f"http://{name}:{port}/img.png")
    with pytest.raises(UrlNotAllowed):
        await fetcher.check_url(f"https://{name}/hook")
    assert transport.seen == []  # refused before any connection


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/img.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://internal.example.com:{port}/img.png",
])
async def test_redirect_to_private_refused(seamed: tuple[SafeFetcher, LoopbackTransport],
                                           port: int, target: str) -> None:
    fetcher, transport = seamed
    to = target.format(port=port)
    with pytest.raises(UrlNotAllowed):
        await fetcher.fetch_image(f"http://images.example.com:{port}/redirect?to={to}")
    assert len(transport.seen) == 1  # the first, public hop was made; the second was not


async def test_check_url(seamed: tuple[SafeFetcher, LoopbackTransport]) -> None:
    fetcher, transport = seamed
    await fetcher.check_url("https://images.example.com/hooks/1")
    with pytest.raises(Unreachable):
        await fetcher.check_url("https://nowhere.example.com/")
    assert transport.seen == []


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True),
    ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("239.255.255.250", False),
    ("240.0.0.1", False), ("255.255.255.255", False), ("192.0.2.1", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False),
    ("ff02::1", False), ("::ffff:10.0.0.1", False), ("::ffff:169.254.169.254", False),
    ("64:ff9b::a00:1", False), ("2002:a00:1::", False),
])
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


# -- caps and failures ------------------------------------------------------------


async def test_streamed_body_over_cap(open_fetcher: SafeFetcher, port: int) -> None:
    with pytest.raises(TooLarge) as caught:
        await open_fetcher.fetch_image(f"http://127.0.0.1:{port}/big")
    assert caught.value.code == "fetch.too_large"


async def test_declared_length_over_cap_refused_up_front(open_fetcher: SafeFetcher,
                                                         port: int) -> None:
    started = time.monotonic()
    with pytest.raises(TooLarge, match="declares"):
        await open_fetcher.fetch_image(f"http://127.0.0.1:{port}/big-declared")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("path", ["/slow", "/slow-body"])
async def test_total_time_cap(port: int, path: str) -> None:
    fetcher = SafeFetcher(allow_private=True, timeout_s=0.5, max_bytes=MAX_BYTES)
    started = time.monotonic()
    try:
        with pytest.raises(FetchTimeout) as caught:
            await fetcher.fetch_image(f"http://127.0.0.1:{port}{path}")
    finally:
        await fetcher.aclose()
    assert 0.4 < time.monotonic() - started < 1.5
    assert caught.value.retryable


async def test_not_found(open_fetcher: SafeFetcher, port: int) -> None:
    with pytest.raises(HttpStatus) as caught:
        await open_fetcher.fetch_image(f"http://127.0.0.1:{port}/missing.png")
    assert caught.value.status == 404
    assert not caught.value.retryable


async def test_non_image_bytes(open_fetcher: SafeFetcher, port: int) -> None:
    with pytest.raises(ImagingError) as caught:
        await open_fetcher.fetch_image(f"http://127.0.0.1:{port}/text")
    assert caught.value.code == "imaging.unsupported_format"


async def test_connection_refused(open_fetcher: SafeFetcher) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    with pytest.raises(Unreachable):
        await open_fetcher.fetch_image(f"http://127.0.0.1:{free_port}/img.png")


# -- webhook POSTs ----------------------------------------------------------------


async def test_post_json_keeps_the_name_and_does_not_follow_redirects(
        seamed: tuple[SafeFetcher, LoopbackTransport], port: int) -> None:
    fetcher, transport = seamed
    status, headers = await fetcher.post_json(
        f"http://images.example.com:{port}/hook?status=302", b'{"a":1}',
        {"webhook-id": "msg_1"})
    assert status == 302  # returned as is, not followed
    assert headers["X-Seen-Host"] == f"images.example.com:{port}"
    assert headers["X-Seen-Body"] == '{"a":1}'
    assert headers["X-Seen-Type"] == "application/json"
    assert len(transport.seen) == 1
    assert transport.seen[0].headers["webhook-id"] == "msg_1"


async def test_post_json_refuses_private(strict_fetcher: SafeFetcher, port: int) -> None:
    with pytest.raises(UrlNotAllowed):
        await strict_fetcher.post_json(f"http://127.0.0.1:{port}/hook", b"{}", {})


# -- inline images ------------------------------------------------------------------


def test_base64_raw_and_data_uri() -> None:
    encoded = base64.b64encode(PNG).decode()
    assert decode_base64_image(encoded, max_bytes=MAX_BYTES) == PNG
    assert decode_base64_image(f"data:image/png;base64,{encoded}", max_bytes=MAX_BYTES) == PNG
    wrapped = "\n".join(encoded[i:i + 60] for i in range(0, len(encoded), 60))
    assert decode_base64_image(f"  {wrapped}\n", max_bytes=MAX_BYTES) == PNG
    urlsafe = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    assert decode_base64_image(urlsafe, max_bytes=MAX_BYTES) == PNG


@pytest.mark.parametrize("data", [
    "", "!!!not base64!!!", "abcde", "data:image/png,rawbytes",
    "data:text/plain;base64," + base64.b64encode(PNG).decode(),
])
def test_bad_base64(data: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_base64_image(data, max_bytes=MAX_BYTES)
    assert caught.value.code == "input.bad_base64"


def test_base64_not_an_image() -> None:
    with pytest.raises(ImagingError) as caught:
        decode_base64_image(base64.b64encode(b"hello world").decode(), max_bytes=MAX_BYTES)
    assert caught.value.code == "imaging.unsupported_format"


def test_base64_over_cap() -> None:
    with pytest.raises(TooLarge):
        decode_base64_image(base64.b64encode(PNG + b"\0" * 200).decode(), max_bytes=len(PNG))
