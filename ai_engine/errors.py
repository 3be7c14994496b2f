"""The one error tree of ai_engine.

Every failure a job can meet is an :class:`EngineError` with a stable dotted
``code`` (what callers match on, in the job's ``error`` and in webhooks) and a
``retryable`` flag (whether running the same job again may succeed)::

    EngineError
    ├── InvalidInput          bad request content found after acceptance
    ├── FetchError            fetch.*      (download of the image or a webhook URL)
    │   ├── UrlNotAllowed     fetch.url_not_allowed   (SSRF policy)
    │   ├── TooLarge          fetch.too_large
    │   ├── FetchTimeout      fetch.timeout           (retryable)
    │   ├── HttpStatus        fetch.http_status       (retryable for 5xx/429)
    │   └── Unreachable       fetch.unreachable       (retryable)
    ├── ImagingError          imaging.*    (decode, cut-out, framing)
    ├── GenerateError         generate.*   (generator failures, e.g. generate.empty_mesh)
    │   └── GpuOutOfMemory    gpu.out_of_memory
    ├── ExportError           export.*
    ├── StorageError          storage.*    (retryable)
    ├── StageTimeout          job.stage_timeout
    ├── Canceled              job.canceled
    └── SetupError            setup.*      (models missing or failed to load)

Foreign exceptions (PIL, botocore, httpx, torch) are translated with
:func:`translate` in one place, the executor; only the api layer knows HTTP
status codes.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base of every error a job can end with."""

    code: str = "internal.error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class InvalidInput(EngineError):
    code = "input.invalid"


class FetchError(EngineError):
    code = "fetch.failed"


class UrlNotAllowed(FetchError):
    code = "fetch.url_not_allowed"


class TooLarge(FetchError):
    code = "fetch.too_large"


class FetchTimeout(FetchError):
    code = "fetch.timeout"
    retryable = True


class HttpStatus(FetchError):
    code = "fetch.http_status"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, retryable=status >= 500 or status == 429)
        self.status = status


class Unreachable(FetchError):
    code = "fetch.unreachable"
    retryable = True


class ImagingError(EngineError):
    code = "imaging.failed"


class GenerateError(EngineError):
    code = "generate.failed"


class GpuOutOfMemory(GenerateError):
    code = "gpu.out_of_memory"


class ExportError(EngineError):
    code = "export.failed"


class StorageError(EngineError):
    code = "storage.failed"
    retryable = True


class StageTimeout(EngineError):
    code = "job.stage_timeout"


class Canceled(EngineError):
    code = "job.canceled"


class SetupError(EngineError):
    code = "setup.failed"


def translate(exc: BaseException) -> EngineError:
    """Turn any exception raised inside a stage into an :class:`EngineError`.

    Known foreign exceptions get a stable code; anything else becomes
    ``internal.error`` with its type name, never a raw traceback to the caller.
    """
    if isinstance(exc, EngineError):
        return exc
    name = type(exc).__name__
    module = type(exc).__module__
    if name == "OutOfMemoryError" and module.startswith("torch"):
        return GpuOutOfMemory("the GPU ran out of memory")
    if module.startswith("PIL") or name == "DecompressionBombError":
        return ImagingError(f"image could not be decoded: {exc}", code="imaging.decode_failed")
    if module.startswith(("botocore", "aiobotocore", "boto3")):
        return StorageError(f"object storage failed: {name}: {exc}")
    if isinstance(exc, MemoryError):
        return EngineError("out of host memory", code="internal.out_of_memory")
    return EngineError(f"{name}: {exc}", code="internal.error")
