"""The ``sageattention`` torch ops: schemas, CPU implementations and fake implementations.

Schemas live here (Python), so the package works without the compiled extension: the CPU
implementations are the pure-PyTorch reference (``reference.py``), and the fake ones
give ``torch.compile`` shapes and dtypes without running anything. ``sageattention._C``
adds the CUDA implementations when it is importable; it is imported after the schemas
are defined (bottom of this module).

Op contract (the CUDA kernels implement exactly this):

``quant_int8(x, mean?, tensor_layout, group_block, group_stride, scale_mult) -> (x_int8, scale)``
    x fp16/bf16 in ``tensor_layout`` (0 = HND, 1 = NHD); optional fp32 mean [B, H, D] is
    subtracted first. Token t is in group ``(t // group_block) * group_stride + t % group_stride``;
    a group's scale is ``amax / 127`` (1 if amax == 0), values round to nearest even and
    clamp to +-127. -> int8 [B, H, N, D] (always HND), fp32 [B, H, N] = scale * scale_mult.
``quant_int8_smooth(x, tensor_layout, group_block, group_stride) -> (x_int8, scale, mean)``
    K smoothing and quantization in one op: mean = x's fp32 mean over the tokens of
    ``reference.sample_tokens`` [B, H, D] (x must hold a token), then ``quant_int8(x, mean,
    tensor_layout, group_block, group_stride, 1.0)``; one read of x.
``quant_v_fp8(v, tensor_layout) -> (v_fp8, v_scale)``
    -> e4m3 [B, H, D, round_up(N, 128)] (channel-major, keys permuted in groups of 32, see
    ``reference.v_permutation``, padding 0) and fp32 [B, H, D] = max(16 * amax over the
    sampled tokens, amax over all tokens) / 448 (1 where 0); one read of v.
``attn_fp16pv(q, k, v, q_scale, k_scale, tensor_layout, is_causal, return_lse) -> (out, lse)``
    s = q_int8 . k_int8 * q_scale * k_scale (base-2 logits), causal top-left aligned,
    P = 2^(s - rowmax) rounded to v's dtype, out = P.V / rowsum in v's dtype and layout;
    lse fp32 [B, Hq, Nq] (natural log) or an empty [0] tensor.
``attn_fp8pv(q, k, v, q_scale, k_scale, v_scale, tensor_layout, out_dtype, is_causal, return_lse)``
    as attn_fp16pv with v from quant_v_fp8: out = sum(e4m3(P * 448) * v_fp8) * v_scale / (448 l).
``attn_sm90(q, k, v, k_scale, v_scale?, tensor_layout, q_group_block, q_group_stride, q_scale_mult,
is_causal, return_lse)``
    the Hopper kernel, which quantizes Q itself: q is 16-bit in ``tensor_layout`` and is
    quantized as ``quant_int8(q, None, tensor_layout, q_group_block, q_group_stride,
    q_scale_mult)`` (q_group_block divides 64); v is V itself (q's dtype and layout:
    attn_fp16pv semantics) or quant_v_fp8's output (with v_scale: attn_fp8pv semantics).
    k_scale must be constant over each class of keys (64-key group, key mod 8): the kernel
    reads one scale per class, which holds for quant_int8's K groups (group_block 64,
    group_stride dividing 8). Out in q's dtype.
``attn_sm90_fp8(q, k, v, tensor_layout, k_group_stride, smooth_k, q_group_block, q_group_stride,
q_scale_mult, is_causal, return_lse) -> (out, lse, k_mean)``
    the Hopper e4m3 path from 16-bit q, k and v in ``tensor_layout``: k_mean = the mean of K
    over ``reference.sample_tokens``, rounded to K's dtype ([B, Hkv, D] fp32; [0] without
    smooth_k); K quantized as ``quant_int8(k, k_mean, tensor_layout, 64, k_group_stride, 1.0)``
    (k_group_stride 1 or 8; on large grids K - k_mean is rounded to K's dtype first); V as
    ``quant_v_fp8``; then ``attn_sm90``. Large grids quantize K and V while the attention
    kernel runs (``csrc/quant/kv_stream.cuh``).
"""

from __future__ import annotations

import torch

from . import _extension, reference

NAMESPACE = "sageattention"

SCHEMAS = {
    "quant_int8": "(Tensor x, Tensor? mean, int tensor_layout, int group_block, int group_stride, "
                  "float scale_mult) -> (Tensor, Tensor)",
    "quant_int8_smooth": "(Tensor x, int tensor_layout, int group_block, int group_stride) "
                         "-> (Tensor, Tensor, Tensor)",
    "quant_v_fp8": "(Tensor v, int tensor_layout) -> (Tensor, Tensor)",
    "attn_fp16pv": "(Tensor q, Tensor k, Tensor v, Tensor q_scale, Tensor k_scale, int tensor_layout, "
                   "bool is_causal, bool return_lse) -> (Tensor, Tensor)",
    "attn_fp8pv": "(Tensor q, Tensor k, Tensor v, Tensor q_scale, Tensor k_scale, Tensor v_scale, "
                  "int tensor_layout, ScalarType out_dtype, bool is_causal, bool return_lse) -> (Tensor, Tensor)",
    "attn_sm90": "(Tensor q, Tensor k, Tensor v, Tensor k_scale, Tensor? v_scale, int tensor_layout, "
                 "int q_group_block, int q_group_stride, float q_scale_mult, bool is_causal, bool return_lse) "
                 "-> (Tensor, Tensor)",
    "attn_sm90_fp8": "(Tensor q, Tensor k, Tensor v, int tensor_layout, int k_group_stride, bool smooth_k, "
                     "int q_group_block, int q_group_stride, float q_scale_mult, bool is_causal, bool return_lse) "
                     "-> (Tensor, Tensor, Tensor)",
}

_lib = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)
    _lib.impl(_name, getattr(reference, _name), "CPU")


# ------------------------------------------------------------------------------ fake impls
def _bhnd(x, tensor_layout: int):
    reference.check_layout(tensor_layout)
    if tensor_layout == reference.HND:
        return x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    return x.shape[0], x.shape[2], x.shape[1], x.shape[3]


def _attn_outputs(q, tensor_layout: int, dtype, return_lse: bool, q_layout: int = reference.HND):
    b, h, n, d = _bhnd(q, q_layout)
    shape = (b, h, n, d) if tensor_layout == reference.HND else (b, n, h, d)
    out = q.new_empty(shape, dtype=dtype)
    lse = q.new_empty((b, h, n) if return_lse else (0,), dtype=torch.float32)
    return out, lse


@torch.library.register_fake(f"{NAMESPACE}::quant_int8")
def _quant_int8_fake(x, mean, tensor_layout, group_block, group_stride, scale_mult):
    b, h, n, d = _bhnd(x, tensor_layout)
    return x.new_empty((b, h, n, d), dtype=torch.int8), x.new_empty((b, h, n), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::quant_int8_smooth")
def _quant_int8_smooth_fake(x, tensor_layout, group_block, group_stride):
    b, h, n, d = _bhnd(x, tensor_layout)
    return (x.new_empty((b, h, n, d), dtype=torch.int8), x.new_empty((b, h, n), dtype=torch.float32),
            x.new_empty((b, h, d), dtype=torch.float32))


@torch.library.register_fake(f"{NAMESPACE}::quant_v_fp8")
def _quant_v_fp8_fake(v, tensor_layout):
    b, h, n, d = _bhnd(v, tensor_layout)
    n_pad = (n + reference.V_PAD - 1) // reference.V_PAD * reference.V_PAD
    return (v.new_empty((b, h, d, n_pad), dtype=torch.float8_e4m3fn),
            v.new_empty((b, h, d), dtype=torch.float32))


@torch.library.register_fake(f"{NAMESPACE}::attn_fp16pv")
def _attn_fp16pv_fake(q, k, v, q_scale, k_scale, tensor_layout, is_causal, return_lse):
    return _attn_outputs(q, tensor_layout, v.dtype, return_lse)


@torch.library.register_fake(f"{NAMESPACE}::attn_fp8pv")
def _attn_fp8pv_fake(q, k, v, q_scale, k_scale, v_scale, tensor_layout, out_dtype, is_causal, return_lse):
    return _attn_outputs(q, tensor_layout, out_dtype, return_lse)


@torch.library.register_fake(f"{NAMESPACE}::attn_sm90")
def _attn_sm90_fake(q, k, v, k_scale, v_scale, tensor_layout, q_group_block, q_group_stride, q_scale_mult,
                    is_causal, return_lse):
    return _attn_outputs(q, tensor_layout, q.dtype, return_lse, q_layout=tensor_layout)


@torch.library.register_fake(f"{NAMESPACE}::attn_sm90_fp8")
def _attn_sm90_fp8_fake(q, k, v, tensor_layout, k_group_stride, smooth_k, q_group_block, q_group_stride,
                        q_scale_mult, is_causal, return_lse):
    out, lse = _attn_outputs(q, tensor_layout, q.dtype, return_lse, q_layout=tensor_layout)
    b, h, _, d = _bhnd(k, tensor_layout)
    return out, lse, k.new_empty((b, h, d) if smooth_k else (0,), dtype=torch.float32)


# ------------------------------------------------------------------------------ autograd
# Inference only: rounding to INT8 and e4m3 has no useful gradient. Without a registered
# formula autograd would only warn and hand back meaningless gradients for q and k, so a
# backward through any of the ops raises, saying what to use instead. (The established
# package's outputs never require grad; its training users hit an error there too.)
def _no_backward(ctx, *grads):
    raise RuntimeError(
        "sageattention is inference-only: its quantized attention has no backward. Call it under "
        "torch.no_grad() / torch.inference_mode(), or train with "
        "torch.nn.functional.scaled_dot_product_attention")


for _name in SCHEMAS:
    torch.library.register_autograd(f"{NAMESPACE}::{_name}", _no_backward)

ops = getattr(torch.ops, NAMESPACE)

# The schemas exist now: let the compiled extension register its CUDA kernels, and note
# which ops got one (read here, once, so that nothing is probed while torch.compile traces).
_extension.load()
for _name in SCHEMAS:
    _extension.has_cuda_kernel(_name)
