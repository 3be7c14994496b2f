"""Assets in an S3-compatible bucket (AWS S3, Cloudflare R2, SeaweedFS, MinIO) through aioboto3.

One client is opened per process and closed by :meth:`S3Storage.close`.
Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, config files, instance roles).
URLs are ``public_base_url/key`` when the bucket is published behind a public
base URL (an R2 custom domain, a CDN), else presigned GETs.

botocore errors are translated here into :class:`~ai_engine.errors.StorageError`
with a message naming the bucket and key; transient failures stay retryable,
missing buckets and refused credentials do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from ai_engine.errors import StorageError
from ai_engine.storage.base import StoredObject, check_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef

MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600  # the SigV4 ceiling
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}


class S3Storage:
    """A bucket of assets. Build it with :meth:`open`; call :meth:`check` before use."""

    def __init__(self, client: S3Client, stack: contextlib.AsyncExitStack, *, bucket: str,
                 endpoint_url: str | None, public_base_url: str | None,
                 presign_expires_s: int) -> None:
        self._client = client
        self._stack = stack
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.presign_expires_s = presign_expires_s

    @classmethod
    async def open(cls, *, bucket: str, endpoint_url: str | None = None,
                   region: str | None = None, public_base_url: str | None = None,
                   presign_expires_s: int = MAX_PRESIGN_EXPIRES_S,
                   session: aioboto3.Session | None = None) -> S3Storage:
        """Open the client. ``session`` defaults to one on the standard credential chain.

        ``region`` is ``"auto"`` for Cloudflare R2. Raises ``ValueError`` for a
        missing bucket name or an expiry outside 1 s .. 7 days.
        """
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        if not 1 <= presign_expires_s <= MAX_PRESIGN_EXPIRES_S:
            raise ValueError(f"presign expiry must be 1..{MAX_PRESIGN_EXPIRES_S} s, "
                             f"got {presign_expires_s}")
        config = AioConfig(
            # R2 and older S3-compatible stores refuse the CRC checksums that
            # botocore >= 1.36 adds to every request by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # A custom endpoint (R2, SeaweedFS on loopback, MinIO) is addressed
            # by path; virtual hosts need DNS for every bucket name.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10, read_timeout=60,
        )
        session = session or aioboto3.Session()
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config))
        return cls(client, stack, bucket=bucket, endpoint_url=endpoint_url,
                   public_base_url=public_base_url, presign_expires_s=presign_expires_s)

    async def check(self) -> None:
        """Make sure the bucket exists and the credentials may use it."""
        with self._errors("checking bucket", None):
            await self._client.head_bucket(Bucket=self.bucket)

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        check_key(key)
        digest = (await asyncio.to_thread(hashlib.sha256, data)).hexdigest()
        with self._errors("uploading", key):
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                          ContentType=content_type,
                                          Metadata={"sha256": digest})
        return StoredObject(key=key, bytes=len(data), sha256=digest, content_type=content_type,
                            url=await self.url_for(key))

    async def url_for(self, key: str) -> str:
        check_key(key)
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key)}"
        with self._errors("presigning", key):
            return await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.presign_expires_s)

    async def get(self, key: str) -> bytes:
        check_key(key)
        with self._errors("downloading", key):
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return await body.read()

    async def delete_prefix(self, prefix: str) -> None:
        check_key(prefix)
        with self._errors("deleting", prefix):
            keys = [prefix]  # the prefix itself may be an object
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix + "/"):
                keys += [obj["Key"] for obj in page.get("Contents", []) if "Key" in obj]
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000
                batch: list[ObjectIdentifierTypeDef] = [
                    {"Key": k} for k in keys[start:start + 1000]]
                answer = await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if errors := answer.get("Errors"):
                    first = errors[0]
                    raise StorageError(f"deleting {len(errors)} object(s) under "
                                       f"s3://{self.bucket}/{prefix} failed, first "
                                       f"{first.get('Key')}: {first.get('Code')} "
                                       f"{first.get('Message')}")

    async def close(self) -> None:
        await self._stack.aclose()

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None) -> Iterator[None]:
        """Translate botocore failures inside the block into :class:`StorageError`."""
        try:
            yield
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageError(f"S3 {action}: no usable AWS credentials ({exc}); set "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or an AWS profile",
                               code="storage.access_denied", retryable=False) from exc
        except ClientError as exc:
            raise self._client_error(exc, action, key) from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {action} {self._where(key)} failed: {exc}") from exc

    def _client_error(self, exc: ClientError, action: str, key: str | None) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = f"{code or status}: {error.get('Message') or 'no message'}"
        where = self._where(key)
        if code == "NoSuchBucket" or (key is None and status == 404):
            return StorageError(f"S3 bucket {self.bucket!r} does not exist at "
                                f"{self.endpoint_url or 'AWS'} ({action})",
                                code="storage.bucket_not_found", retryable=False)
        if code in ("NoSuchKey", "404") or status == 404:
            return StorageError(f"S3 {action} {where}: no such object",
                                code="storage.not_found", retryable=False)
        if code in _DENIED or status == 403:
            return StorageError(f"S3 {action} {where} was refused ({detail}); check the "
                                "credentials and their permissions on the bucket",
                                code="storage.access_denied", retryable=False)
        return StorageError(f"S3 {action} {where} failed ({detail})")

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
