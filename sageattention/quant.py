"""Quantization wrappers: Q and K to INT8 (K smoothed), V to FP8.

The group sizes are the attention kernels' tile shapes, so that one scale covers
exactly the rows one warp (Q) or one key block (K) multiplies:

* ``WARP_Q = 32`` query rows per warp (two m16 MMA tiles), ``CTA_K = 64`` keys per block.
* ``per_warp``: one scale per ``WARP_Q`` query rows / per ``CTA_K`` keys.
* ``per_thread``: inside such a block, rows congruent mod ``MMA_ROW_STRIDE = 8`` share a
  scale: in the m16n8 MMA fragment layout a lane holds rows g and g + 8 (g = lane / 4), so
  each lane's rows get their own scale (finer, more accurate, same kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

WARP_Q = 32  # query rows per warp of the attention kernels
CTA_K = 64  # keys per block of the attention kernels
MMA_ROW_STRIDE = 8  # rows g, g + 8, ... of a fragment belong to one lane
LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class Groups:
    """Token t is in group ``(t // block) * stride + t % stride`` (stride divides block)."""

    block: int
    stride: int


@dataclass(frozen=True)
class Granularity:
    q: Groups
    k: Groups


GRANULARITIES = {
    "per_warp": Granularity(q=Groups(WARP_Q, 1), k=Groups(CTA_K, 1)),
    "per_thread": Granularity(q=Groups(WARP_Q, MMA_ROW_STRIDE), k=Groups(CTA_K, MMA_ROW_STRIDE)),
}


def granularity(name: str) -> Granularity:
    try:
        return GRANULARITIES[name]
    except KeyError:
        raise ValueError(f"qk_quant_gran must be one of {sorted(GRANULARITIES)}, got {name!r}") from None


def quant_q(ops, q: torch.Tensor, layout: int, gran: Granularity, sm_scale: float):
    """-> (q_int8 [B, H, N, D], q_scale [B, H, N] including sm_scale * log2 e)."""
    return ops.quant_int8(q, None, layout, gran.q.block, gran.q.stride, sm_scale * LOG2E)


def quant_k(ops, k: torch.Tensor, layout: int, gran: Granularity, smooth: bool):
    """-> (k_int8 [B, H, N, D], k_scale [B, H, N], mean fp32 [B, H, D] or None).

    ``smooth``: K's mean over a sample of its tokens is subtracted first (any per-head
    vector cancels in softmax, and one near the mean leaves a smaller range, which quantizes
    finer); one op computes it and quantizes, in one read of K.
    """
    if smooth:
        return ops.quant_int8_smooth(k, layout, gran.k.block, gran.k.stride)
    return (*ops.quant_int8(k, None, layout, gran.k.block, gran.k.stride, 1.0), None)


def quant_v_fp8(ops, v: torch.Tensor, layout: int):
    """-> (v_fp8 [B, H, D, Npad] e4m3, keys permuted; v_scale [B, H, D])."""
    return ops.quant_v_fp8(v, layout)
