"""Pure-PyTorch implementations of the op contract, and full-precision attention.

The functions named like the ops (``quant_int8``, ``quant_v_fp8``, ``attn_fp16pv``,
``attn_fp8pv``, ``attn_sm90``) take and return exactly what the
``torch.ops.sageattention`` ops do. They are the ops' CPU implementations (see
``_ops.py``), the fallback on a GPU without the compiled extension, and the oracle the
tests compare the CUDA kernels with. They run on any device.

Conventions (the CUDA kernels mirror them):

* ``tensor_layout`` 0 = HND ``[B, H, N, D]``, 1 = NHD ``[B, N, H, D]``.
* INT8 scale of a group: ``s = amax / 127`` (``s = 1`` where ``amax == 0``, so zeros
  quantize to 0 without NaN); values are ``x * (1 / s)`` rounded to nearest even
  (CUDA's ``__float2int_rn``) and clamped to [-127, 127].
* K smoothing subtracts each channel's mean over a sample of the tokens
  (:func:`sample_tokens`, summed in sample order); softmax is invariant to it.
* FP8 V scale per channel: ``max(16 * sample amax, amax) / 448`` (1 where that is 0), where
  ``sample amax`` is the channel's ``|v|`` maximum over :func:`sample_tokens`; saturating
  e4m3 cast (which never saturates: the scale covers the channel's maximum).
* Logits are base 2: Q's scale carries ``sm_scale * log2(e)``.
"""

from __future__ import annotations

import math

import torch

HND, NHD = 0, 1
INT8_MAX = 127.0
E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
V_PAD = 128  # quant_v_fp8 pads the keys to a multiple of this
V_PERM_GROUP = 32  # keys are permuted inside aligned groups of this many
SAMPLE_TOKENS = 64  # at most this many tokens in the sample of a head (csrc/quant/token_sample.cuh)
V_HEADROOM = 16.0  # V's sample maximum times this maps to 448, unless a value exceeds it
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------- layout
def check_layout(tensor_layout: int) -> None:
    if tensor_layout not in (HND, NHD):
        raise ValueError(f"tensor_layout must be 0 (HND) or 1 (NHD), got {tensor_layout}")


def to_hnd(x: torch.Tensor, tensor_layout: int) -> torch.Tensor:
    """A ``[B, H, N, D]`` view of ``x``."""
    check_layout(tensor_layout)
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D tensor, got {x.dim()}-D")
    return x if tensor_layout == HND else x.transpose(1, 2)


def from_hnd(x: torch.Tensor, tensor_layout: int) -> torch.Tensor:
    """``[B, H, N, D]`` -> a contiguous tensor in ``tensor_layout``."""
    return (x if tensor_layout == HND else x.transpose(1, 2)).contiguous()


def padded_len(n: int) -> int:
    return (n + V_PAD - 1) // V_PAD * V_PAD


def v_permutation(device=None) -> torch.Tensor:
    """perm[s]: the key (0..31) stored in slot s of an aligned group of 32.

    Slot ``16h + 4t + j`` holds key ``16h + 2t + (j & 1) + 8 (j >> 1)``: the order in
    which a lane of the fp8 MMA packs P, so V needs no shuffle in the kernel.
    """
    s = torch.arange(V_PERM_GROUP, device=device)
    return (s & 16) + 2 * ((s >> 2) & 3) + (s & 1) + 8 * ((s >> 1) & 1)


def _slot_to_key_index(n_pad: int, device) -> torch.Tensor:
    """index[i] = the key stored at position i of a permuted row of length n_pad."""
    base = torch.arange(0, n_pad, V_PERM_GROUP, device=device).unsqueeze(1)
    return (base + v_permutation(device)).reshape(-1)


def _key_to_slot_index(n_pad: int, device) -> torch.Tensor:
    """index[key] = the position at which key is stored (inverse permutation)."""
    return torch.argsort(_slot_to_key_index(n_pad, device))


# ---------------------------------------------------------------------------- quantization
def group_ids(n: int, group_block: int, group_stride: int, device=None) -> torch.Tensor:
    """Group of each token: ``(t // group_block) * group_stride + t % group_stride``."""
    if group_block <= 0 or group_stride <= 0 or group_block % group_stride:
        raise ValueError(f"group_stride ({group_stride}) must divide group_block ({group_block})")
    t = torch.arange(n, device=device)
    return (t // group_block) * group_stride + t % group_stride


def int8_scale(amax: torch.Tensor) -> torch.Tensor:
    return torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))


def quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest-even of ``x * (1 / scale)``, clamped to [-127, 127]."""
    inv = 1.0 / scale
    return torch.round(x * inv).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


def quant_int8(x, mean, tensor_layout: int, group_block: int, group_stride: int, scale_mult: float):
    """-> (x_int8 [B, H, N, D] contiguous, scale fp32 [B, H, N] = group scale * scale_mult)."""
    return _quant_int8_hnd(to_hnd(x, tensor_layout).float(), mean, group_block, group_stride, scale_mult)


def sample_tokens(n: int) -> list[int]:
    """The tokens of a head's sample: one from each of ``min(n, SAMPLE_TOKENS)`` equal strata
    of the sequence, at a fixed pseudo-random offset inside it (a regular stride could alias
    with rotary embeddings' periods). Integer arithmetic, as the kernels do it."""
    count = min(n, SAMPLE_TOKENS)
    tokens = []
    for i in range(count):
        lo, hi = i * n // count, (i + 1) * n // count
        tokens.append(lo + ((((i * 40503 + 20000) & 0xFFFF) * (hi - lo)) >> 16))
    return tokens


def quant_int8_smooth(x, tensor_layout: int, group_block: int, group_stride: int):
    """-> (x_int8, scale, mean fp32 [B, H, D]): quant_int8 of x minus its mean over the
    tokens of :func:`sample_tokens`."""
    xf = to_hnd(x, tensor_layout).float()
    if xf.shape[2] == 0:
        raise ValueError("x must hold at least one token (its mean over tokens is taken)")
    tokens = sample_tokens(xf.shape[2])
    total = torch.zeros_like(xf[:, :, 0])
    for t in tokens:  # in sample order, as the kernel sums
        total = total + xf[:, :, t]
    mean = total / len(tokens)
    return (*_quant_int8_hnd(xf, mean, group_block, group_stride, 1.0), mean)


def _quant_int8_hnd(xf, mean, group_block: int, group_stride: int, scale_mult: float):
    """quant_int8 of xf, fp32 [B, H, N, D]."""
    b, h, n, d = xf.shape
    if mean is not None:
        if tuple(mean.shape) != (b, h, d):
            raise ValueError(f"mean must have shape [B, H, D] = {[b, h, d]}, got {list(mean.shape)}")
        xf = xf - mean.float().unsqueeze(2)
    gid = group_ids(n, group_block, group_stride, xf.device)
    n_groups = (n + group_block - 1) // group_block * group_stride
    token_amax = xf.abs().amax(dim=-1)  # [B, H, N]
    group_amax = torch.zeros(b, h, n_groups, dtype=torch.float32, device=xf.device)
    group_amax = group_amax.scatter_reduce(2, gid.expand(b, h, n), token_amax, "amax")
    scale = int8_scale(group_amax).index_select(2, gid)  # per token
    x_int8 = quantize_int8(xf, scale.unsqueeze(-1)).contiguous()
    return x_int8, (scale * scale_mult).contiguous()


def quant_v_fp8(v, tensor_layout: int):
    """-> (v_fp8 e4m3 [B, H, D, Npad] keys permuted, v_scale fp32 [B, H, D])."""
    vf = to_hnd(v, tensor_layout).float()
    n = vf.shape[2]
    amax = vf.new_zeros(vf.shape[0], vf.shape[1], vf.shape[3])
    if n > 0:
        limit = V_HEADROOM * vf[:, :, sample_tokens(n)].abs().amax(dim=2)
        amax = torch.maximum(limit, vf.abs().amax(dim=2))
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    inv = 1.0 / scale
    vt = (vf * inv.unsqueeze(2)).transpose(2, 3)  # [B, H, D, N]
    n_pad = padded_len(n)
    vt = torch.nn.functional.pad(vt, (0, n_pad - n))
    vt = vt.index_select(3, _slot_to_key_index(n_pad, v.device))
    v_fp8 = vt.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).contiguous()
    return v_fp8, scale.contiguous()


def dequant_v_fp8(v_fp8: torch.Tensor, n_keys: int) -> torch.Tensor:
    """quant_v_fp8's storage -> fp32 [B, H, N, D] in natural key order (still / v_scale)."""
    natural = v_fp8.float().index_select(3, _key_to_slot_index(v_fp8.shape[3], v_fp8.device))
    return natural[..., :n_keys].transpose(2, 3)


# ------------------------------------------------------------------------------- attention
def _check_attn_inputs(q, k, q_scale, k_scale):
    if q.dtype != torch.int8 or k.dtype != torch.int8:
        raise ValueError(f"q and k must be int8, got {q.dtype} and {k.dtype}")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("q and k must be 4-D [B, H, N, D]")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {list(q.shape)} and k {list(k.shape)} differ in batch or head dim")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if k.shape[2] == 0:
        raise ValueError("k must hold at least one key")
    if tuple(q_scale.shape) != tuple(q.shape[:3]) or tuple(k_scale.shape) != tuple(k.shape[:3]):
        raise ValueError("q_scale/k_scale must be [B, H, N] matching q/k")


def _expand_kv(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """GQA: q head h reads kv head h // (Hq / Hkv)."""
    rep = q_heads // x.shape[1]
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def _logits(q, k, q_scale, k_scale, is_causal: bool) -> torch.Tensor:
    """Base-2 logits [B, Hq, Nq, Nk] in fp32; -inf right of the causal diagonal."""
    kq = _expand_kv(k, q.shape[1])
    ks = _expand_kv(k_scale, q.shape[1])
    # int8 dot products of <= 256 channels are exact in fp32 (|sum| < 2^24).
    s = torch.matmul(q.float(), kq.float().transpose(-1, -2))
    s = s * q_scale.unsqueeze(-1) * ks.unsqueeze(-2)
    if is_causal:
        nq, nk = s.shape[-2], s.shape[-1]
        i = torch.arange(nq, device=s.device).unsqueeze(1)
        j = torch.arange(nk, device=s.device).unsqueeze(0)
        s = s.masked_fill(j > i, float("-inf"))
    return s


def _softmax_parts(s: torch.Tensor):
    """-> (P = 2^(s - rowmax), row sum l, rowmax); rows without a visible key give 0."""
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
    p = torch.exp2(s - m)
    return p, p.sum(dim=-1, keepdim=True), m


def _lse(l: torch.Tensor, m: torch.Tensor, return_lse: bool, like: torch.Tensor) -> torch.Tensor:
    if not return_lse:
        return like.new_empty((0,), dtype=torch.float32)
    return ((m + torch.log2(l)) * LN2).squeeze(-1).contiguous()


def _safe_div(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    return x * torch.where(l > 0, 1.0 / l, torch.zeros_like(l))


def _attn_16bit(q, k, v_hnd, q_scale, k_scale, tensor_layout, out_dtype, is_causal, return_lse):
    s = _logits(q, k, q_scale, k_scale, is_causal)
    p, l, m = _softmax_parts(s)
    v = _expand_kv(v_hnd, q.shape[1])
    o = torch.matmul(p.to(v.dtype).float(), v.float())  # P rounded to v's dtype, fp32 sums
    out = _safe_div(o, l).to(out_dtype)
    return from_hnd(out, tensor_layout), _lse(l, m, return_lse, q_scale)


def _attn_fp8(q, k, v_fp8, q_scale, k_scale, v_scale, tensor_layout, out_dtype, is_causal, return_lse):
    s = _logits(q, k, q_scale, k_scale, is_causal)
    p, l, m = _softmax_parts(s)
    p8 = (p * E4M3_MAX).to(torch.float8_e4m3fn).float()  # p * 448 <= 448: no saturation needed
    v = _expand_kv(dequant_v_fp8(v_fp8, k.shape[2]), q.shape[1])
    vs = _expand_kv(v_scale.float(), q.shape[1]).unsqueeze(2)  # [B, Hq, 1, D]
    o = torch.matmul(p8, v) * vs
    out = _safe_div(o, l * E4M3_MAX).to(out_dtype)
    return from_hnd(out, tensor_layout), _lse(l, m, return_lse, q_scale)


def attn_fp16pv(q, k, v, q_scale, k_scale, tensor_layout: int, is_causal: bool, return_lse: bool):
    """INT8 QK^T, P rounded to v's dtype for P·V; out in v's dtype and ``tensor_layout``."""
    _check_attn_inputs(q, k, q_scale, k_scale)
    v_hnd = to_hnd(v, tensor_layout)
    if tuple(v_hnd.shape) != (k.shape[0], k.shape[1], k.shape[2], q.shape[3]):
        raise ValueError(f"v must match k's batch, heads, keys and head dim, got {list(v.shape)}")
    return _attn_16bit(q, k, v_hnd, q_scale, k_scale, tensor_layout, v.dtype, is_causal, return_lse)


def attn_fp8pv(q, k, v, q_scale, k_scale, v_scale, tensor_layout: int, out_dtype, is_causal: bool,
               return_lse: bool):
    """INT8 QK^T, e4m3(P * 448) · V_fp8 with fp32 sums; v is quant_v_fp8's output."""
    _check_attn_inputs(q, k, q_scale, k_scale)
    check_layout(tensor_layout)
    _check_v_transposed(v, q, k)
    return _attn_fp8(q, k, v, q_scale, k_scale, v_scale, tensor_layout, out_dtype, is_causal, return_lse)


SM90_WG_Q = 64  # query rows per consumer warpgroup of the Hopper kernel: Q's groups divide it
SM90_K_GROUP = 64  # the Hopper kernel reads one K scale per 64 keys and key residue mod 8


def _check_sm90_k_scale(k_scale):
    """The Hopper kernel applies K's scales per class of keys (64-key group, key mod 8),
    which holds for quant_int8's K groups of 64 keys with a stride dividing 8."""
    keys = torch.arange(k_scale.shape[-1], device=k_scale.device)
    first_of_class = keys // SM90_K_GROUP * SM90_K_GROUP + keys % 8
    if not torch.equal(k_scale, k_scale[..., first_of_class]):
        raise ValueError("k_scale must be constant over each class of keys (64-key group, key mod 8), "
                         "as quant_int8 with group_block 64 and a group_stride dividing 8 makes it")


def attn_sm90(q, k, v, k_scale, v_scale, tensor_layout: int, q_group_block: int, q_group_stride: int,
              q_scale_mult: float, is_causal: bool, return_lse: bool):
    """The Hopper kernel's op. q is 16-bit in ``tensor_layout`` and is quantized inside it
    exactly as ``quant_int8(q, None, tensor_layout, q_group_block, q_group_stride,
    q_scale_mult)``; v is V itself (q's dtype, ``tensor_layout``: fp16 semantics) or
    quant_v_fp8's output (with v_scale: fp8 semantics). k_scale must be constant over
    each (64-key group, key mod 8) class, as quant_int8's K groups make it. Out in q's dtype."""
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"q must be float16 or bfloat16, got {q.dtype}")
    if SM90_WG_Q % q_group_block:
        raise ValueError(f"q_group_block must divide {SM90_WG_Q}, got {q_group_block}")
    _check_sm90_k_scale(k_scale)
    q_int8, q_scale = quant_int8(q, None, tensor_layout, q_group_block, q_group_stride, q_scale_mult)
    if v.dtype == torch.float8_e4m3fn:
        if v_scale is None:
            raise ValueError("v_scale is required with an e4m3 v")
        return attn_fp8pv(q_int8, k, v, q_scale, k_scale, v_scale, tensor_layout, q.dtype, is_causal, return_lse)
    if v_scale is not None or v.dtype != q.dtype:
        raise ValueError("a 16-bit v (V itself) must be in q's dtype, without v_scale")
    return attn_fp16pv(q_int8, k, v, q_scale, k_scale, tensor_layout, is_causal, return_lse)


def attn_sm90_fp8(q, k, v, tensor_layout: int, k_group_stride: int, smooth_k: bool, q_group_block: int,
                  q_group_stride: int, q_scale_mult: float, is_causal: bool, return_lse: bool):
    """The Hopper e4m3 path from 16-bit q, k and v -> (out, lse, k_mean): K smoothed by its sample
    mean rounded to K's dtype (``[0]`` without smooth_k), quantized with K's groups of 64 keys
    (group stride 1 or 8); V by quant_v_fp8; then attn_sm90."""
    if k_group_stride not in (1, 8):
        raise ValueError(f"k_group_stride must be 1 (per_warp) or 8 (per_thread), got {k_group_stride}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError("q, k and v must have one dtype")
    mean = None
    if smooth_k:
        mean = quant_int8_smooth(k, tensor_layout, SM90_K_GROUP, k_group_stride)[2].to(k.dtype).float()
    k_int8, k_scale = quant_int8(k, mean, tensor_layout, SM90_K_GROUP, k_group_stride, 1.0)
    v_fp8, v_scale = quant_v_fp8(v, tensor_layout)
    out, lse = attn_sm90(q, k_int8, v_fp8, k_scale, v_scale, tensor_layout, q_group_block, q_group_stride,
                         q_scale_mult, is_causal, return_lse)
    return out, lse, mean if mean is not None else q.new_empty(0, dtype=torch.float32)


def _check_v_transposed(v, q, k):
    if v.dim() != 4 or v.shape[0] != q.shape[0] or v.shape[1] != k.shape[1] or v.shape[2] != q.shape[3]:
        raise ValueError(f"v must be [B, Hkv, D, Npad], got {list(v.shape)}")
    if v.shape[3] % V_PAD or v.shape[3] < k.shape[2]:
        raise ValueError(f"v's key axis ({v.shape[3]}) must be a multiple of {V_PAD} covering the keys")


# ----------------------------------------------------------------------- full precision
def attention(q, k, v, tensor_layout: str = "HND", is_causal: bool = False, sm_scale=None,
              return_lse: bool = False, dtype=torch.float64):
    """Plain softmax attention in ``dtype`` (fp64 by default), the accuracy yardstick.

    Same conventions as ``sageattn``: layout "HND"/"NHD", GQA, causal top-left aligned.
    Returns the output in ``dtype`` (and the natural-log LSE [B, Hq, Nq] when asked).
    """
    layout = {"HND": HND, "NHD": NHD}[tensor_layout]
    qh, kh, vh = (to_hnd(t, layout).to(dtype) for t in (q, k, v))
    scale = qh.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    s = torch.matmul(qh, _expand_kv(kh, qh.shape[1]).transpose(-1, -2)) * scale
    if is_causal:
        i = torch.arange(s.shape[-2], device=s.device).unsqueeze(1)
        j = torch.arange(s.shape[-1], device=s.device).unsqueeze(0)
        s = s.masked_fill(j > i, float("-inf"))
    out = torch.matmul(torch.softmax(s, dim=-1), _expand_kv(vh, qh.shape[1]))
    out = out if layout == HND else out.transpose(1, 2)
    return (out, torch.logsumexp(s, dim=-1)) if return_lse else out
