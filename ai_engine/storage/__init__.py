"""Asset storage: a local directory or an S3-compatible bucket, behind one interface.

``open_storage(settings)`` builds the configured backend and checks it, so a
missing bucket or an unwritable directory stops the service at start::

    storage = await open_storage(settings)
    stored = await storage.put(asset_key(prefix, session_id, asset_id, job_id, "model.glb"),
                               data, content_type="model/gltf-binary")
    ...
    await storage.close()
"""

from __future__ import annotations

from ai_engine.config import Settings
from ai_engine.storage.base import Storage, StoredObject, asset_key, check_key
from ai_engine.storage.local import LocalStorage
from ai_engine.storage.s3 import S3Storage

__all__ = ["LocalStorage", "S3Storage", "Storage", "StoredObject", "asset_key", "check_key",
           "open_storage", "service_url"]


def service_url(settings: Settings) -> str:
    """The base URL clients reach this service at: ``public_url``, else ``http://host:port``."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


async def open_storage(settings: Settings, *, signing_key: bytes | None = None) -> Storage:
    """Open and check the storage ``settings`` name (``local`` or ``s3``).

    ``signing_key`` signs local asset URLs (see :class:`LocalStorage`).
    Raises :class:`~ai_engine.errors.StorageError` when it cannot be used
    (``storage.bucket_not_found``, ``storage.access_denied``, an unwritable directory).
    """
    storage: Storage
    if settings.storage == "s3":
        storage = await S3Storage.open(
            bucket=settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region, public_base_url=settings.public_base_url,
            presign_expires_s=settings.presign_expires)
    else:
        storage = LocalStorage(settings.assets_dir, base_url=service_url(settings),
                               signing_key=signing_key, expires_s=settings.presign_expires)
    try:
        await storage.check()
    except BaseException:
        await storage.close()
        raise
    return storage
