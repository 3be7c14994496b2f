"""The Euler flow sampler against the flow-matching update equations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ai_engine.generators.trellis.sampler import (
    FlowSettings,
    euler_sample,
    predicted_sample_and_noise,
    timesteps,
)


def test_timesteps_are_rescaled_evenly_spaced_times() -> None:
    times = timesteps(8, 3.0)
    for i, t in enumerate(times):
        u = 1.0 - i / 8
        assert t == pytest.approx(3.0 * u / (1.0 + 2.0 * u))
    assert times[0] == 1.0 and times[-1] == 0.0
    assert timesteps(4, 1.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_each_step_applies_the_guided_euler_update() -> None:
    settings = FlowSettings(steps=6, cfg_strength=2.5, cfg_interval=(0.4, 0.9), rescale_t=2.0)
    x0 = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    calls: list[tuple[float, bool]] = []

    def velocity(x: torch.Tensor, t_model: float, guided: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        calls.append((t_model, guided))
        return torch.sin(x) + t_model / 1000, (x * 0.5 if guided else None)

    out = euler_sample(x0, velocity, settings)
    times = timesteps(6, 2.0)
    x = x0.clone()
    for i, (t, t_prev) in enumerate(itertools.pairwise(times)):
        guided = 0.4 <= t <= 0.9
        assert calls[i] == (pytest.approx(1000 * t), guided)
        v = torch.sin(x) + t
        if guided:
            v = (1 + 2.5) * v - 2.5 * (x * 0.5)
        x = x - (t - t_prev) * v
    torch.testing.assert_close(out, x)
    assert any(g for _, g in calls) and not all(g for _, g in calls)


def test_exact_velocity_of_a_point_mass_brings_noise_to_the_data_point() -> None:
    # For data at x_data and x_t = (1 - t) x_data + t eps, the velocity is
    # eps - x_data = (x_t - x_data) / t; Euler steps on a straight path are exact.
    x_data = torch.tensor([1.5, -0.25])
    noise = torch.tensor([-0.7, 2.0])

    def velocity(x: torch.Tensor, t_model: float, guided: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (x - x_data) / (t_model / 1000), None

    settings = FlowSettings(steps=5, cfg_strength=0.0, rescale_t=3.0, sigma_min=0.0)
    torch.testing.assert_close(euler_sample(noise, velocity, settings), x_data)


def test_velocity_implies_the_sample_and_noise_it_was_made_of() -> None:
    rng = np.random.default_rng(0)
    x0, eps = torch.tensor(rng.normal(size=4)), torch.tensor(rng.normal(size=4))
    sigma_min, t = 1e-5, 0.37
    x_t = (1 - t) * x0 + (sigma_min + (1 - sigma_min) * t) * eps
    v = (1 - sigma_min) * eps - x0
    pred_x0, pred_eps = predicted_sample_and_noise(x_t, t, v, sigma_min=sigma_min)
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(pred_eps, eps)


def test_progress_callback_sees_every_step_and_zero_steps_fail() -> None:
    seen: list[int] = []
    euler_sample(torch.zeros(2), lambda x, t, g: (x, x), FlowSettings(4, 1.0),
                 on_step=seen.append)
    assert seen == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        euler_sample(torch.zeros(2), lambda x, t, g: (x, x), FlowSettings(0, 1.0))
