"""Service configuration, read once from the environment (prefix ``AI_ENGINE_``).

The names and defaults of the public variables are fixed by the API contract
(docs/configuration.md lists them all). Nothing else in the package reads the
environment: a :class:`Settings` instance is built at start and passed down.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GeneratorName = Literal["auto", "silhouette", "hunyuan3d", "trellis"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AI_ENGINE_", extra="ignore")

    # -- HTTP ---------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_unauthenticated: bool = False
    max_body_bytes: int = 30_000_000
    public_url: str | None = None  # base URL callers reach this service at (asset links)

    # -- jobs ---------------------------------------------------------------
    data_dir: Path = Path("./data")
    queue_url: str = ""
    max_queue: int = 1000
    max_attempts: int = 3
    job_retention_s: float = 7 * 24 * 3600

    # -- execution ----------------------------------------------------------
    generator: GeneratorName = "auto"
    models_dir: Path = Path("./models")
    devices: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cpu_workers: int = 2
    stage_timeout_s: float = 600.0
    drain_timeout_s: float = 60.0

    # -- fetch --------------------------------------------------------------
    fetch_max_bytes: int = 20_000_000
    fetch_timeout: float = 20.0
    fetch_max_redirects: int = 5
    allow_private_urls: bool = False
    max_image_pixels: int = 64_000_000

    # -- storage ------------------------------------------------------------
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""
    public_base_url: str | None = None
    presign_expires: int = 7 * 24 * 3600

    # -- webhooks -----------------------------------------------------------
    webhook_secret: str | None = None
    webhook_timeout_s: float = 10.0
    webhook_max_age_s: float = 24 * 3600.0
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_max_s: float = 600.0

    @field_validator("api_tokens", "devices", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def assets_dir(self) -> Path:
        return self.data_dir / "assets"

    def host_is_loopback(self) -> bool:
        if self.host in ("localhost", ""):
            return self.host == "localhost"
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check_startup(self) -> None:
        """Refuse configurations that must not start (raises ``ValueError``)."""
        if not self.api_tokens and not self.allow_unauthenticated and not self.host_is_loopback():
            raise ValueError(
                f"refusing to listen on {self.host!r} without AI_ENGINE_API_TOKENS; "
                "set tokens, bind to 127.0.0.1, or set AI_ENGINE_ALLOW_UNAUTHENTICATED=1"
            )
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("AI_ENGINE_STORAGE=s3 needs AI_ENGINE_S3_BUCKET")
