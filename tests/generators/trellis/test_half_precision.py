"""The 16-bit trunk paths (mixed-dtype norms, fused RMS norm) agree with float32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ai_engine.generators.trellis.loading import build_model
from ai_engine.generators.trellis.sparse import SparseTensor, Structure
from tests.generators.trellis.test_sparse import random_coords
from tests.generators.trellis.tiny import TINY


def _inputs(stem: str) -> Callable[[], tuple[Any, ...]]:
    gen = torch.Generator().manual_seed(0)
    coords = random_coords(batch=2, resolution=16, fill=0.15, seed=1)
    latent = torch.randn(len(coords), 8, generator=gen)
    grid = torch.randn(2, 8, 4, 4, 4, generator=gen)
    t, cond = torch.tensor([900.0, 300.0]), torch.randn(2, 40, 32, generator=gen)
    if stem.startswith("ss_flow"):
        return lambda: (grid, t, cond)
    if stem.startswith("ss_dec"):
        return lambda: (grid,)
    if stem.startswith("slat_flow"):
        return lambda: (SparseTensor(latent, Structure(coords)), t, cond)
    return lambda: (SparseTensor(latent, Structure(coords)),)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("stem", sorted(TINY))
@torch.inference_mode()
def test_16_bit_trunk_matches_float32(stem: str, dtype: torch.dtype, tolerance: float) -> None:
    spec = TINY[stem]
    torch.manual_seed(2)
    reference = build_model(spec["name"], spec["args"]).eval()
    half = build_model(spec["name"], spec["args"]).eval()
    half.load_state_dict(reference.state_dict())
    half.set_compute_dtype(dtype)  # type: ignore[operator]
    make = _inputs(stem)
    expected, out = reference(*make()), half(*make())
    if isinstance(out, SparseTensor):
        expected, out = expected.feats, out.feats
    assert out.dtype == torch.float32  # outputs leave the trunk in float32
    error = float((out - expected).norm() / expected.norm())
    assert error < tolerance
