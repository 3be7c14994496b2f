"""Request and response models of the HTTP API (pydantic v2); the OpenAPI document
is generated from these."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

Key = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                       pattern=r"^[A-Za-z0-9._:-]+$")]
Format = Literal["glb", "stl", "obj", "ply", "splat_ply", "spz"]
EventName = Literal["started", "progress", "completed"]
GeneratorChoice = Literal["auto", "silhouette", "hunyuan3d", "trellis"]
HttpUrl = Annotated[AnyHttpUrl, Field(json_schema_extra={"format": "uri"})]


class JobRequest(BaseModel):
    """One image-to-3D job."""

    model_config = ConfigDict(extra="forbid")

    session_id: Key = Field(description="caller's grouping key")
    asset_id: Key = Field(description="caller's asset key; (session_id, asset_id) is the "
                                      "idempotency key")
    image_url: HttpUrl | None = Field(None, description="image to fetch")
    image_base64: str | None = Field(None, description="inline image (base64 or data: URI)")
    webhook_url: HttpUrl | None = Field(None, description="where events are POSTed")
    webhook_events: list[EventName] = Field(default_factory=lambda: ["completed"],  # type: ignore[arg-type]
                                            description="`completed` covers success and "
                                                        "failure")
    generator: GeneratorChoice | None = Field(None, description="default from config")
    formats: list[Format] = Field(default_factory=lambda: ["glb"],  # type: ignore[arg-type]
                                  min_length=1)
    seed: int = Field(-1, ge=-1, le=2**31 - 1, description="-1 = random; the seed used "
                                                           "is reported")
    params: dict[str, Any] = Field(default_factory=dict, description="generator overrides")

    @model_validator(mode="after")
    def _one_image(self) -> JobRequest:
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of image_url and image_base64")
        return self

    @field_validator("formats", "webhook_events")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class JobAccepted(BaseModel):
    job_id: str
    status: str
    status_url: str
    created_at: str


class Asset(BaseModel):
    format: str
    url: str
    key: str
    bytes: int
    sha256: str
    content_type: str


class JobError(BaseModel):
    code: str
    message: str


class JobView(BaseModel):
    """A job as ``GET /v1/jobs/{job_id}`` and webhooks show it."""

    job_id: str
    session_id: str
    asset_id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    stage: Literal["fetching", "preprocessing", "generating", "exporting", "uploading",
                   "notifying"] | None
    progress: int
    generator: str
    seed: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    assets: list[Asset]
    thumbnail: dict[str, str] | None
    intermediates: dict[str, Any] | None = None
    error: JobError | None
    timings: dict[str, float]
    attempts: int


class ProblemItem(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemItem] = Field(default_factory=list)


class WebhookEvent(BaseModel):
    type: Literal["asset.started", "asset.progress", "asset.completed", "asset.failed"]
    timestamp: str
    data: JobView
