"""A job end to end on the embedded defaults: photo over HTTP -> signed webhook -> assets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json

import numpy as np
import trimesh
from PIL import Image

from ai_engine import imaging
from tests.conftest import wait_job


async def test_job_end_to_end_local_storage(start_service, make_settings, image_server,
                                            receiver, photo):
    client = await start_service(make_settings())
    image_url = image_server.add("coffee.png", photo)
    body = {"session_id": "sess-1", "asset_id": "cup.v1", "image_url": image_url,
            "webhook_url": receiver.url, "webhook_events": ["started", "progress", "completed"],
            "formats": ["glb", "stl", "obj", "ply", "splat_ply", "spz"]}
    resp = await client.post("/generate-3d", json=body)
    assert resp.status == 202, await resp.text()
    accepted = await resp.json()
    assert accepted["status"] == "queued" and accepted["status_url"].endswith(accepted["job_id"])

    event = await receiver.wait_terminal(accepted["job_id"])
    assert event["type"] == "asset.completed", event
    job = event["data"]
    assert job["status"] == "succeeded" and job["progress"] == 100 and job["error"] is None
    assert [a["format"] for a in job["assets"]] == body["formats"]
    types = [e["type"] for e in receiver.events_for(job["job_id"])]
    assert types[0] == "asset.started" and "asset.progress" in types
    assert types[-1] == "asset.completed" and types.count("asset.completed") == 1
    assert set(job["timings"]) >= {"fetching", "preprocessing", "generating", "exporting",
                                   "uploading"}

    # the receiver can fetch every asset from the URL in the webhook
    glb = next(a for a in job["assets"] if a["format"] == "glb")
    assert glb["key"].startswith(f"sess-1/cup.v1/{job['job_id']}/")
    async with client.session.get(glb["url"]) as r:
        assert r.status == 200
        data = await r.read()
    assert len(data) == glb["bytes"]
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert len(mesh.faces) > 500 and mesh.is_watertight
    # the mesh's outline has the object's aspect (width / height of the cut-out)
    alpha = imaging.prepare(photo, max_pixels=10**8).rgba[..., 3] > 127
    ys, xs = np.nonzero(alpha)
    aspect = (xs.max() - xs.min()) / (ys.max() - ys.min())
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert abs(extent[0] / extent[1] - aspect) / aspect < 0.1, (extent, aspect)
    assert np.all(np.abs(mesh.bounds) <= 0.5 + 1e-4)  # fits the unit cube

    async with client.session.get(job["thumbnail"]["url"]) as r:
        thumb = Image.open(io.BytesIO(await r.read()))
        assert thumb.format == "PNG" and min(thumb.size) >= 64

    # polling shows the same terminal job
    polled = await (await client.get(f"/v1/jobs/{job['job_id']}")).json()
    assert polled["status"] == "succeeded" and polled["assets"] == job["assets"]


async def test_idempotency_same_body_same_job_other_body_409(start_service, make_settings,
                                                             image_server, photo):
    client = await start_service(make_settings())
    url = image_server.add("coffee.png", photo)
    body = {"session_id": "s", "asset_id": "a", "image_url": url}
    first = await client.post("/v1/jobs", json=body)
    assert first.status == 202
    job_id = (await first.json())["job_id"]
    again = await client.post("/generate-3d", json={**body, "formats": ["glb"]})
    assert again.status == 200 and (await again.json())["job_id"] == job_id
    other = await client.post("/generate-3d", json={**body, "formats": ["stl"]})
    assert other.status == 409
    assert other.headers["Content-Type"].startswith("application/problem+json")
    await wait_job(client, job_id)


async def test_sse_streams_until_terminal(start_service, make_settings, image_server, photo):
    client = await start_service(make_settings())
    url = image_server.add("coffee.png", photo)
    resp = await client.post("/v1/jobs", json={"session_id": "s", "asset_id": "sse",
                                               "image_url": url})
    job_id = (await resp.json())["job_id"]
    events = []
    async with client.get(f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        async for line in stream.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "succeeded"
    stages = [e["stage"] for e in events if e["stage"]]
    assert "generating" in stages and "uploading" in stages
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)


async def test_cancel_queued_job(start_service, make_settings, image_server, receiver, photo):
    # an API-only process: nothing claims the job, so it stays queued
    client = await start_service(make_settings(), run_executors=False)
    url = image_server.add("coffee.png", photo)
    resp = await client.post("/v1/jobs", json={"session_id": "s", "asset_id": "c",
                                               "image_url": url, "webhook_url": receiver.url})
    job_id = (await resp.json())["job_id"]
    cancel = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancel.status == 202 and (await cancel.json())["status"] == "canceled"
    event = await receiver.wait_terminal(job_id)
    assert event["type"] == "asset.failed"
    assert event["data"]["error"]["code"] == "job.canceled"
    again = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status == 409
    missing = await client.post("/v1/jobs/job_nope/cancel")
    assert missing.status == 404


async def test_cancel_running_job_at_next_stage(start_service, make_settings, image_server,
                                                photo):
    client = await start_service(make_settings())
    url = image_server.add("coffee.png", photo)
    resp = await client.post("/v1/jobs", json={"session_id": "s", "asset_id": "run",
                                               "image_url": url})
    job_id = (await resp.json())["job_id"]
    async with client.get(f"/v1/jobs/{job_id}/events") as stream:
        async for line in stream.content:
            if line.startswith(b"data: ") and json.loads(line[6:])["status"] == "running":
                cancel = await client.post(f"/v1/jobs/{job_id}/cancel")
                assert cancel.status == 202
                break
    job = await wait_job(client, job_id)
    assert job["status"] == "canceled" and job["error"]["code"] == "job.canceled"
    assert job["assets"] == []
    metrics = await (await client.get("/metrics")).text()
    assert 'ai_engine_jobs_finished_total{generator="silhouette",status="canceled"} 1.0' in metrics


async def test_openapi_document_lists_routes_and_models(start_service, make_settings):
    client = await start_service(make_settings())
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert {"/generate-3d", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/cancel"} <= set(doc["paths"])
    request = doc["components"]["schemas"]["JobRequest"]
    assert {"session_id", "asset_id"} <= set(request["required"])
    assert request["additionalProperties"] is False


async def test_job_end_to_end_s3_storage(start_service, make_settings, image_server, receiver,
                                         photo, seaweedfs_s3, monkeypatch):
    """The same job with assets in S3 (a real SeaweedFS): the webhook's presigned URLs work."""
    s3 = seaweedfs_s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    settings = make_settings(storage="s3", s3_bucket=s3.bucket, s3_endpoint_url=s3.endpoint_url,
                             s3_region=s3.region, s3_prefix="e2e")
    client = await start_service(settings)
    body = {"session_id": "sess-s3", "asset_id": "cup", "webhook_url": receiver.url,
            "image_url": image_server.add("coffee.png", photo), "formats": ["glb", "spz"]}
    resp = await client.post("/generate-3d", json=body)
    job_id = (await resp.json())["job_id"]
    event = await receiver.wait_terminal(job_id)
    assert event["type"] == "asset.completed", event
    job = event["data"]
    glb = job["assets"][0]
    assert glb["key"] == f"e2e/sess-s3/cup/{job_id}/model.glb"
    assert "X-Amz-Signature" in glb["url"]  # presigned: fetchable without credentials
    async with client.session.get(glb["url"]) as r:
        assert r.status == 200
        data = await r.read()
    assert hashlib.sha256(data).hexdigest() == glb["sha256"]
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert mesh.is_watertight and len(mesh.faces) > 500
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"e2e/sess-s3/cup/{job_id}/")
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"])
    assert names == ["model.glb", "splat.spz", "thumbnail.png"]


async def test_stage_timeout_fails_the_job_and_the_executor_goes_on(start_service,
                                                                    make_settings, photo):
    client = await start_service(make_settings(stage_timeout_s=0.15))
    image = base64.b64encode(photo).decode()
    slow = await client.post("/generate-3d", json={
        "session_id": "t", "asset_id": "slow", "image_base64": image,
        "params": {"resolution": 256, "face_count": None}})
    job = await wait_job(client, (await slow.json())["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "job.stage_timeout"
    progress = job["progress"]
    await asyncio.sleep(1.0)  # the abandoned work stops at its next step, changing nothing
    again = await (await client.get(f"/v1/jobs/{job['job_id']}")).json()
    assert again["status"] == "failed" and again["progress"] == progress
