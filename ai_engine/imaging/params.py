"""Per-job imaging options, carried in the job's ``params`` beside the generator's.

``params`` is one object in the API; the generator's ``Params`` model forbids
unknown keys, so the imaging keys are taken out first::

    imaging_params, generator_params = split_params(request.params or {})
    GeneratorClass.Params.model_validate(generator_params)

Validation errors are pydantic ``ValidationError``s whose locations start at the
key (``("edit",)``); the API prefixes ``"params"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ai_engine.config import Settings


class ImagingParams(BaseModel):
    """Imaging keys of a job's ``params``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    edit: bool | None = None
    """Run the image-edit stage before the cut-out; ``None`` = the service's default
    (``AI_ENGINE_EDIT_ENABLED``)."""
    intermediates: bool = False
    """Store the edited image and the cut-out (PNG) beside the asset and report them
    in the job's ``intermediates``."""


IMAGING_KEYS = frozenset(ImagingParams.model_fields)


def split_params(params: dict[str, Any]) -> tuple[ImagingParams, dict[str, Any]]:
    """Validate the imaging keys of ``params``; return them and the remaining keys."""
    imaging = {key: value for key, value in params.items() if key in IMAGING_KEYS}
    rest = {key: value for key, value in params.items() if key not in IMAGING_KEYS}
    return ImagingParams.model_validate(imaging), rest


def wants_edit(settings: Settings, params: ImagingParams) -> bool:
    """Whether a job with ``params`` runs the edit stage."""
    return settings.edit_enabled if params.edit is None else params.edit
