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
    # Shared queue (QUEUE_URL=redis://...): see docs/scaling.md.
    executors: bool = True  # `serve` also runs executors; 0 = an API-only process
    queue_prefix: str = "ai_engine"  # Redis key prefix: deployments sharing one Redis differ here
    queue_lease_s: float = 30.0  # a running job's lease; a dead worker's job is claimed after it
    session_queue_share: float = 0.5  # share of MAX_QUEUE one session may hold queued

    # -- execution ----------------------------------------------------------
    generator: GeneratorName = "auto"
    models_dir: Path = Path("./models")
    devices: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cpu_workers: int = 2
    stage_timeout_s: float = 600.0
    drain_timeout_s: float = 60.0
    # Hunyuan3D-2: compile the DiT (44 vs 73 ms a forward on an H100; ~50 s more start-up
    # per variant) and adaptive KV selection in the volume decoder (off: no faster on an H100)
    hunyuan3d_compile: bool = False
    hunyuan3d_adaptive_kv: bool = False

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

    # -- imaging ------------------------------------------------------------
    max_image_frames: int = 1000  # animations give their first frame; more frames are refused
    # Background removal: "auto" = the first learned model found under MODELS_DIR
    # (RMBG-2.0/, BiRefNet/, then rembg/*.onnx), else the classical cut-out.
    cutout: Literal["auto", "classical", "rembg", "transformers"] = "auto"
    cutout_model: str | None = None  # file (rembg .onnx) or folder (transformers) under MODELS_DIR
    cutout_rembg_session: str | None = None  # rembg session for that file; default from its name
    cutout_device: str | None = None  # None = cuda when available, else cpu
    cutout_size_px: int = 1024  # transformers models' square input side
    cutout_trust_remote_code: bool = True  # RMBG-2.0 / BiRefNet folders ship their model code
    # Image edit (Qwen-Image-Edit-2509) before the cut-out.
    edit_enabled: bool = False  # default for jobs that do not set params.edit
    edit_load: Literal["auto", "always", "never"] = "auto"  # auto: weights and a GPU present
    edit_device: str | None = None  # None = cuda when available
    edit_model_dir: str = "Qwen-Image-Edit-2509"
    edit_lora: str = (
        "Qwen-Image-Lightning/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors")
    edit_steps: int | None = None  # None = 8 with the Lightning LoRA, 40 without
    edit_true_cfg_scale: float | None = None  # None = 1.0 with the Lightning LoRA, 4.0 without
    edit_size_px: int = 1024
    edit_cpu_offload: bool = False  # for GPUs too small for the whole pipeline (~58 GB bf16)
    edit_prompt: str = ("show this object in a three-quarters view, fully visible, "
                        "on a neutral solid background contrasting with it")
    edit_negative_prompt: str = ("cropped, cut off, partially visible, multiple objects, "
                                 "cluttered background, text, watermark, blurry, distorted")

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
