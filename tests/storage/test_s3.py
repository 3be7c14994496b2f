"""S3 storage against a real SeaweedFS on loopback: uploads, presigned and public URLs, errors."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import httpx
import pytest

from ai_engine.config import Settings
from ai_engine.errors import StorageError
from ai_engine.storage import S3Storage, open_storage
from tests.conftest import free_port
from tests.servers.seaweedfs import SeaweedS3


def session_for(s3: SeaweedS3, *, secret: str | None = None) -> aioboto3.Session:
    return aioboto3.Session(aws_access_key_id=s3.access_key_id,
                            aws_secret_access_key=secret or s3.secret_access_key)


async def open_s3(s3: SeaweedS3, **options: Any) -> S3Storage:
    values: dict[str, Any] = {"bucket": s3.bucket, "endpoint_url": s3.endpoint_url,
                              "region": s3.region, "session": session_for(s3)}
    values.update(options)
    return await S3Storage.open(**values)


@pytest.fixture
async def storage(seaweedfs_s3: SeaweedS3) -> AsyncIterator[S3Storage]:
    store = await open_s3(seaweedfs_s3, presign_expires_s=600)
    await store.check()
    yield store
    await store.close()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex}"


async def test_put_and_presigned_url(storage: S3Storage, seaweedfs_s3: SeaweedS3,
                                     prefix: str) -> None:
    data = os.urandom(200_000)
    key = f"{prefix}/s:1/a.2/j-3/model+v1.glb"  # characters that need escaping in URLs
    stored = await storage.put(key, data, content_type="model/gltf-binary")
    assert (stored.key, stored.bytes, stored.content_type) == (key, len(data), "model/gltf-binary")
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert "X-Amz-Signature=" in stored.url and "X-Amz-Expires=600" in stored.url
    async with httpx.AsyncClient() as http:
        answer = await http.get(stored.url)
        assert answer.status_code == 200
        assert answer.content == data
        assert hashlib.sha256(answer.content).hexdigest() == stored.sha256
        assert answer.headers["content-type"] == "model/gltf-binary"
        # The bucket is private: the same object without the signature is refused.
        plain = await http.get(stored.url.split("?")[0])
        assert plain.status_code == 403
    assert await storage.get(key) == data


async def test_public_base_url(seaweedfs_s3: SeaweedS3, prefix: str) -> None:
    storage = await open_s3(seaweedfs_s3, bucket=seaweedfs_s3.public_bucket,
                            public_base_url=seaweedfs_s3.public_base_url + "/")
    try:
        await storage.check()
        key = f"{prefix}/s/a/j/thumb=1.png"
        stored = await storage.put(key, b"\x89PNG fake", content_type="image/png")
        assert stored.url == f"{seaweedfs_s3.public_base_url}/{prefix}/s/a/j/thumb%3D1.png"
        async with httpx.AsyncClient() as http:
            answer = await http.get(stored.url)
        assert answer.status_code == 200
        assert answer.content == b"\x89PNG fake"
    finally:
        await storage.close()


async def test_delete_prefix(storage: S3Storage, seaweedfs_s3: SeaweedS3, prefix: str) -> None:
    keys = [f"{prefix}/s/a/j1/model.glb", f"{prefix}/s/a/j1/thumb.png",
            f"{prefix}/s/a/j2/model.glb", f"{prefix}/s/ab/j/model.glb"]
    for key in keys:
        await storage.put(key, key.encode(), content_type="text/plain")
    await storage.delete_prefix(f"{prefix}/s/a")
    listing = seaweedfs_s3.client().list_objects_v2(Bucket=seaweedfs_s3.bucket, Prefix=prefix)
    assert [obj["Key"] for obj in listing.get("Contents", [])] == [f"{prefix}/s/ab/j/model.glb"]
    await storage.delete_prefix(f"{prefix}/s/ab/j/model.glb")  # one object
    await storage.delete_prefix(f"{prefix}/none")  # nothing there: no error
    listing = seaweedfs_s3.client().list_objects_v2(Bucket=seaweedfs_s3.bucket, Prefix=prefix)
    assert listing.get("Contents", []) == []


async def test_get_missing_is_not_found(storage: S3Storage, prefix: str) -> None:
    with pytest.raises(StorageError) as info:
        await storage.get(f"{prefix}/missing.glb")
    assert info.value.code == "storage.not_found"
    assert not info.value.retryable


async def test_unsafe_key_is_refused(storage: S3Storage) -> None:
    with pytest.raises(StorageError) as info:
        await storage.put("a/../b", b"x", content_type="text/plain")
    assert info.value.code == "storage.invalid_key"


async def test_missing_bucket_fails_check(seaweedfs_s3: SeaweedS3) -> None:
    storage = await open_s3(seaweedfs_s3, bucket="no-such-bucket")
    try:
        with pytest.raises(StorageError) as info:
            await storage.check()
    finally:
        await storage.close()
    assert info.value.code == "storage.bucket_not_found"
    assert not info.value.retryable
    assert "'no-such-bucket' does not exist" in info.value.message


async def test_wrong_secret_fails_check(seaweedfs_s3: SeaweedS3) -> None:
    storage = await open_s3(seaweedfs_s3, session=session_for(seaweedfs_s3, secret="wrong"))
    try:
        with pytest.raises(StorageError) as info:
            await storage.check()
    finally:
        await storage.close()
    assert info.value.code == "storage.access_denied"
    assert not info.value.retryable


async def test_unreachable_endpoint_is_retryable(seaweedfs_s3: SeaweedS3) -> None:
    storage = await open_s3(seaweedfs_s3, endpoint_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StorageError) as info:
            await storage.put("s/a/j/model.glb", b"x", content_type="model/gltf-binary")
    finally:
        await storage.close()
    assert info.value.code == "storage.failed"
    assert info.value.retryable
    assert "s3://ai-engine/s/a/j/model.glb" in info.value.message


async def test_open_storage_from_settings(seaweedfs_s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path, prefix: str) -> None:
    for name, value in seaweedfs_s3.env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(data_dir=tmp_path)
    assert settings.storage == "s3"
    storage = await open_storage(settings)
    try:
        assert isinstance(storage, S3Storage)
        stored = await storage.put(f"{prefix}/s/a/j/model.stl", b"solid x",
                                   content_type="model/stl")
        async with httpx.AsyncClient() as http:
            assert (await http.get(stored.url)).content == b"solid x"
    finally:
        await storage.close()
    with pytest.raises(StorageError, match="does not exist"):
        await open_storage(settings.model_copy(update={"s3_bucket": "missing-bucket"}))
