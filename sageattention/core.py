"""Public API: validation, layout, head-dim padding, kernel dispatch.

Every entry point runs the same pipeline (:func:`_attention`):

1. validate (dtype fp16/bf16, one device, 4-D, layout, heads, head dim) -- inputs are
   never modified in place;
2. zero-pad head dims other than 64/128 (up to 128) to the next kernel size, with the
   softmax scale of the *original* head dim;
3. quantize Q and K to INT8 (K minus its per-head mean over tokens: ``smooth_k``; the mean
   of 64 sampled tokens, which serves as well since softmax is invariant to any vector
   subtracted from every key, and spares a read of K),
   V to FP8 for the fp8 kernels (the Hopper kernel quantizes Q itself, by the same rule,
   as it loads each Q tile; its 16-bit P·V reads V as given);
4. run one attention op; slice the head dim back; with ``return_lse`` add the smoothing
   term ``sm_scale * q . mean`` back so the LSE is that of unsmoothed attention.

Where the ops run: CUDA tensors with the compiled extension -> the CUDA kernels; CPU
tensors -> the ops' CPU implementations (pure PyTorch, the reference maths), with a
one-time warning; CUDA tensors without the extension -> the same reference functions on
the GPU, with a one-time warning naming the import error.

Accumulation: every kernel accumulates P·V in fp32 (the fp8 kernels sum each key block
from zero and fold it into an fp32 accumulator, i.e. two-level "fp32+fp32"). The
established ``pv_accum_dtype`` values are accepted for compatibility and all mean that;
``smooth_v`` (only useful with fp16 accumulation) is accepted and has no effect.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import _extension, _ops, quant, reference

LAYOUTS = {"HND": reference.HND, "NHD": reference.NHD}
KERNEL_HEAD_DIMS = (64, 128)
MAX_HEAD_DIM = 256
FP16_PV_ACCUM = ("fp32", "fp16+fp32", "fp16")
FP8_PV_ACCUM = ("fp32+fp16", "fp32+fp32", "fp32")


class UnsupportedHeadDim(ValueError, NotImplementedError):
    """A head dim the kernels do not run (129-256). A ValueError, as the established package
    raises, so callers that fall back to SDPA on one keep working; and NotImplementedError,
    since such dims are valid attention, only not implemented here."""


# ---------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class Kernel:
    """One attention op and what it needs: ``pv`` "fp16" (16-bit V) or "fp8" (e4m3 V)."""

    name: str
    op: str
    pv: str
    min_capability: tuple


FP16 = Kernel("fp16", "attn_fp16pv", "fp16", (8, 0))  # mma.sync, sm80+
FP8 = Kernel("fp8", "attn_fp8pv", "fp8", (8, 9))  # mma.sync e4m3, sm89+
SM90_FP16 = Kernel("sm90_fp16", "attn_sm90", "fp16", (9, 0))  # wgmma, sm90a only
SM90_FP8 = Kernel("sm90_fp8", "attn_sm90", "fp8", (9, 0))
KERNELS = {k.name: k for k in (FP16, FP8, SM90_FP16, SM90_FP8)}
# sageattn's kernel on sm90 when the build has the Hopper kernel: its 16-bit P·V variant
# meets the accuracy bars (relative L1 ~0.010), the fp8 one does not (~0.037 on random
# normal inputs, the e4m3 floor; the established package uses fp8 there). fp8 P·V is the
# faster of the two from 4k tokens on (H200, end to end: 1.01-1.12x at 4k, 1.12-1.21x at
# 16k; slower at 1k; README, "Measured performance"); the explicit fp8 entry points select it.
SM90_AUTO = SM90_FP16

_capabilities: dict = {}


@torch.compiler.assume_constant_result
def _capability(index: int) -> tuple:
    """Compute capability of a CUDA device, read once per device index."""
    if index not in _capabilities:
        _capabilities[index] = tuple(torch.cuda.get_device_capability(index))
    return _capabilities[index]


def _device_capability(device: torch.device) -> tuple:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


def _has_sm90_kernel(device: torch.device) -> bool:
    return _device_capability(device) == (9, 0) and _extension.has_cuda_kernel("attn_sm90")


def _auto_kernel(device: torch.device):
    """``sageattn``'s choice: (kernel, qk_quant_gran) for this GPU."""
    cap = _device_capability(device)
    if cap in ((8, 0), (8, 6), (8, 7)):
        return FP16, "per_thread"
    if cap == (8, 9):
        return FP8, "per_thread"
    if cap == (9, 0):
        return (SM90_AUTO if _has_sm90_kernel(device) else FP8), "per_thread"
    if cap[0] == 12:
        return FP8, "per_warp"
    raise ValueError(f"sageattn supports compute capabilities 8.0, 8.6, 8.7, 8.9, 9.0 and 12.x; "
                     f"this GPU ({device}) is {cap[0]}.{cap[1]}")


def _explicit_kernel(device: torch.device, pv: str) -> Kernel:
    """The kernel of an explicit entry point (fp16 or fp8 P·V) on this GPU."""
    if _has_sm90_kernel(device):
        return SM90_FP16 if pv == "fp16" else SM90_FP8
    kernel = FP16 if pv == "fp16" else FP8
    cap = _device_capability(device)
    if cap < kernel.min_capability:
        need = ".".join(map(str, kernel.min_capability))
        raise ValueError(f"the {pv} P·V kernel needs compute capability {need} or newer; "
                         f"this GPU ({device}) is {cap[0]}.{cap[1]}")
    return kernel


# ---------------------------------------------------------------------------- backends
_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned and not torch.compiler.is_compiling():
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _backend(device: torch.device):
    """Where the ops run: ``torch.ops.sageattention`` or the reference functions."""
    if device.type == "cuda" and _extension.extension_loaded():
        return _ops.ops
    if device.type == "cpu":
        _warn_once("cpu", "sageattention: CPU tensors run the pure-PyTorch reference path "
                          "(slow; for tests and as a fallback)")
        return _ops.ops
    _warn_once("noext", f"sageattention: CUDA kernels unavailable ({_extension.extension_error()}); "
                        f"running the pure-PyTorch reference path on {device.type}")
    return reference


# --------------------------------------------------------------------------- validation
def _layout(tensor_layout: str) -> int:
    if tensor_layout not in LAYOUTS:
        raise ValueError(f"tensor_layout must be 'HND' or 'NHD', got {tensor_layout!r}")
    return LAYOUTS[tensor_layout]


def _bhnd(x: torch.Tensor, layout: int) -> tuple:
    b, a, c, d = x.shape
    return (b, a, c, d) if layout == reference.HND else (b, c, a, d)


def _validate(q, k, v, layout: int) -> None:
    _validate_tensors(q, k, v, layout)
    _validate_shapes(q, k, v, layout)


def _validate_tensors(q, k, v, layout: int) -> None:
    """Types, dtypes, ranks and devices."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"{name} must be float16 or bfloat16, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D ({'HND [B, H, N, D]' if layout == 0 else 'NHD [B, N, H, D]'}), "
                             f"got shape {list(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")


def _validate_shapes(q, k, v, layout: int) -> None:
    """Batch, heads (GQA), tokens and head dim, read through the layout."""
    (bq, hq, nq, dq), (bk, hk, nk, dk), (bv, hv, nv, dv) = (_bhnd(t, layout) for t in (q, k, v))
    if (bk, hk, nk, dk) != (bv, hv, nv, dv):
        raise ValueError(f"k and v must have the same shape, got {list(k.shape)} and {list(v.shape)}")
    if bq != bk:
        raise ValueError(f"q and k must have the same batch size, got {bq} and {bk}")
    if dq != dk:
        raise ValueError(f"q and k must have the same head dim, got {dq} and {dk}")
    if hk == 0 or hq % hk:
        raise ValueError(f"the number of q heads ({hq}) must be a multiple of the number of kv heads ({hk})")
    if nk == 0:
        raise ValueError("k and v must hold at least one token")
    if not 0 < dq <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in 1..{MAX_HEAD_DIM}, got {dq}")
    if dq > max(KERNEL_HEAD_DIMS):
        raise UnsupportedHeadDim(f"Unsupported head_dim {dq}: the kernels support head dims up to "
                                 f"{max(KERNEL_HEAD_DIMS)} (smaller ones are zero-padded to 64 or 128)")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _kernel_head_dim(d: int) -> int:
    return next(n for n in KERNEL_HEAD_DIMS if d <= n)


def _prepare(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Zero-pad the head dim to ``head_dim``; a contiguous head dim (copies, never in place)."""
    if x.shape[-1] != head_dim:
        return torch.nn.functional.pad(x, (0, head_dim - x.shape[-1]))
    return x if x.stride(-1) == 1 else x.contiguous()


# ----------------------------------------------------------------------------- pipeline
def _smoothing_lse_term(q: torch.Tensor, km: torch.Tensor, layout: int, sm_scale: float) -> torch.Tensor:
    """``sm_scale * q . mean(K)`` per query row [B, Hq, Nq]: what K smoothing took off the LSE."""
    qh = reference.to_hnd(q, layout).float()
    km = km.repeat_interleave(qh.shape[1] // km.shape[1], dim=1)
    return torch.einsum("bhnd,bhd->bhn", qh, km) * sm_scale


def _attention(q, k, v, tensor_layout: str, is_causal: bool, sm_scale, return_lse: bool,
               kernel, qk_quant_gran: str, smooth_k: bool):
    """The pipeline; ``kernel`` is a :class:`Kernel` or its name in :data:`KERNELS`."""
    layout = _layout(tensor_layout)
    _validate(q, k, v, layout)
    gran = quant.granularity(qk_quant_gran)
    head_dim = q.shape[-1]
    sm_scale = head_dim ** -0.5 if sm_scale is None else float(sm_scale)
    if not 0 < sm_scale < float("inf"):  # the kernels order scores by their integer value
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale}")
    kernel = KERNELS[kernel] if isinstance(kernel, str) else kernel
    ops = _backend(q.device)

    d = _kernel_head_dim(head_dim)
    qp, kp, vp = (_prepare(t, d) for t in (q, k, v))
    if kernel is SM90_FP8 and d == 64:  # one op: on large grids K and V are quantized beside the kernel
        out, lse, km = ops.attn_sm90_fp8(qp, kp, vp, layout, gran.k.stride, smooth_k, gran.q.block, gran.q.stride,
                                         sm_scale * quant.LOG2E, is_causal, return_lse)
        km = km if smooth_k else None
    else:
        k_int8, k_scale, km = quant.quant_k(ops, kp, layout, gran, smooth_k)
        out, lse = _run_kernel(ops, kernel, qp, k_int8, k_scale, vp, layout, gran, sm_scale, is_causal, return_lse)
    if d != head_dim:
        out = out[..., :head_dim]
    if not return_lse:
        return out
    if km is not None:
        lse = lse + _smoothing_lse_term(qp, km, layout, sm_scale)
    return out, lse


def _run_kernel(ops, kernel: Kernel, q, k_int8, k_scale, v, layout: int, gran, sm_scale: float,
                is_causal: bool, return_lse: bool):
    """Q and V as the caller laid them out (head dim padded), K already quantized."""
    return _kernel_call(ops, kernel, q, k_int8, k_scale, v, layout, gran, sm_scale, is_causal, return_lse)()


def _kernel_call(ops, kernel: Kernel, q, k_int8, k_scale, v, layout: int, gran, sm_scale: float,
                 is_causal: bool, return_lse: bool):
    """Quantizes what ``kernel`` needs of Q and V now; returns the attention op's call
    (which the benchmark times alone)."""
    v_fp8, v_scale = quant.quant_v_fp8(ops, v, layout) if kernel.pv == "fp8" else (v, None)
    if kernel.op == "attn_sm90":  # quantizes Q itself, as it loads each Q tile
        return lambda: ops.attn_sm90(q, k_int8, v_fp8, k_scale, v_scale, layout, gran.q.block, gran.q.stride,
                                     sm_scale * quant.LOG2E, is_causal, return_lse)
    q_int8, q_scale = quant.quant_q(ops, q, layout, gran, sm_scale)
    if kernel.op == "attn_fp8pv":
        return lambda: ops.attn_fp8pv(q_int8, k_int8, v_fp8, q_scale, k_scale, v_scale, layout, q.dtype,
                                      is_causal, return_lse)
    return lambda: ops.attn_fp16pv(q_int8, k_int8, v, q_scale, k_scale, layout, is_causal, return_lse)


def _on_gpu(q: torch.Tensor) -> bool:
    return q.device.type == "cuda" and _extension.extension_loaded()


# ----------------------------------------------------------------------------- public API
def sageattn(q, k, v, tensor_layout: str = "HND", is_causal: bool = False, sm_scale=None,
             return_lse: bool = False, **kwargs):
    """Quantized attention, dispatched by the GPU's compute capability.

    Args:
        q: ``[B, Hq, Nq, D]`` (HND) or ``[B, Nq, Hq, D]`` (NHD), float16 or bfloat16.
        k, v: ``[B, Hkv, Nk, D]`` or ``[B, Nk, Hkv, D]``; ``Hq % Hkv == 0`` (GQA/MQA).
        tensor_layout: "HND" or "NHD" (for q, k, v and the output).
        is_causal: causal mask, top-left aligned like SDPA's (key j visible to query i iff j <= i).
        sm_scale: softmax scale, default ``1 / sqrt(D)``.
        return_lse: also return the natural-log logsumexp of ``QK^T * sm_scale``, ``[B, Hq, Nq]`` fp32.

    Head dims 64 and 128 run natively, smaller ones are zero-padded (up to 128); larger
    ones raise ``UnsupportedHeadDim`` (a ``ValueError`` and ``NotImplementedError``). Dispatch: sm80/86/87 -> INT8 QK + fp16 P·V;
    sm89 -> INT8 QK + fp8 P·V; sm90 -> the Hopper (wgmma) kernel with INT8 QK + fp16/bf16
    P·V when built for sm_90a (the explicit fp8 entry points select its fp8 P·V variant),
    else the sm89 one; sm12x -> fp8 P·V with per-warp scales; other GPUs:
    ``ValueError``. CPU tensors run the pure-PyTorch reference (with a warning).
    Extra keyword arguments are accepted and ignored, as in the established package.
    """
    return _attention(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, *_auto(q), True)


def _auto(q) -> tuple:
    """``sageattn``'s (kernel, qk_quant_gran) for q's device (the reference path's on CPU)."""
    if isinstance(q, torch.Tensor) and _on_gpu(q):
        return _auto_kernel(q.device)
    return FP16, "per_thread"


def sageattn_qk_int8_pv_fp16_cuda(q, k, v, tensor_layout: str = "HND", is_causal: bool = False,
                                  qk_quant_gran: str = "per_thread", sm_scale=None,
                                  pv_accum_dtype: str = "fp32", smooth_k: bool = True,
                                  smooth_v: bool = False, return_lse: bool = False, **kwargs):
    """INT8 Q·K^T, fp16/bf16 P·V with fp32 accumulation (sm80 and newer).

    ``qk_quant_gran``: "per_thread" (default, finer) or "per_warp". ``pv_accum_dtype``
    ("fp32", "fp16+fp32", "fp16") is accepted for compatibility: this kernel always
    accumulates in fp32, so ``smooth_v`` is unnecessary and ignored. On sm90 (built for
    sm_90a) this runs the Hopper wgmma kernel's fp16 P·V path, same semantics.
    """
    _check_choice("pv_accum_dtype", pv_accum_dtype, FP16_PV_ACCUM)
    kernel = _explicit_kernel(q.device, "fp16") if isinstance(q, torch.Tensor) and _on_gpu(q) else FP16
    return _attention(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, kernel, qk_quant_gran, smooth_k)


def sageattn_qk_int8_pv_fp8_cuda(q, k, v, tensor_layout: str = "HND", is_causal: bool = False,
                                 qk_quant_gran: str = "per_thread", sm_scale=None,
                                 pv_accum_dtype: str = "fp32+fp16", smooth_k: bool = True,
                                 smooth_v: bool = False, return_lse: bool = False, **kwargs):
    """INT8 Q·K^T, e4m3 P and V (per-channel V scales) with fp32 accumulation (sm89 and newer).

    ``pv_accum_dtype`` ("fp32+fp16", "fp32+fp32", "fp32") is accepted for compatibility:
    every key block's P·V is summed from zero and folded into an fp32 accumulator
    (two-level, flushed every block). ``smooth_v`` is ignored. On sm90 (built for
    sm_90a) this runs the Hopper wgmma kernel.
    """
    _check_choice("pv_accum_dtype", pv_accum_dtype, FP8_PV_ACCUM)
    kernel = _explicit_kernel(q.device, "fp8") if isinstance(q, torch.Tensor) and _on_gpu(q) else FP8
    return _attention(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, kernel, qk_quant_gran, smooth_k)


def sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout: str = "HND", is_causal: bool = False,
                                      qk_quant_gran: str = "per_thread", sm_scale=None,
                                      pv_accum_dtype: str = "fp32+fp32", smooth_k: bool = True,
                                      return_lse: bool = False, **kwargs):
    """INT8 Q·K^T, e4m3 P·V on Hopper: the wgmma kernel when the build has sm_90a, else
    the sm89 fp8 kernel (same semantics). Arguments as :func:`sageattn_qk_int8_pv_fp8_cuda`."""
    _check_choice("pv_accum_dtype", pv_accum_dtype, FP8_PV_ACCUM)
    kernel = _explicit_kernel(q.device, "fp8") if isinstance(q, torch.Tensor) and _on_gpu(q) else SM90_FP8
    return _attention(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, kernel, qk_quant_gran, smooth_k)


def sageattn_qk_int8_pv_fp16_triton(q, k, v, tensor_layout: str = "HND", quantization_backend: str = "triton",
                                    is_causal: bool = False, attn_mask=None, sm_scale=None,
                                    smooth_k: bool = True, return_lse: bool = False, **kwargs):
    """Compatibility alias: we ship no Triton kernels; this runs the CUDA fp16 P·V kernel
    (per-warp scales, as the established Triton kernel). ``quantization_backend`` is
    accepted ("triton" or "cuda") and ignored; ``attn_mask`` is not supported."""
    _check_choice("quantization_backend", quantization_backend, ("triton", "cuda"))
    if attn_mask is not None:
        raise NotImplementedError("attn_mask is not supported; use is_causal for causal masking")
    return sageattn_qk_int8_pv_fp16_cuda(q, k, v, tensor_layout, is_causal, "per_warp", sm_scale,
                                         "fp32", smooth_k, False, return_lse)


def sageattn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                    is_causal: bool = False, sm_scale=None, smooth_k: bool = True, **kwargs):
    """Attention over packed sequences, as FlashAttention's varlen API.

    q: ``[total_q, Hq, D]``, k/v: ``[total_k, Hkv, D]``; ``cu_seqlens_q/k``: int32 ``[batch + 1]``
    cumulative offsets (first 0, last the total). Sequences of the same query and key lengths
    run together, as the batch of one :func:`sageattn` call (NHD): one call for a batch of
    equal lengths, one per length otherwise. It reads the offsets on the host (one
    synchronisation per call); K smoothing (``smooth_k``) uses each sequence's own mean.
    ``max_seqlen_*`` are checked, not needed.
    """
    _validate_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k)
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    lens_q = [b - a for a, b in zip(starts_q, starts_q[1:])]
    lens_k = [b - a for a, b in zip(starts_k, starts_k[1:])]
    if max(lens_q, default=0) > max_seqlen_q or max(lens_k, default=0) > max_seqlen_k:
        raise ValueError(f"a sequence is longer than max_seqlen_q/k ({max_seqlen_q}/{max_seqlen_k})")
    for i, (nq, nk) in enumerate(zip(lens_q, lens_k)):
        if nq > 0 and nk == 0:
            raise ValueError(f"sequence {i} has queries but no keys")
    out, auto = q.new_empty(q.shape), _auto(q)  # (kernel, qk_quant_gran), as sageattn picks them
    for (nq, nk), seqs in _by_lengths(lens_q, lens_k).items():
        if nq == 0:
            continue
        rows_q, rows_k = _rows(starts_q, seqs, nq, q.device), _rows(starts_k, seqs, nk, k.device)
        qg, kg, vg = (t[rows].view(len(seqs), n, *t.shape[1:]) for t, rows, n in ((q, rows_q, nq), (k, rows_k, nk),
                                                                                   (v, rows_k, nk)))
        out[rows_q] = _attention(qg, kg, vg, "NHD", is_causal, sm_scale, False, *auto, smooth_k).flatten(0, 1)
    return out


def _rows(starts: list[int], seqs: list[int], n: int, device: torch.device):
    """The packed tokens of sequences ``seqs`` (``n`` each), in order: a slice where the sequences
    lie one after the other (one sequence, or a batch packed in order: its inputs are views), else
    an index (one gather, one scatter)."""
    if seqs == list(range(seqs[0], seqs[0] + len(seqs))):
        return slice(starts[seqs[0]], starts[seqs[0]] + len(seqs) * n)
    first = torch.tensor([starts[i] for i in seqs], device=device)
    return (first[:, None] + torch.arange(n, device=device)).flatten()


def _by_lengths(lens_q: list[int], lens_k: list[int]) -> dict[tuple[int, int], list[int]]:
    """The sequences' indices by their (query, key) lengths, in order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, lengths in enumerate(zip(lens_q, lens_k)):
        groups.setdefault(lengths, []).append(i)
    return groups


def _validate_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D [total_tokens, heads, head_dim] tensor")
    for name, cu, total in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]), ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be a 1-D int32 tensor of cumulative sequence offsets")
        c = cu.tolist()
        if not c or c[0] != 0 or c[-1] != total or any(b < a for a, b in zip(c, c[1:])):
            raise ValueError(f"{name} must start at 0, not decrease and end at {total}, got {c}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must describe the same number of sequences")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {list(k.shape)} and {list(v.shape)}")
