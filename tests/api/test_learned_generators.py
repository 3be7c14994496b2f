"""The learned generators through the HTTP API, on tiny random weights written in the
official layouts (the real loaders and inference code, on the CPU)."""

from __future__ import annotations

import io

import pytest
import trimesh

from tests.conftest import wait_job

pytest.importorskip("torch", reason="the learned generators need the torch extra")


async def test_hunyuan3d_job_to_glb(start_service, make_settings, image_server, receiver,
                                    photo, tmp_path):
    from tests.generators.hunyuan_fixtures import write_tiny_hunyuan

    models = tmp_path / "models"
    write_tiny_hunyuan(models, variants=("v2-0",))
    client = await start_service(make_settings(models_dir=models, generator="hunyuan3d"))
    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    resp = await client.post("/generate-3d", json={
        "session_id": "hy", "asset_id": "cup", "image_url": image_server.add("c.png", photo),
        "webhook_url": receiver.url, "formats": ["glb", "stl"], "seed": 3,
        "params": {"steps": 2, "guidance": 5.0, "octree_resolution": 128}})
    assert resp.status == 202, await resp.text()
    event = await receiver.wait_terminal((await resp.json())["job_id"], timeout_s=120)
    job = event["data"]
    assert event["type"] == "asset.completed", job["error"]
    assert job["generator"] == "hunyuan3d" and job["seed"] == 3
    async with client.session.get(job["assets"][0]["url"]) as r:
        mesh = trimesh.load(io.BytesIO(await r.read()), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0

    # unknown and out-of-range params are refused up front, all listed
    bad = await client.post("/generate-3d", json={
        "session_id": "hy", "asset_id": "bad", "image_url": image_server.add("c.png", photo),
        "params": {"octree_resolution": 4096, "sampler": "ddim"}})
    assert bad.status == 422
    locs = {tuple(e["loc"]) for e in (await bad.json())["errors"]}
    assert {("params", "octree_resolution"), ("params", "sampler")} <= locs


async def test_hunyuan3d_is_not_offered_without_weights(start_service, make_settings,
                                                        image_server, photo):
    client = await start_service(make_settings())
    resp = await client.post("/generate-3d", json={
        "session_id": "hy", "asset_id": "x", "image_url": image_server.add("c.png", photo),
        "generator": "hunyuan3d"})
    assert resp.status == 422
    problem = await resp.json()
    assert problem["errors"][0]["loc"] == ["generator"]
    job = await client.post("/generate-3d", json={
        "session_id": "hy", "asset_id": "y", "image_url": image_server.add("c.png", photo)})
    assert (await wait_job(client, (await job.json())["job_id"]))["generator"] == "silhouette"


def green_screen_photo() -> bytes:
    """A red disc on a green backdrop (what the tiny ONNX test segmenter separates)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:384, :512]
    image = np.zeros((384, 512, 3), np.uint8)
    image[...] = (30, 200, 40)
    disc = (xx - 300) ** 2 / 150**2 + (yy - 190) ** 2 / 110**2 < 1
    image[disc] = (210, 40, 30)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


async def test_learned_cutout_and_intermediates(start_service, make_settings, image_server,
                                                tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("rembg")
    import numpy as np
    from PIL import Image

    from tests.imaging.tiny_models import write_onnx_segmenter

    models = tmp_path / "models"
    write_onnx_segmenter(models / "rembg" / "u2net.onnx")
    client = await start_service(make_settings(models_dir=models))
    resp = await client.post("/generate-3d", json={
        "session_id": "cut", "asset_id": "disc",
        "image_url": image_server.add("disc.png", green_screen_photo()),
        "params": {"intermediates": True}})
    assert resp.status == 202, await resp.text()
    job = await wait_job(client, (await resp.json())["job_id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["intermediates"]["cutout_method"] == "rembg"
    async with client.session.get(job["intermediates"]["cutout"]["url"]) as r:
        cut = np.asarray(Image.open(io.BytesIO(await r.read())))
    assert cut.shape[2] == 4
    assert cut[190, 300, 3] > 200 and cut[5, 5, 3] < 20  # disc kept, backdrop removed
    # the edit stage is not loaded here: asking for it is refused up front
    resp = await client.post("/generate-3d", json={
        "session_id": "cut", "asset_id": "edit",
        "image_url": image_server.add("disc.png", green_screen_photo()),
        "params": {"edit": True}})
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["loc"] == ["params", "edit"]
