"""Euler sampling of a rectified flow with classifier-free guidance on an interval.

The flow runs from noise at ``t = 1`` to data at ``t = 0`` with
``x_t = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps`` and the model
predicting the velocity ``v``. The schedule takes ``steps + 1`` evenly spaced
times from 1 to 0 and rescales each as ``t' = r t / (1 + (r - 1) t)``
(``rescale_t`` r > 1 spends more steps near the noise end). Each step is

    x_{t_prev} = x_t - (t - t_prev) * v(x_t, t)

where, for ``t`` inside the guidance interval ``[lo, hi]``,
``v = (1 + s) v_cond - s v_uncond`` (strength ``s``; the negative condition is
an all-zero image embedding), and ``v = v_cond`` outside it. The model sees the
time as ``1000 t``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class FlowSettings:
    """One flow stage's sampler settings."""

    steps: int
    cfg_strength: float
    cfg_interval: tuple[float, float] = (0.5, 1.0)
    rescale_t: float = 3.0
    sigma_min: float = 1e-5


#: ``velocity(x_t, model_t, guided)`` → ``(v_cond, v_uncond)``; ``v_uncond`` is
#: None when ``guided`` is False. ``model_t`` is the time as the model sees it.
Velocity = Callable[[Tensor, float, bool], tuple[Tensor, Tensor | None]]


def timesteps(steps: int, rescale_t: float) -> list[float]:
    """The ``steps + 1`` times from 1 to 0 after rescaling."""
    t = np.linspace(1.0, 0.0, steps + 1)
    t = rescale_t * t / (1.0 + (rescale_t - 1.0) * t)
    return [float(v) for v in t]


def is_guided(t: float, settings: FlowSettings) -> bool:
    low, high = settings.cfg_interval
    return settings.cfg_strength != 0.0 and low <= t <= high


def euler_sample(noise: Tensor, velocity: Velocity, settings: FlowSettings, *,
                 on_step: Callable[[int], None] | None = None) -> Tensor:
    """Integrate from ``noise`` at ``t = 1`` to a sample at ``t = 0``.

    ``on_step(i)`` is called after step ``i`` (0-based) completes.
    """
    if settings.steps < 1:
        raise ValueError("the sampler needs at least one step")
    times = timesteps(settings.steps, settings.rescale_t)
    x = noise
    for i, (t, t_prev) in enumerate(itertools.pairwise(times)):
        guided = is_guided(t, settings)
        v_cond, v_uncond = velocity(x, 1000.0 * t, guided)
        if guided:
            if v_uncond is None:
                raise ValueError("a guided step needs the unconditional velocity")
            v = (1.0 + settings.cfg_strength) * v_cond - settings.cfg_strength * v_uncond
        else:
            v = v_cond
        x = x - (t - t_prev) * v
        if on_step is not None:
            on_step(i)
    return x


def predicted_sample_and_noise(x_t: Tensor, t: float, v: Tensor, *,
                               sigma_min: float) -> tuple[Tensor, Tensor]:
    """``(x_0, eps)`` that a velocity ``v`` at ``(x_t, t)`` implies."""
    eps = (1.0 - t) * v + x_t
    x_0 = (1.0 - sigma_min) * x_t - (sigma_min + (1.0 - sigma_min) * t) * v
    return x_0, eps
