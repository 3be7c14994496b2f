"""The ShapeVAE's geo-decoder as an occupancy field for the geometry engine.

``field(points[N, 3]) -> logits[N]``: each query point cross-attends to the
decoded latent tokens (hy3dgen's ``CrossAttentionDecoder``); the surface is
the iso-level ``-1/512`` of these logits.

Adaptive KV selection (FlashVDM): the points of one spatial region mostly
attend to the same few latent tokens, so each region attends only to its
``top_k`` tokens per head, ranked by the dot product of the region's mean
query with every key (the mean of the queries' similarities, since the
product is linear in the query). It is installed through the decoder's own
attention-processor seam, so the rest of hy3dgen's decoder runs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def default_top_k(num_tokens: int) -> int:
    """FlashVDM's choice: 1024 of 3072 tokens, 256 of 512, else a third."""
    return {3072: 1024, 512: 256}.get(num_tokens, max(1, num_tokens // 3))


class AdaptiveKVAttention:
    """Cross-attention processor: each region's queries attend to its top-k keys.

    ``region_ids`` (``[N]``, int64) must be set before each decoder call; with
    none set, or when ``top_k`` covers every key, it is plain attention.

    On CUDA the regions go to one variable-length flash-attention call (each
    region a sequence, its selected keys gathered once); elsewhere, or where
    that kernel is missing, queries are packed region by region into tiles of
    ``tile`` and attend in batches, with each tile's keys gathered.
    ``mean_stride``: the mean query of a region is taken over every
    ``mean_stride``-th of its points (FlashVDM subsamples likewise).
    """

    def __init__(self, *, top_k: int | None = None, tile: int = 512, mean_stride: int = 1,
                 max_gather_bytes: int = 256 << 20, varlen: bool = True) -> None:
        self.top_k = top_k
        self.tile = tile
        self.mean_stride = mean_stride
        self.max_gather_bytes = max_gather_bytes
        self.varlen = varlen
        self.region_ids: torch.Tensor | None = None

    def __call__(self, attn: Any, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
        ids, self.region_ids = self.region_ids, None
        top_k = self.top_k or default_top_k(k.shape[-2])
        if ids is None or top_k >= k.shape[-2] or q.shape[0] != 1:
            return F.scaled_dot_product_attention(q, k, v)
        return self._attend(q[0], k[0], v[0], ids, top_k)[None]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                ids: torch.Tensor, top_k: int) -> torch.Tensor:
        heads, count, dim = q.shape
        keys_total = k.shape[1]
        # 1. Points sorted by region (rows of [N, H*D]: hy3dgen's q is a head-permuted
        #    view of that layout, so this is a plain row gather).
        regions, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        region_of = inverse[order]
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(count, device=q.device) - start[region_of]
        rows = q.permute(1, 0, 2).reshape(count, heads * dim).index_select(0, order)
        # 2. Per region and head, the keys most similar to the mean query.
        picked = rank % self.mean_stride == 0
        mean_q = torch.zeros(len(regions), heads * dim, device=q.device, dtype=torch.float32)
        mean_q.index_add_(0, region_of[picked], rows[picked].float())
        mean_q /= ((counts + self.mean_stride - 1) // self.mean_stride)[:, None]
        scores = torch.einsum("rhd,hld->rhl", mean_q.view(-1, heads, dim), k.float())
        keys = scores.topk(top_k, dim=-1).indices  # [R, H, K]
        flat = (keys + torch.arange(heads, device=q.device)[None, :, None] * keys_total)
        k_rows, v_rows = k.reshape(heads * keys_total, dim), v.reshape(heads * keys_total, dim)
        # 3. Attention.
        out = None
        if self.varlen and q.is_cuda:
            out = _varlen(rows.view(count, heads, dim), k_rows, v_rows, flat, counts, top_k)
        if out is None:
            out = self._tiled(rows, k_rows, v_rows, flat, counts, rank, region_of,
                              heads=heads, dim=dim)
        # 4. Back to the callers' point order, as the head-permuted view hy3dgen expects.
        result = torch.empty_like(out).index_copy_(0, order, out)
        return result.view(count, heads, dim).permute(1, 0, 2)

    def _tiled(self, rows: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor,
               flat: torch.Tensor, counts: torch.Tensor, rank: torch.Tensor,
               region_of: torch.Tensor, *, heads: int, dim: int) -> torch.Tensor:
        tile, top_k = self.tile, flat.shape[-1]
        tiles_per_region = (counts + tile - 1) // tile
        tile_start = torch.cumsum(tiles_per_region, 0) - tiles_per_region
        slot = (tile_start[region_of] + rank // tile) * tile + rank % tile
        n_tiles = int(tiles_per_region.sum())
        tile_region = torch.repeat_interleave(
            torch.arange(len(counts), device=rows.device), tiles_per_region)
        packed = rows.new_zeros(n_tiles * tile, heads * dim).index_copy_(0, slot, rows)
        packed_q = packed.view(n_tiles, tile, heads, dim).permute(0, 2, 1, 3)
        out = torch.empty_like(packed_q)
        batch = max(1, self.max_gather_bytes // (2 * heads * top_k * dim * rows.element_size()))
        for first in range(0, n_tiles, batch):
            sel = flat[tile_region[first:first + batch]].reshape(-1)
            shape = (-1, heads, top_k, dim)
            out[first:first + batch] = F.scaled_dot_product_attention(
                packed_q[first:first + batch], k_rows.index_select(0, sel).view(shape),
                v_rows.index_select(0, sel).view(shape))
        return out.permute(0, 2, 1, 3).reshape(n_tiles * tile, heads * dim).index_select(0, slot)


def _varlen(q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, flat: torch.Tensor,
            counts: torch.Tensor, top_k: int) -> torch.Tensor | None:
    """Each region one sequence of queries against its own ``top_k`` keys, through
    PyTorch's variable-length flash attention; None where that is unavailable."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    regions, heads, dim = len(counts), q.shape[1], q.shape[2]
    # keys per region as sequences [R * K, H, D]
    sel = flat.permute(0, 2, 1).reshape(-1)  # [R, K, H] order
    k_seq = k_rows.index_select(0, sel).view(regions * top_k, heads, dim)
    v_seq = v_rows.index_select(0, sel).view(regions * top_k, heads, dim)
    cu_q = torch.zeros(regions + 1, device=q.device, dtype=torch.int32)
    cu_q[1:] = torch.cumsum(counts, 0)
    cu_k = torch.arange(regions + 1, device=q.device, dtype=torch.int32) * top_k
    try:
        out = varlen_attn(q, k_seq, v_seq, cu_q, cu_k, int(counts.max()), top_k)
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    result: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return result.reshape(q.shape[0], heads * dim)


class GeoDecoderField:
    """Occupancy logits of one decoded shape at arbitrary points.

    ``latents``: the VAE transformer's output ``[1, L, width]`` (after the
    unscale and ``vae(latents)``). With ``regions_per_axis`` set, adaptive KV
    selection runs over a ``regions_per_axis^3`` lattice of ``[-bounds, bounds]^3``.
    """

    def __init__(self, vae: Any, latents: torch.Tensor, *, bounds: float,
                 regions_per_axis: int | None = None, top_k: int | None = None,
                 tile: int = 512, mean_stride: int = 1, varlen: bool = True) -> None:
        if latents.shape[0] != 1:
            raise ValueError("a field decodes one shape: latents must be [1, L, C]")
        self.decoder: Any = vae.geo_decoder  # hy3dgen's CrossAttentionDecoder (untyped)
        self.latents = latents
        self.bounds = bounds
        self.regions_per_axis = regions_per_axis
        self.processor = AdaptiveKVAttention(
            top_k=top_k, tile=tile, mean_stride=mean_stride, varlen=varlen) \
            if regions_per_axis else None
        self.evaluated_points = 0

    @property
    def device(self) -> torch.device:
        return self.latents.device

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Logits (float32, ``[N]``) at ``points`` (``[N, 3]``, any float dtype/device)."""
        queries = points.to(self.device, self.latents.dtype)
        self.evaluated_points += int(points.shape[0])
        attention = self.decoder.cross_attn_decoder.attn.attention
        previous = attention.attn_processor
        if self.processor is not None:
            self.processor.region_ids = self._regions(queries)
            attention.attn_processor = self.processor
        try:
            logits = self.decoder(queries=queries[None], latents=self.latents)
        finally:
            attention.attn_processor = previous
        return logits[0, :, 0].float()

    def _regions(self, points: torch.Tensor) -> torch.Tensor:
        assert self.regions_per_axis is not None
        n = self.regions_per_axis
        cell = ((points.float() + self.bounds) * (n / (2.0 * self.bounds))).floor()
        cell = cell.clamp_(0, n - 1).long()
        return (cell[:, 0] * n + cell[:, 1]) * n + cell[:, 2]
