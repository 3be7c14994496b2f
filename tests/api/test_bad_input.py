"""Bad input: a clear 4xx listing every problem, or a failed job with a stable code;
the service stays healthy after all of it."""

from __future__ import annotations

import struct
import zlib

import pytest

from tests.conftest import wait_job


def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels (a few hundred KB on the wire)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@pytest.mark.parametrize(("name", "make", "code"), [
    ("notes.txt", lambda photo: b"these are not the pixels you are looking for" * 10,
     "imaging.unsupported_format"),
    ("truncated.png", lambda photo: photo[: len(photo) // 3], "imaging.decode_failed"),
    ("bomb.png", lambda photo: png_bomb(), "imaging.too_many_pixels"),
    ("missing.png", None, "fetch.http_status"),
])
async def test_bad_images_fail_the_job_with_a_stable_code(start_service, make_settings,
                                                          image_server, receiver, photo,
                                                          name, make, code):
    client = await start_service(make_settings())
    url = image_server.add(name, make(photo)) if make else f"{image_server.url}/{name}"
    resp = await client.post("/generate-3d", json={"session_id": "bad", "asset_id": name,
                                                   "image_url": url,
                                                   "webhook_url": receiver.url})
    assert resp.status == 202
    job_id = (await resp.json())["job_id"]
    event = await receiver.wait_terminal(job_id)
    assert event["type"] == "asset.failed"
    assert event["data"]["error"]["code"] == code, event["data"]["error"]
    # still healthy: a good job right after succeeds
    good = await client.post("/generate-3d", json={
        "session_id": "bad", "asset_id": name + "-ok",
        "image_url": image_server.add("ok.png", photo)})
    assert (await wait_job(client, (await good.json())["job_id"]))["status"] == "succeeded"


async def test_private_urls_refused_when_not_allowed(start_service, make_settings):
    client = await start_service(make_settings(allow_private_urls=False))
    for url in ("http://127.0.0.1:9/cat.png", "http://169.254.169.254/latest/meta-data/",
                "http://localhost/cat.png", "http://[::1]/cat.png"):
        resp = await client.post("/generate-3d", json={"session_id": "s", "asset_id": "a",
                                                       "image_url": url})
        assert resp.status == 422, url
        problem = await resp.json()
        assert problem["errors"][0]["loc"] == ["image_url"], problem
    resp = await client.post("/generate-3d", json={
        "session_id": "s", "asset_id": "b", "image_base64": "aGVsbG8=",
        "webhook_url": "http://10.0.0.7/hook"})
    problem = await resp.json()
    assert resp.status == 422 and ["webhook_url"] in [e["loc"] for e in problem["errors"]]


async def test_every_bad_field_is_listed(start_service, make_settings):
    client = await start_service(make_settings())
    resp = await client.post("/generate-3d", json={
        "session_id": "has space", "asset_id": "", "image_url": "ftp://x/y.png",
        "formats": ["glb", "fbx"], "seed": -5, "params": {"resolution": 10, "bogus": 1},
        "colour": "red"})
    assert resp.status == 422
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    problem = await resp.json()
    assert problem["status"] == 422 and problem["title"]
    locs = {tuple(e["loc"]) for e in problem["errors"]}
    assert {("session_id",), ("asset_id",), ("image_url",), ("formats", 1), ("seed",),
            ("colour",)} <= locs, locs
    # once the body is valid, generator params are checked too, all at once
    resp = await client.post("/generate-3d", json={
        "session_id": "s", "asset_id": "a", "image_base64": "aGVsbG8=",
        "params": {"resolution": 10, "bogus": 1}})
    locs = {tuple(e["loc"]) for e in (await resp.json())["errors"]}
    assert {("params", "resolution"), ("params", "bogus")} <= locs, locs


async def test_malformed_bodies(start_service, make_settings):
    client = await start_service(make_settings(max_body_bytes=50_000))
    resp = await client.post("/generate-3d", data=b"{not json",
                              headers={"content-type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/generate-3d", json=[1, 2])
    assert resp.status == 400
    resp = await client.post("/generate-3d", json={"session_id": "s", "asset_id": "a",
                                                   "image_base64": "A" * 80_000})
    assert resp.status == 413
    assert (await resp.json())["status"] == 413
    resp = await client.post("/generate-3d", json={"session_id": "s", "asset_id": "a",
                                                   "image_base64": "###not base64###"})
    assert resp.status == 422
    resp = await client.post("/generate-3d", json={"session_id": "s", "asset_id": "a"})
    assert resp.status == 422
    assert (await client.get("/healthz")).status == 200


async def test_bearer_tokens(start_service, make_settings, image_server, photo):
    client = await start_service(make_settings(api_tokens=["t0k3n-a", "t0k3n-b"]))
    body = {"session_id": "s", "asset_id": "a", "image_url": image_server.add("c.png", photo)}
    assert (await client.post("/generate-3d", json=body)).status == 401
    wrong = await client.post("/generate-3d", json=body,
                              headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    ok = await client.post("/generate-3d", json=body,
                           headers={"Authorization": "Bearer t0k3n-b"})
    assert ok.status == 202
    job = await wait_job(client, (await ok.json())["job_id"],
                         headers={"Authorization": "Bearer t0k3n-a"})
    assert job["status"] == "succeeded"
    # a webhook receiver downloads the asset with the signed URL alone, like a presigned one
    url = job["assets"][0]["url"]
    async with client.session.get(url) as r:
        assert r.status == 200 and len(await r.read()) == job["assets"][0]["bytes"]
    async with client.session.get(url.replace("signature=", "signature=0")) as r:
        assert r.status == 401
    async with client.session.get(url.split("?")[0]) as r:
        assert r.status == 401


async def test_queue_limit_answers_429_with_retry_after(start_service, make_settings, photo):
    client = await start_service(make_settings(max_queue=4), run_executors=False)
    statuses = []
    for session, i in [("q", 0), ("q", 1), ("q", 2), ("r", 0), ("r", 1), ("s", 0)]:
        resp = await client.post("/generate-3d", json={
            "session_id": session, "asset_id": f"a{i}", "image_url": "http://127.0.0.1:9/x.png"})
        statuses.append(resp.status)
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert resp.headers["Content-Type"].startswith("application/problem+json")
    # one session holds at most half the queue (q's third); the whole queue holds 4 (s)
    assert statuses == [202, 202, 429, 202, 202, 429]
