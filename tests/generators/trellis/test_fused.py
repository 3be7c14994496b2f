"""The fused element-wise steps compute what the unfused modules compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ai_engine.generators.trellis import fused
from ai_engine.generators.trellis.attention import Sequences
from ai_engine.generators.trellis.layers import LayerNorm32, MultiHeadRMSNorm


def test_qk_rms_norm_matches_the_per_head_rms_norm_modules() -> None:
    q, k = torch.randn(2, 50, 4, 16).unbind(0)
    q_norm, k_norm = MultiHeadRMSNorm(16, 4), MultiHeadRMSNorm(16, 4)
    with torch.no_grad():
        q_norm.gamma.uniform_(0.5, 1.5)
        k_norm.gamma.uniform_(0.5, 1.5)
        fq, fk = fused.qk_rms_norm(q.half(), k.half(), q_norm.gamma, k_norm.gamma)
        torch.testing.assert_close(fq.float(), q_norm(q), rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(fk.float(), k_norm(k), rtol=2e-3, atol=2e-3)
    assert fq.dtype == torch.float16
    # normalize(x) * sqrt(D): each head's vector has length sqrt(D) before the gain.
    ones = torch.ones(4, 16)
    unit, _ = fused.qk_rms_norm(q, k, ones, ones)
    torch.testing.assert_close(unit.norm(dim=-1), torch.full((50, 4), 4.0))


def test_layer_norm_modulate_and_gated_add_match_the_block_steps() -> None:
    seqs = Sequences.uniform_batch(3, 20, device="cpu")
    x, h = torch.randn(60, 32), torch.randn(60, 32)
    shift, scale, gate = torch.randn(3, 3, 32).unbind(0)
    norm = LayerNorm32(32, elementwise_affine=False, eps=1e-6)
    expected = seqs.modulate(norm(x), shift, scale)
    out = fused.layer_norm_modulate(x.view(3, 20, 32), shift, scale, 1e-6)
    torch.testing.assert_close(out.view(60, 32), expected)
    torch.testing.assert_close(F.layer_norm(x, (32,), eps=1e-6), norm(x))
    added = fused.gated_add(x.view(3, 20, 32), h.view(3, 20, 32), gate)
    torch.testing.assert_close(added.view(60, 32), x + seqs.per_sequence(h, gate, mul=True))


def test_without_compilation_the_eager_functions_run() -> None:
    assert not fused.compilation_enabled()
    a, b = fused.call("qk_rms_norm", torch.randn(5, 2, 8), torch.randn(5, 2, 8),
                      torch.ones(2, 8), torch.ones(2, 8))
    assert a.shape == (5, 2, 8) and b.shape == (5, 2, 8)
