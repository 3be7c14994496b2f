"""Element-wise steps of the transformer blocks, fused into one kernel each on CUDA.

The trunks' matrix products and attention run at the hardware's rate; what
remains is memory traffic between them: the per-head RMS norm of queries and
keys, layer norm followed by the AdaLN modulation, and the gated residual add.
Eagerly, each is several passes over ``[tokens, channels]`` (and the RMS norm
kernel is slow on 64-wide heads). :func:`enable_compilation` has
``torch.compile`` fuse each into one kernel (dynamic shapes: one compilation
serves every voxel count). The eager functions are the definition; the compiled
ones are the same code. If compilation fails the eager versions are used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


def qk_rms_norm(q: Tensor, k: Tensor, gamma_q: Tensor, gamma_k: Tensor) -> tuple[Tensor, Tensor]:
    """``normalize(x) * gamma * sqrt(D)`` of queries and keys ``[N, H, D]``, in float32
    arithmetic, returned in the inputs' dtype."""
    scale = math.sqrt(q.shape[-1])
    qf, kf = q.float(), k.float()
    q_norm = torch.rsqrt(qf.square().sum(-1, keepdim=True).clamp_min(1e-24))
    k_norm = torch.rsqrt(kf.square().sum(-1, keepdim=True).clamp_min(1e-24))
    return ((qf * q_norm * (gamma_q * scale)).to(q.dtype),
            (kf * k_norm * (gamma_k * scale)).to(k.dtype))


def layer_norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """``layer_norm(x) * (1 + scale) + shift`` (no affine) of ``x`` ``[B, L, C]`` with
    per-sequence ``shift`` and ``scale`` ``[B, C]``; float32 arithmetic."""
    h = F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return (h * (1 + scale.float()[:, None]) + shift.float()[:, None]).to(x.dtype)


def gated_add(x: Tensor, h: Tensor, gate: Tensor) -> Tensor:
    """``x + h * gate`` for ``x``, ``h`` ``[B, L, C]`` and ``gate`` ``[B, C]``."""
    return x + h * gate[:, None]


_EAGER: dict[str, Callable[..., Any]] = {
    "qk_rms_norm": qk_rms_norm,
    "layer_norm_modulate": layer_norm_modulate,
    "gated_add": gated_add,
}
_compiled: dict[str, Callable[..., Any]] = {}


def enable_compilation() -> None:
    """Use ``torch.compile``d versions for CUDA tensors from now on (process-wide)."""
    if _compiled:
        return
    for name, fn in _EAGER.items():
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)


def compilation_enabled() -> bool:
    return bool(_compiled)


def call(name: str, *args: Any) -> Any:
    """Run ``name`` compiled when enabled and the first argument is on CUDA, else eagerly."""
    compiled = _compiled.get(name)
    if compiled is not None and args[0].is_cuda:
        try:
            return compiled(*args)
        except Exception as exc:  # any compiler failure means: run it eagerly
            log.warning("torch.compile of %s failed (%s: %s); running it eagerly",
                        name, type(exc).__name__, exc)
            _compiled.pop(name, None)
    return _EAGER[name](*args)
