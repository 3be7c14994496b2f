"""The one small protocol every generator follows.

A generator is built by ``load(settings, device)`` once per executor, warmed
up, then called from that executor's single thread with a framed image::

    output = generator(framed, params=params, seed=seed, on_progress=cb)

``framed`` is whatever the generator's own :meth:`frame` made of the cut-out
(RGBA uint8 ``H x W x 4``, straight alpha). ``params`` is an instance of the
generator's ``Params`` model (pydantic, ``extra="forbid"``), already validated
at request time. ``on_progress(fraction)`` reports 0..1 within the generate
stage and raises :class:`~ai_engine.errors.Canceled` when the job was canceled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from ai_engine.geometry.types import Gaussians, Mesh

ProgressFn = Callable[[float], None]
RGBA = npt.NDArray[np.uint8]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class GeneratorOutput:
    """A generator's result: a mesh, Gaussians, or both.

    ``postprocess`` is CPU-bound work still to do on the result (mesh clean-up and the
    face budget): the executor runs it on its CPU pool, in the export stage, so the
    device thread is free for the next job meanwhile.
    """

    mesh: Mesh | None = None
    gaussians: Gaussians | None = None
    info: dict[str, Any] | None = None
    postprocess: Callable[[GeneratorOutput], GeneratorOutput] | None = None

    def finished(self) -> GeneratorOutput:
        """The result with its post-processing done."""
        if self.postprocess is None:
            return self
        return self.postprocess(self)


class Generator(Protocol):
    name: ClassVar[str]
    native: ClassVar[Literal["mesh", "splat"]]
    Params: ClassVar[type[BaseModel]]

    def frame(self, cutout: RGBA) -> RGBA:
        """Frame a straight-alpha RGBA cut-out as this generator was trained to see it."""
        ...

    def __call__(self, framed: RGBA, *, params: BaseModel, seed: int,
                 on_progress: ProgressFn) -> GeneratorOutput: ...
