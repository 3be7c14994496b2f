"""The storage interface: where finished assets go and the URL they are fetched at.

Two backends follow :class:`Storage`: :class:`~ai_engine.storage.local.LocalStorage`
(a directory, served by the service at ``/assets/{key}``) and
:class:`~ai_engine.storage.s3.S3Storage` (AWS S3, Cloudflare R2, SeaweedFS and other
S3-compatible stores). Keys are ``/``-separated segments, built by :func:`asset_key`
and checked by :func:`check_key` in both backends, so that a key can never name a
path outside the storage root, whatever ids a caller sends.

Every failure is a :class:`~ai_engine.errors.StorageError`; its ``code`` is one of
``storage.failed`` (retryable), ``storage.not_found``, ``storage.invalid_key``,
``storage.bucket_not_found`` and ``storage.access_denied``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from ai_engine.errors import StorageError

# One key segment: the id charset of the API plus the few characters file names
# and configured prefixes use. Anything else (``\``, ``%``, ``~``, spaces,
# control characters) is refused, which keeps keys identical on disk, in S3 and
# in URLs, and leaves ``~`` free for the local backend's temporary files.
_SEGMENT = re.compile(r"[A-Za-z0-9._:@=+-]{1,255}")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One stored object, as reported in a job's ``assets``."""

    key: str
    bytes: int
    sha256: str  # hex digest of the stored bytes
    content_type: str
    url: str  # where a client fetches it (presigned, public or the service's own)


class Storage(Protocol):
    """Where assets are written and how clients reach them."""

    async def check(self) -> None:
        """Fail with a clear :class:`StorageError` when the storage cannot be used."""
        ...

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Store ``data`` under ``key`` (replacing any object there) and describe it."""
        ...

    async def url_for(self, key: str) -> str:
        """The URL a client fetches ``key`` at."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key`` (``storage.not_found`` when there are none)."""
        ...

    async def delete_prefix(self, prefix: str) -> None:
        """Delete ``prefix`` and every object below it (``prefix/...``)."""
        ...

    async def close(self) -> None:
        """Release connections; the storage is not used afterwards."""
        ...


def invalid_key(key: str, why: str) -> StorageError:
    return StorageError(f"invalid storage key {key!r}: {why}", code="storage.invalid_key",
                        retryable=False)


def check_key(key: str) -> str:
    """Return ``key`` unchanged when it is a safe key, else raise ``storage.invalid_key``.

    A safe key is 1..1024 characters of ``/``-separated segments, each matching
    ``[A-Za-z0-9._:@=+-]{1,255}`` and none ``.`` or ``..``: no leading, trailing
    or doubled slash, no backslash, nothing absolute.
    """
    if not key or len(key) > 1024:
        raise invalid_key(key, "must be 1..1024 characters")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise invalid_key(key, f"segment {segment!r} is empty or has characters "
                                   "outside [A-Za-z0-9._:@=+-]")
        if segment in (".", ".."):
            raise invalid_key(key, "'.' and '..' segments are not allowed")
    return key


def asset_key(prefix: str, session_id: str, asset_id: str, job_id: str, name: str) -> str:
    """The key of one job's file: ``{prefix}/{session_id}/{asset_id}/{job_id}/{name}``.

    ``prefix`` may be empty (then the key starts at ``session_id``) or hold several
    segments; slashes around it are ignored. Raises ``storage.invalid_key`` when
    any part would make an unsafe key (for example a ``..`` session id).
    """
    for part in (session_id, asset_id, job_id, name):
        if "/" in part or not part:
            raise invalid_key(part, "an id or file name must be one non-empty segment")
    parts = [prefix.strip("/")] if prefix.strip("/") else []
    return check_key("/".join([*parts, session_id, asset_id, job_id, name]))
