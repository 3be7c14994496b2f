"""The networks' pieces against their equations, and batching against single runs."""

from __future__ import annotations

import math

import torch

from ai_engine.generators.trellis.attention import Sequences
from ai_engine.generators.trellis.gs_decoder import SLatGaussianDecoder
from ai_engine.generators.trellis.layers import ModulatedCrossBlock, sincos_position_embedding
from ai_engine.generators.trellis.slat_flow import SLatFlowModel
from ai_engine.generators.trellis.sparse import SparseTensor, Structure
from ai_engine.generators.trellis.ss_decoder import pixel_shuffle_3d
from ai_engine.generators.trellis.ss_flow import SparseStructureFlowModel, patchify, unpatchify
from tests.generators.trellis.test_sparse import random_coords
from tests.generators.trellis.tiny import PUBLISHED_REPRESENTATION, TINY

torch.manual_seed(0)


def test_patchify_orders_channels_by_channel_then_offset_and_inverts() -> None:
    x = torch.randn(2, 3, 4, 6, 8)
    p = patchify(x, 2)
    assert p.shape == (2, 24, 2, 3, 4)
    # channel c * 8 + (i * 2 + j) * 2 + k at patch (a, b, c') is voxel (2a + i, 2b + j, 2c' + k)
    assert p[1, 2 * 8 + (1 * 2 + 0) * 2 + 1, 1, 2, 3] == x[1, 2, 3, 4, 7]
    torch.testing.assert_close(unpatchify(p, 2), x)


def test_pixel_shuffle_sends_channel_offsets_to_voxel_offsets() -> None:
    x = torch.randn(1, 16, 2, 3, 2)
    y = pixel_shuffle_3d(x, 2)
    assert y.shape == (1, 2, 4, 6, 4)
    for c, i, j, k in [(0, 0, 0, 0), (1, 1, 0, 1), (1, 0, 1, 1)]:
        assert y[0, c, 2 * 1 + i, 2 * 2 + j, 2 * 0 + k] == x[0, c * 8 + i * 4 + j * 2 + k, 1, 2, 0]


def test_position_embedding_is_sin_cos_per_axis_zero_padded() -> None:
    channels = 32  # 5 frequencies per axis, 30 values, 2 zeros
    emb = sincos_position_embedding(torch.tensor([[3, 0, 7]]), channels)[0]
    freqs = [10000 ** (-i / 5) for i in range(5)]
    for axis, p in enumerate((3, 0, 7)):
        block = emb[axis * 10:(axis + 1) * 10]
        expected = [math.sin(p * f) for f in freqs] + [math.cos(p * f) for f in freqs]
        torch.testing.assert_close(block, torch.tensor(expected))
    assert emb[30:].abs().max() == 0


def test_structure_flow_stores_its_grid_position_embedding() -> None:
    model = SparseStructureFlowModel(**TINY["ss_flow_img_dit_L_16l8_fp16"]["args"])
    side = 4
    coords = torch.tensor([[x, y, z] for x in range(side) for y in range(side)
                           for z in range(side)])
    torch.testing.assert_close(model.pos_emb, sincos_position_embedding(coords, 32))
    out = model(torch.randn(2, 8, 4, 4, 4), torch.tensor([500.0, 20.0]), torch.randn(2, 9, 32))
    assert out.shape == (2, 8, 4, 4, 4)


@torch.no_grad()
def test_modulated_block_on_uneven_sequences_equals_each_sequence_alone() -> None:
    block = ModulatedCrossBlock(16, 12, 2, qk_rms_norm=True).double()
    lengths = [5, 9]
    x = torch.randn(sum(lengths), 16, dtype=torch.float64)
    mod = torch.randn(2, 16, dtype=torch.float64)
    context = torch.randn(2, 7, 12, dtype=torch.float64)
    together = block(x, Sequences(lengths, device="cpu"), mod, context)
    first = block(x[:5], Sequences([5], device="cpu"), mod[:1], context[:1])
    second = block(x[5:], Sequences([9], device="cpu"), mod[1:], context[1:])
    torch.testing.assert_close(together, torch.cat([first, second]))


@torch.no_grad()
def test_latent_flow_on_two_structures_equals_each_structure_alone() -> None:
    model = SLatFlowModel(**TINY["slat_flow_img_dit_L_64l8p2_fp16"]["args"]).double()
    model.set_compute_dtype(torch.float64)
    coords = random_coords(batch=2, resolution=8, fill=0.2, seed=4)
    structure = Structure(coords)
    feats = torch.randn(structure.num_voxels, 8, dtype=torch.float64)
    t = torch.tensor([900.0, 100.0], dtype=torch.float64)
    cond = torch.randn(2, 6, 32, dtype=torch.float64)
    together = model(SparseTensor(feats, structure), t, cond).feats
    split = structure.sequences.lengths[0]
    alone = []
    for b, rows in ((0, slice(0, split)), (1, slice(split, None))):
        single = coords[rows].clone()
        single[:, 0] = 0
        alone.append(model(SparseTensor(feats[rows], Structure(single)), t[b:b + 1],
                           cond[b:b + 1]).feats)
    torch.testing.assert_close(together, torch.cat(alone))


def test_gaussian_activations_follow_the_representation_config() -> None:
    decoder = SLatGaussianDecoder(**TINY["slat_dec_gs_swin8_B_64l8gs32_fp16"]["args"])
    resolution, n = 16, 32
    coords = torch.tensor([[0, 3, 5, 7]])
    raw = torch.randn(1, 448)
    g = decoder.to_gaussians(coords, raw)
    assert g.positions.shape == (n, 3) and g.rotations.shape == (n, 4)
    i = 9  # one Gaussian, by hand
    cfg = PUBLISHED_REPRESENTATION
    xyz, dc = raw[0, i * 3:i * 3 + 3], raw[0, 96 + i * 3:96 + i * 3 + 3]
    scale, rot = raw[0, 192 + i * 3:192 + i * 3 + 3], raw[0, 288 + i * 4:288 + i * 4 + 4]
    opacity = raw[0, 416 + i]
    offset = torch.tanh(xyz + decoder.offset_perturbation[i]) / resolution * 0.5 * 1.5
    centre = (torch.tensor([3.0, 5.0, 7.0]) + 0.5) / resolution
    torch.testing.assert_close(g.positions[i], centre + offset - 0.5)
    torch.testing.assert_close(g.sh_dc[i], dc)
    bias = math.log(math.expm1(cfg["scaling_bias"]))
    s = torch.nn.functional.softplus(scale + bias)
    torch.testing.assert_close(g.log_scales[i], torch.log(torch.sqrt(s ** 2 + 9e-4 ** 2)))
    q = rot * 0.1 + torch.tensor([1.0, 0, 0, 0])
    torch.testing.assert_close(g.rotations[i], q / q.norm())
    torch.testing.assert_close(g.opacity_logits[i], opacity + math.log(0.1 / 0.9))


def test_offset_perturbation_is_the_scaled_hammersley_set() -> None:
    decoder = SLatGaussianDecoder(**TINY["slat_dec_gs_swin8_B_64l8gs32_fp16"]["args"])
    points = torch.tanh(decoder.offset_perturbation) * 1.5 * 0.5 + 0.5
    assert points.shape == (32, 3)
    torch.testing.assert_close(points[:, 0], torch.arange(32) / 32)
    torch.testing.assert_close(points[6, 1:], torch.tensor([0.375, 2 / 9]))  # 6 = 110₂ = 20₃
