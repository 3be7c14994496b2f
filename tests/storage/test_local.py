"""Local directory storage: round trips, URLs, atomic writes, refused keys."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from ai_engine.config import Settings
from ai_engine.errors import StorageError
from ai_engine.storage import LocalStorage, asset_key, open_storage

KEY = "sess-1/asset.2/job_3/model.glb"


@pytest.fixture
async def storage(tmp_path: Path) -> LocalStorage:
    store = LocalStorage(tmp_path / "assets", base_url="http://svc.test:8000/")
    await store.check()
    return store


async def test_put_get_and_url(storage: LocalStorage) -> None:
    data = os.urandom(50_000)
    stored = await storage.put(KEY, data, content_type="model/gltf-binary")
    assert stored.key == KEY
    assert stored.bytes == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content_type == "model/gltf-binary"
    assert stored.url == f"http://svc.test:8000/assets/{KEY}"
    path = storage.resolve_path(KEY)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert await storage.get(KEY) == data
    # Only the object itself: no temporary file is left next to it.
    assert os.listdir(path.parent) == ["model.glb"]


async def test_url_escapes_key_characters(storage: LocalStorage) -> None:
    assert await storage.url_for("s:1/a=b/j+k/m.glb") == \
        "http://svc.test:8000/assets/s%3A1/a%3Db/j%2Bk/m.glb"


async def test_get_missing_is_not_found(storage: LocalStorage) -> None:
    with pytest.raises(StorageError) as info:
        await storage.get("no/such/key.glb")
    assert info.value.code == "storage.not_found"
    assert not info.value.retryable


async def test_overwrite_is_atomic_for_readers(storage: LocalStorage) -> None:
    """A reader racing repeated overwrites sees one whole version or the other."""
    size = 2_000_000
    versions = {b"a" * size, b"b" * size}
    await storage.put(KEY, b"a" * size, content_type="application/octet-stream")
    path, stop, seen = storage.resolve_path(KEY), threading.Event(), []

    def read_loop() -> None:
        while not stop.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(30):
            await storage.put(KEY, b"ab"[i % 2:i % 2 + 1] * size,
                              content_type="application/octet-stream")
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 5
    torn = [len(data) for data in seen if data not in versions]
    assert not torn, f"{len(torn)} of {len(seen)} reads saw a partial file: sizes {torn[:5]}"
    assert os.listdir(path.parent) == ["model.glb"]


async def test_failed_write_leaves_no_temporary_file(storage: LocalStorage) -> None:
    # A non-empty directory where the object should go makes the final rename fail.
    path = storage.resolve_path(KEY)
    path.mkdir(parents=True)
    (path / "keep").write_bytes(b"x")
    with pytest.raises(StorageError) as info:
        await storage.put(KEY, b"new", content_type="application/octet-stream")
    assert info.value.retryable
    assert sorted(os.listdir(path.parent)) == ["model.glb"]
    assert os.listdir(path) == ["keep"]


BAD_KEYS = ["", "/etc/passwd", "../outside", "a/../../outside", "a/./b", "a//b", "a/b/",
            "/", "..", "a\\..\\b", "a/b\x00c", "a/~tmp.part", "a/b c", "é/x", "x" * 300]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_unsafe_keys_are_refused(storage: LocalStorage, tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError) as info:
        storage.resolve_path(key)
    assert info.value.code == "storage.invalid_key"
    for call in (storage.put(key, b"x", content_type="text/plain"), storage.get(key),
                 storage.url_for(key), storage.delete_prefix(key)):
        with pytest.raises(StorageError):
            await call
    assert sorted(os.listdir(tmp_path)) == ["assets"]
    assert os.listdir(tmp_path / "assets") == []


async def test_symlink_out_of_root_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (storage.root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(StorageError) as info:
        storage.resolve_path("link/secret.txt")
    assert info.value.code == "storage.invalid_key"


async def test_delete_prefix_removes_only_below_it(storage: LocalStorage) -> None:
    keys = ["s/a/j1/model.glb", "s/a/j2/model.glb", "s/ab/j/model.glb", "s/b/j/model.glb"]
    for key in keys:
        await storage.put(key, key.encode(), content_type="text/plain")
    await storage.delete_prefix("s/a")
    assert not storage.resolve_path("s/a").exists()
    assert await storage.get("s/ab/j/model.glb") == b"s/ab/j/model.glb"
    assert await storage.get("s/b/j/model.glb") == b"s/b/j/model.glb"
    await storage.delete_prefix("s/b/j/model.glb")  # a single object
    await storage.delete_prefix("s/none")  # nothing there: no error
    assert not storage.resolve_path("s/b/j/model.glb").exists()


def test_asset_key_layout() -> None:
    assert asset_key("", "s", "a", "j", "model.glb") == "s/a/j/model.glb"
    assert asset_key("/env/prod/", "s:1", "a.2", "j-3", "thumb.png") == \
        "env/prod/s:1/a.2/j-3/thumb.png"
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(StorageError, match="invalid storage key"):
            asset_key("", bad, "a", "j", "model.glb")


async def test_open_storage_local(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", host="127.0.0.1", port=8123)
    storage = await open_storage(settings)
    try:
        stored = await storage.put("s/a/j/x.stl", b"solid", content_type="model/stl")
        assert stored.url == "http://127.0.0.1:8123/assets/s/a/j/x.stl"
        assert (settings.assets_dir / "s/a/j/x.stl").read_bytes() == b"solid"
    finally:
        await storage.close()
    public = settings.model_copy(update={"public_url": "https://engine.example.com/"})
    storage = await open_storage(public)
    assert await storage.url_for("s/a/j/x.stl") == \
        "https://engine.example.com/assets/s/a/j/x.stl"
    await storage.close()
