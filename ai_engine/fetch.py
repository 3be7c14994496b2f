"""Safe outbound HTTP: the only code that opens connections for images and webhooks.

Every request goes through one policy (server-side request forgery defence)::

    parse URL ── http/https only, no userinfo, a host
        │
    resolve host (asyncio getaddrinfo, or an injected resolver)
        │
    refuse if ANY address is not globally routable  (unless allow_private)
        │
    connect to a checked address, never to a second DNS answer
        │
    GET: follow redirects by hand (≤ max_redirects), each hop re-checked from the top
    POST: redirects are never followed

Errors raised (all from :mod:`ai_engine.errors`)::

    UrlNotAllowed  fetch.url_not_allowed   bad URL or refused address
    TooLarge       fetch.too_large         Content-Length or streamed bytes over max_bytes
    FetchTimeout   fetch.timeout           total time cap reached (resolution included)
    HttpStatus     fetch.http_status       non-2xx answer to a GET
    Unreachable    fetch.unreachable       DNS failure, refused connection, TLS or protocol error
    ImagingError   imaging.unsupported_format  downloaded bytes are not a known image format
    InvalidInput   input.bad_base64        inline image that is not base64

httpx exceptions are translated in this module only (``_PinnedExchange`` for
connecting, ``_Deadline`` for everything inside an operation).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx

from ai_engine.errors import (
    FetchTimeout,
    HttpStatus,
    InvalidInput,
    TooLarge,
    Unreachable,
    UrlNotAllowed,
)
from ai_engine.imaging.decode import check_image_format

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``async resolver(host, port) -> [ip, ...]``; raises ``OSError`` if the name does not resolve."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
_USER_AGENT = "ai-engine/0.1 (+image-to-3d)"
_WEBHOOK_BODY_READ_BYTES = 64 * 1024


async def resolve_with_getaddrinfo(host: str, port: int) -> list[str]:
    """The default resolver: every address the system resolver gives for ``host``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        # A link-local IPv6 answer may carry a zone ("fe80::1%eth0"); the zone is not
        # part of the address the policy judges.
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address reaches through a translation mechanism."""
    embedded: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        embedded.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.append(ip.teredo[1])
    if ip in _NAT64_PREFIX:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return embedded


def is_public_address(ip: IpAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address (and so is whatever it embeds).

    ``is_global`` alone lets through multicast and a few reserved blocks, so those
    are refused explicitly; IPv6 forms that carry an IPv4 address (mapped, 6to4,
    Teredo, NAT64) are judged by that IPv4 address too.
    """
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if ip.is_loopback or ip.is_link_local or ip.is_private:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return all(is_public_address(v4) for v4 in _embedded_ipv4(ip))
    return True


@dataclass(frozen=True)
class _Target:
    """A URL whose host has been resolved and judged by the policy."""

    url: httpx.URL
    addresses: list[str]


class SafeFetcher:
    """Outbound HTTP under the SSRF policy and the size and time caps.

    ``transport`` replaces the network under httpx (tests use it as a seam);
    ``resolver`` replaces DNS resolution (``async (host, port) -> [ip, ...]``).
    """

    def __init__(self, *, allow_private: bool, timeout_s: float, max_bytes: int,
                 max_redirects: int = 5, transport: httpx.AsyncBaseTransport | None = None,
                 resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._resolve = resolver or resolve_with_getaddrinfo
        # Connections are pinned by rewriting the URL to the checked IP (see
        # _PinnedExchange). httpx pools connections by (scheme, IP, port), so a
        # kept-alive TLS connection opened for one name could be reused for another
        # name on the same IP without its certificate being checked for that name:
        # keep-alive is off here, and every request says "Connection: close" so that
        # an injected transport with its own pool does not reuse connections either.
        # trust_env=False: a proxy from the environment would resolve names itself
        # and defeat the pin.
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": _USER_AGENT},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- public API ---------------------------------------------------------

    async def check_url(self, url: str) -> None:
        """Parse, resolve and judge ``url``; raises when a request to it would be refused."""
        async with _Deadline(self.timeout_s, url):
            await self._check(_parse_url(url))

    async def fetch_image(self, url: str) -> bytes:
        """Download ``url`` (following checked redirects) and return its bytes.

        The bytes must start like a known image format (PNG, JPEG, WebP, GIF,
        HEIC/AVIF), else ``ImagingError`` ``imaging.unsupported_format``.
        """
        async with _Deadline(self.timeout_s, url):
            data = await self._get(_parse_url(url))
        check_image_format(data)
        return data

    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str], *,
                        timeout_s: float | None = None) -> tuple[int, httpx.Headers]:
        """POST ``body`` as JSON to ``url``; returns the answer's status and headers.

        Any status is returned as is (the caller decides about retries); redirects are
        not followed, since re-sending a signed body to a new place is not what the
        receiver asked for.
        """
        limit_s = self.timeout_s if timeout_s is None else timeout_s
        all_headers = {"Content-Type": "application/json", **headers}
        async with _Deadline(limit_s, url):
            target = await self._check(_parse_url(url))
            async with _PinnedExchange(self._client, target, method="POST", body=body,
                                        headers=all_headers) as response:
                # Read a little of the answer so the exchange completes cleanly;
                # receivers' bodies are not used.
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= _WEBHOOK_BODY_READ_BYTES:
                        break
                return response.status_code, response.headers

    # -- policy -------------------------------------------------------------

    async def _check(self, url: httpx.URL) -> _Target:
        host = _ascii_host(url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            # An address literal is its own answer; only names go to the resolver.
            addresses = [str(ipaddress.ip_address(host))] if _is_ip_literal(host) \
                else await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise Unreachable(f"cannot resolve host {host!r}: {exc}") from exc
        if not addresses:
            raise Unreachable(f"host {host!r} has no addresses")
        if not self.allow_private:
            for address in addresses:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError as exc:
                    raise UrlNotAllowed(f"host {host!r} resolved to {address!r}") from exc
                if not is_public_address(ip):
                    # Any non-public answer refuses the whole name: with several
                    # answers, which one a connection would use is not ours to choose.
                    raise UrlNotAllowed(
                        f"host {host!r} resolves to the non-public address {address}")
        return _Target(url=url, addresses=addresses)

    async def _get(self, url: httpx.URL) -> bytes:
        for _hop in range(self.max_redirects + 1):
            target = await self._check(url)
            async with _PinnedExchange(self._client, target, method="GET", body=None,
                                        headers={}) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise HttpStatus(f"redirect without Location from {_safe(url)}",
                                         status=response.status_code)
                    url = _parse_url(str(url.join(location)))
                    logger.debug("redirected to %s", _safe(url))
                    continue
                if not 200 <= response.status_code < 300:
                    raise HttpStatus(f"{_safe(url)} answered HTTP {response.status_code}",
                                     status=response.status_code)
                return await self._read_capped(response, url)
        raise UrlNotAllowed(f"more than {self.max_redirects} redirects")

    async def _read_capped(self, response: httpx.Response, url: httpx.URL) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLarge(f"{_safe(url)} declares {declared} bytes "
                           f"(limit {self.max_bytes})")
        chunks: list[bytes] = []
        received = 0
        # aiter_bytes yields decoded content, so a compressed body is capped by its
        # decompressed size.
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if received > self.max_bytes:
                raise TooLarge(f"{_safe(url)} sent more than {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


class _PinnedExchange:
    """One request sent to a checked address, as an async context giving the response.

    Pinning: the request URL's host is replaced by the checked IP, the ``Host``
    header keeps the name, and for https the ``sni_hostname`` extension makes TLS
    send and verify the real name. This needs no custom transport, so the transport
    seam stays a plain ``httpx.AsyncBaseTransport``. Addresses are tried in order
    until one accepts the connection.
    """

    def __init__(self, client: httpx.AsyncClient, target: _Target, *, method: str,
                 body: bytes | None, headers: Mapping[str, str]) -> None:
        self._client = client
        self._target = target
        self._method = method
        self._body = body
        self._headers = headers
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        url = self._target.url
        last_error: Exception | None = None
        for address in self._target.addresses:
            request = self._client.build_request(
                self._method,
                url.copy_with(host=address),
                content=self._body,
                headers={**self._headers, "Host": _host_header(url), "Connection": "close"},
                extensions={"sni_hostname": _ascii_host(url)} if url.scheme == "https"
                else None,
            )
            try:
                self._response = await self._client.send(request, stream=True)
                return self._response
            except httpx.ConnectError as exc:
                last_error = exc
                continue
            except httpx.TimeoutException as exc:
                raise FetchTimeout(f"{_safe(url)} timed out: {type(exc).__name__}") from exc
            except httpx.HTTPError as exc:
                raise Unreachable(f"{_safe(url)}: {type(exc).__name__}: {exc}") from exc
        raise Unreachable(f"cannot connect to {_safe(url)}: {last_error}") from last_error

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            await self._response.aclose()


class _Deadline:
    """The total time cap of one operation; translates httpx errors raised inside it."""

    def __init__(self, limit_s: float, url: str) -> None:
        self._timeout = asyncio.timeout(limit_s)
        self._limit_s = limit_s
        self._url = url

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: object) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)  # type: ignore[arg-type]
        except TimeoutError as timeout:
            raise FetchTimeout(f"{_safe_str(self._url)} took longer than "
                               f"{self._limit_s:g} s") from timeout
        if isinstance(exc, httpx.TimeoutException):
            raise FetchTimeout(f"{_safe_str(self._url)} timed out") from exc
        if isinstance(exc, httpx.HTTPError):
            raise Unreachable(f"{_safe_str(self._url)}: {type(exc).__name__}: {exc}") from exc


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UrlNotAllowed(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise UrlNotAllowed(f"only http and https URLs are fetched, not {parsed.scheme!r}")
    if parsed.userinfo:
        raise UrlNotAllowed("URLs with credentials (user:password@) are not fetched")
    if not parsed.host:
        raise UrlNotAllowed("URL has no host")
    return parsed


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ascii_host(url: httpx.URL) -> str:
    """The host as sent on the wire: IDNA-encoded names, bare IPv6 addresses."""
    return url.raw_host.decode("ascii")


def _host_header(url: httpx.URL) -> str:
    host = _ascii_host(url)
    host = f"[{host}]" if ":" in host else host
    return host if url.port is None else f"{host}:{url.port}"


def _safe(url: httpx.URL) -> str:
    """The URL without its query string, for messages (queries often carry signatures)."""
    return str(url.copy_with(query=None, fragment=None))


def _safe_str(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0]


# -- inline images ----------------------------------------------------------

_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def decode_base64_image(data: str, *, max_bytes: int) -> bytes:
    """Decode an inline image: raw base64 (standard or URL-safe, padding optional)
    or a ``data:image/...;base64,`` URI. Returns the image bytes.

    Raises ``InvalidInput`` (``input.bad_base64``) for anything that is not base64,
    ``TooLarge`` over ``max_bytes`` (checked before decoding), and ``ImagingError``
    (``imaging.unsupported_format``) when the bytes are not a known image format.
    """
    text = data.strip()
    match = _DATA_URI.match(text)
    if match:
        media_type = match["type"].strip().lower()
        params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
        if "base64" not in params:
            raise InvalidInput("data URI must be base64-encoded (';base64,')",
                               code="input.bad_base64")
        if media_type and not media_type.startswith("image/"):
            raise InvalidInput(f"data URI has media type {media_type!r}, not image/*",
                               code="input.bad_base64")
        text = match["data"]
    text = re.sub(r"\s+", "", text).replace("-", "+").replace("_", "/")
    if not text:
        raise InvalidInput("inline image is empty", code="input.bad_base64")
    if len(text) // 4 * 3 > max_bytes + 3:
        raise TooLarge(f"inline image is over {max_bytes} bytes")
    if not _BASE64_CHARS.match(text) or len(text.rstrip("=")) % 4 == 1:
        raise InvalidInput("inline image is not valid base64", code="input.bad_base64")
    text = text.rstrip("=")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"inline image is not valid base64: {exc}",
                           code="input.bad_base64") from exc
    if len(raw) > max_bytes:
        raise TooLarge(f"inline image is {len(raw)} bytes (limit {max_bytes})")
    check_image_format(raw)
    return raw
