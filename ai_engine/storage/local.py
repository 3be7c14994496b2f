"""Assets in a local directory, served by the service itself at ``/assets/{key}``.

Writes are atomic: the bytes go to a temporary file in the target's own
directory (``~…part``, a name no valid key can have, so it is never served),
are flushed to disk, then renamed over the target with :func:`os.replace`. A
reader sees the old object or the new one, never part of one. All file I/O runs
in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from ai_engine.errors import StorageError
from ai_engine.storage.base import StoredObject, check_key, invalid_key


class LocalStorage:
    """A directory of assets; ``base_url`` is where the service is reached (no trailing slash).

    With a ``signing_key``, asset URLs carry an expiry and an HMAC signature
    (``?expires=…&signature=…``), so a webhook receiver can download them without the
    service's bearer token, as it would a presigned S3 URL.
    """

    def __init__(self, root: Path, *, base_url: str, signing_key: bytes | None = None,
                 expires_s: int = 7 * 24 * 3600) -> None:
        self.root = Path(os.path.realpath(root))
        self.base_url = base_url.rstrip("/")
        self._signing_key = signing_key
        self._expires_s = expires_s

    def _signature(self, key: str, expires: int) -> str:
        assert self._signing_key is not None
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def verify_signature(self, key: str, expires: str, signature: str) -> bool:
        """Whether ``signature`` signs ``key`` until ``expires`` (epoch seconds), not past."""
        if self._signing_key is None or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(key, int(expires)), signature)

    async def check(self) -> None:
        """Create the root directory and make sure it is writable."""
        def run() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(f"{self.root} is not writable")
        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageError(f"asset directory {self.root} is unusable: {exc}",
                               retryable=False) from exc

    def resolve_path(self, key: str) -> Path:
        """The file that holds ``key``; raises ``storage.invalid_key`` for unsafe keys.

        The path may not exist. ``..``, absolute paths, empty segments and keys
        reaching outside the root through a symbolic link are all refused.
        """
        path = self.root / check_key(key)
        if not Path(os.path.realpath(path)).is_relative_to(self.root):
            raise invalid_key(key, "resolves outside the storage root")
        return path

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        path = self.resolve_path(key)
        try:
            digest = await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            raise StorageError(f"writing asset {key!r} failed: {exc}") from exc
        return StoredObject(key=key, bytes=len(data), sha256=digest, content_type=content_type,
                            url=await self.url_for(key))

    async def url_for(self, key: str) -> str:
        url = f"{self.base_url}/assets/{quote(check_key(key))}"
        if self._signing_key is None:
            return url
        expires = int(time.time()) + self._expires_s
        return f"{url}?expires={expires}&signature={self._signature(key, expires)}"

    async def get(self, key: str) -> bytes:
        path = self.resolve_path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise StorageError(f"no asset {key!r}", code="storage.not_found",
                               retryable=False) from exc
        except OSError as exc:
            raise StorageError(f"reading asset {key!r} failed: {exc}") from exc

    async def delete_prefix(self, prefix: str) -> None:
        path = self.resolve_path(prefix)

        def run() -> None:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        try:
            await asyncio.to_thread(run)
        except OSError as exc:
            raise StorageError(f"deleting {prefix!r} failed: {exc}") from exc

    async def close(self) -> None:
        return None


def _write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary sibling and a rename; return its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="~", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only; assets are meant to be readable
        # by whatever serves the directory (this service or a web server).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry itself is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return digest
