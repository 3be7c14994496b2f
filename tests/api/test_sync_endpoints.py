"""The synchronous endpoints of the older pipeline service, through the same queue and
executor: TRELLIS on tiny random checkpoints in the official layout, and the fallback to
the default generator's splats where TRELLIS is not installed."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from aiohttp import FormData

from ai_engine.geometry.splats import read_ply, read_spz


def form(photo: bytes, seed: int | None = 11) -> FormData:
    data = FormData()
    data.add_field("prompt_image_file", photo, filename="cup.png", content_type="image/png")
    if seed is not None:
        data.add_field("seed", str(seed))
    return data


@pytest.fixture
def trellis_models(tmp_path):
    pytest.importorskip("torch", reason="TRELLIS needs the trellis extra")
    from tests.generators.trellis.tiny import write_tiny_trellis

    models = tmp_path / "models"
    write_tiny_trellis(models, occupancy_bias=2.0)
    return models


async def test_sync_endpoints_with_trellis(start_service, make_settings, trellis_models, photo):
    client = await start_service(make_settings(models_dir=trellis_models))
    assert (await (await client.get("/health")).json()) == {"status": "ready"}

    resp = await client.post("/generate", data=form(photo))
    assert resp.status == 200, await resp.text()
    ply = read_ply(await resp.read())
    assert len(ply) > 0 and np.isfinite(ply.positions).all()
    job = await (await client.get(f"/v1/jobs/{resp.headers['X-Job-Id']}")).json()
    assert job["generator"] == "trellis" and job["seed"] == 11  # one job, through the queue

    resp = await client.post("/generate-spz", data=form(photo))
    assert resp.status == 200
    spz = read_spz(await resp.read())
    assert abs(len(spz) - len(ply)) == 0  # same seed, same image: the same cloud

    resp = await client.post("/generate_from_base64", json={
        "prompt_type": "image", "prompt_image": base64.b64encode(photo).decode(), "seed": 5,
        "trellis_params": {"sparse_structure_sampler_params": {"steps": 2, "cfg_strength": 3},
                           "slat_sampler_params": {"steps": 2}, "num_oversamples": 1}})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["generation_time"] > 0
    assert len(read_ply(base64.b64decode(body["ply_file_base64"]))) > 0
    assert base64.b64decode(body["image_without_background_file_base64"])[:8] == \
        b"\x89PNG\r\n\x1a\n"

    resp = await client.post("/generate_from_base64", json={
        "prompt_type": "image", "prompt_image": base64.b64encode(photo).decode(),
        "trellis_params": {"slat_sampler_params": {"steps": 0}, "sampler": "ddim"}})
    assert resp.status == 422
    locs = {tuple(e["loc"]) for e in (await resp.json())["errors"]}
    assert {("trellis_params", "slat_steps"), ("trellis_params", "sampler")} <= locs


async def test_trellis_async_job_gives_splats_only(start_service, make_settings, trellis_models,
                                                   image_server, receiver, photo):
    client = await start_service(make_settings(models_dir=trellis_models))
    url = image_server.add("cup.png", photo)
    resp = await client.post("/generate-3d", json={
        "session_id": "tr", "asset_id": "a", "image_url": url, "generator": "trellis",
        "formats": ["splat_ply", "spz"], "webhook_url": receiver.url,
        "params": {"ss_steps": 2, "slat_steps": 2}})
    assert resp.status == 202, await resp.text()
    event = await receiver.wait_terminal((await resp.json())["job_id"], timeout_s=120)
    assert event["type"] == "asset.completed", event["data"]["error"]
    assert [a["format"] for a in event["data"]["assets"]] == ["splat_ply", "spz"]
    assert event["data"]["thumbnail"] is not None
    resp = await client.post("/generate-3d", json={
        "session_id": "tr", "asset_id": "b", "image_url": url, "generator": "trellis",
        "formats": ["glb"]})
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["loc"] == ["formats", 0]


async def test_sync_endpoints_fall_back_to_the_default_generator(start_service, make_settings,
                                                                 photo):
    client = await start_service(make_settings())
    resp = await client.post("/generate", data=form(photo, seed=None))
    assert resp.status == 200
    assert len(read_ply(await resp.read())) > 1000
    resp = await client.post("/generate", data=FormData({"seed": "x"}))
    assert resp.status == 422
    locs = {tuple(e["loc"]) for e in (await resp.json())["errors"]}
    assert locs == {("prompt_image_file",), ("seed",)}
    resp = await client.post("/generate_from_base64", json={
        "prompt_type": "image", "prompt_image": "%%%"})
    assert resp.status == 422
    resp = await client.post("/generate_from_base64", json={
        "prompt_type": "image", "prompt_image": base64.b64encode(b"not an image").decode()})
    assert resp.status == 422
    problem = await resp.json()
    assert problem["errors"][0]["loc"] == ["prompt_image"], problem


async def test_sync_endpoints_answer_429_when_the_queue_is_full(start_service, make_settings,
                                                                photo):
    client = await start_service(make_settings(max_queue=0))
    resp = await client.post("/generate_from_base64", json={
        "prompt_type": "image", "prompt_image": base64.b64encode(photo).decode()})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    resp = await client.post("/generate", data=form(photo))
    assert resp.status == 429
