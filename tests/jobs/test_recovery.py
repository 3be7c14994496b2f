"""Recovery at start: a job left running by a dead process runs again, until its
attempts are used up; then it fails with a stable code and its webhook."""

from __future__ import annotations

from ai_engine.jobs.model import Job, JobStatus, new_job_id, request_fingerprint
from ai_engine.jobs.store import SqliteJobStore
from tests.conftest import wait_job


async def left_running(settings, *, attempts: int, image_url: str, webhook_url: str) -> str:
    """Write a job as a process that died during its run would have left it."""
    body = {"session_id": "rec", "asset_id": f"a{attempts}", "image_url": image_url,
            "webhook_url": webhook_url, "webhook_events": ["completed"], "formats": ["glb"],
            "generator": None, "seed": 1, "params": {}, "image_base64": None}
    job = Job(job_id=new_job_id(), session_id="rec", asset_id=body["asset_id"], request=body,
              request_hash=request_fingerprint(body), generator="silhouette", seed=1)
    store = await SqliteJobStore.open(settings.db_path)
    await store.submit(job, max_queue=10)
    claimed = await store.claim()
    assert claimed is not None
    claimed.attempts = attempts
    await store.save(claimed)
    await store.close()
    return job.job_id


async def test_interrupted_jobs_run_again_until_attempts_are_spent(
        start_service, make_settings, image_server, receiver, photo):
    settings = make_settings(max_attempts=3)
    url = image_server.add("c.png", photo)
    again = await left_running(settings, attempts=1, image_url=url, webhook_url=receiver.url)
    spent = await left_running(settings, attempts=3, image_url=url, webhook_url=receiver.url)
    client = await start_service(settings)
    job = await wait_job(client, again)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    event = await receiver.wait_terminal(spent)
    assert event["type"] == "asset.failed"
    assert event["data"]["error"]["code"] == "job.too_many_attempts"
    assert event["data"]["status"] == JobStatus.FAILED.value
