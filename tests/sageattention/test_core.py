"""The public API (sageattention/core.py) on CPU: validation, layouts, GQA, lengths,
causal, LSE, head-dim padding, no in-place writes, outliers, large inputs, dispatch,
varlen and torch.compile. CPU tensors run the ops' CPU (reference) implementations."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from sage_helpers import L1_FP8_PV, L1_FP16_PV, assert_accurate, make_qkv, metrics

import sageattention
from sageattention import core
from sageattention import reference as R
from sageattention import (
    sageattn,
    sageattn_qk_int8_pv_fp8_cuda,
    sageattn_qk_int8_pv_fp8_cuda_sm90,
    sageattn_qk_int8_pv_fp16_cuda,
    sageattn_qk_int8_pv_fp16_triton,
    sageattn_varlen,
)

FP16_FNS = [sageattn, sageattn_qk_int8_pv_fp16_cuda, sageattn_qk_int8_pv_fp16_triton]
FP8_FNS = [sageattn_qk_int8_pv_fp8_cuda, sageattn_qk_int8_pv_fp8_cuda_sm90]
# fp8 on CPU: the contract's maths (see test_reference.test_reference_accuracy_vs_fp64).
CPU_L1 = {f: L1_FP16_PV for f in FP16_FNS} | {f: 0.04 for f in FP8_FNS}


def test_public_names():
    for name in ("sageattn", "sageattn_varlen", "sageattn_qk_int8_pv_fp16_triton", "sageattn_qk_int8_pv_fp16_cuda",
                 "sageattn_qk_int8_pv_fp8_cuda", "sageattn_qk_int8_pv_fp8_cuda_sm90", "__version__",
                 "extension_loaded", "extension_error"):
        assert hasattr(sageattention, name), name


# ------------------------------------------------------------------------------ accuracy
@pytest.mark.parametrize("fn", FP16_FNS + FP8_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", [False, True])
def test_accuracy_vs_fp64(fn, causal):
    q, k, v = make_qkv(b=1, hq=2, nq=200, d=64)
    out = fn(q, k, v, is_causal=causal)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_accurate(out, R.attention(q, k, v, is_causal=causal), CPU_L1[fn])


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layouts_gqa_odd_lengths(layout, dtype):
    q, k, v = make_qkv(b=2, hq=6, hkv=2, nq=37, nk=101, d=128, dtype=dtype, layout=layout)
    out = sageattn(q, k, v, tensor_layout=layout)
    assert out.shape == q.shape and out.dtype == dtype
    assert_accurate(out, R.attention(q, k, v, layout), L1_FP16_PV)


def test_nhd_equals_hnd():
    q, k, v = make_qkv(b=1, hq=4, hkv=1, nq=50, nk=70, d=64)
    a = sageattn(q, k, v, "HND", return_lse=True)
    b = sageattn(*(t.transpose(1, 2) for t in (q, k, v)), "NHD", return_lse=True)
    torch.testing.assert_close(a[0], b[0].transpose(1, 2), atol=0, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("nq,nk", [(1, 1), (1, 65), (65, 1), (130, 64), (64, 130)])
@pytest.mark.parametrize("causal", [False, True])
def test_lengths_and_causal_alignment(nq, nk, causal):
    """Causal masking is top-left aligned (as SDPA's is_causal), also for nq != nk."""
    q, k, v = make_qkv(b=1, hq=2, nq=nq, nk=nk, d=64)
    out = sageattn(q, k, v, is_causal=causal)
    assert_accurate(out, R.attention(q, k, v, is_causal=causal), L1_FP16_PV)


def test_custom_sm_scale():
    q, k, v = make_qkv(b=1, hq=2, nq=64, d=64)
    out = sageattn(q, k, v, sm_scale=0.3)
    assert_accurate(out, R.attention(q, k, v, sm_scale=0.3), L1_FP16_PV)


# ----------------------------------------------------------------------------------- LSE
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("causal", [False, True])
def test_lse_matches_unsmoothed_logsumexp(layout, causal):
    q, k, v = make_qkv(b=1, hq=4, hkv=2, nq=80, nk=80, d=64, layout=layout, k_outlier=5.0)
    out, lse = sageattn(q, k, v, tensor_layout=layout, is_causal=causal, return_lse=True)
    _, ref_lse = R.attention(q, k, v, layout, is_causal=causal, return_lse=True)
    assert lse.shape == (1, 4, 80) and lse.dtype == torch.float32
    assert (lse.double() - ref_lse).abs().max() < 0.05


def test_lse_without_smoothing():
    q, k, v = make_qkv(b=1, hq=2, nq=40, d=64)
    _, lse = sageattn_qk_int8_pv_fp16_cuda(q, k, v, smooth_k=False, return_lse=True)
    _, ref_lse = R.attention(q, k, v, return_lse=True)
    assert (lse.double() - ref_lse).abs().max() < 0.05


# ------------------------------------------------------------------------ head-dim padding
@pytest.mark.parametrize("d", [16, 32, 48, 72, 80, 96, 120])
def test_head_dim_padding(d):
    q, k, v = make_qkv(b=1, hq=2, nq=50, nk=60, d=d, layout="NHD")
    out, lse = sageattn(q, k, v, tensor_layout="NHD", return_lse=True)
    assert out.shape == q.shape
    ref, ref_lse = R.attention(q, k, v, "NHD", return_lse=True)  # sm_scale = 1/sqrt(d), the original d
    assert_accurate(out, ref, L1_FP16_PV)
    assert (lse.double() - ref_lse).abs().max() < 0.05


@pytest.mark.parametrize("caught", [ValueError, NotImplementedError])  # the established package's; ours
def test_head_dim_over_128_is_a_clear_error(caught):
    q, k, v = make_qkv(b=1, hq=1, nq=8, d=192)
    with pytest.raises(caught, match="Unsupported head_dim 192"):
        sageattn(q, k, v)


# ------------------------------------------------------------------------------ hygiene
@pytest.mark.parametrize("fn", FP16_FNS + FP8_FNS, ids=lambda f: f.__name__)
def test_inputs_not_modified(fn):
    q, k, v = make_qkv(b=1, hq=2, nq=40, d=72, k_outlier=3.0)
    before = [t.clone() for t in (q, k, v)]
    fn(q, k, v, return_lse=True)
    for t, b in zip((q, k, v), before):
        assert torch.equal(t, b)


def test_non_contiguous_inputs():
    q, k, v = make_qkv(b=1, hq=2, nq=40, d=64)
    # slices along the head dim with a stride: a copy is made, nothing else changes
    qq, kk, vv = (torch.stack([t, t], dim=-1)[..., 0] for t in (q, k, v))
    assert not qq.is_contiguous()
    torch.testing.assert_close(sageattn(qq, kk, vv), sageattn(q, k, v), atol=0, rtol=0)


def test_k_outliers_need_smoothing():
    """Large per-channel offsets in K (the case smoothing exists for)."""
    q, k, v = make_qkv(b=1, hq=2, nq=128, d=64, k_outlier=40.0, seed=3)
    ref = R.attention(q, k, v)
    smoothed = sageattn_qk_int8_pv_fp16_cuda(q, k, v)
    raw = sageattn_qk_int8_pv_fp16_cuda(q, k, v, smooth_k=False)
    assert_accurate(smoothed, ref, L1_FP16_PV)
    assert metrics(raw, ref)[1] > 2 * metrics(smoothed, ref)[1]


@pytest.mark.parametrize("fn", [sageattn, sageattn_qk_int8_pv_fp8_cuda], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_magnitudes_stay_finite(fn, dtype):
    q, k, v = make_qkv(b=1, hq=2, nq=64, d=64, dtype=torch.float32)
    big = 30000.0 if dtype == torch.float16 else 1e30
    q, k = (q * 100).to(dtype), (k * 100).to(dtype)
    v = (v.clamp(-1, 1) * big).to(dtype)
    out, lse = fn(q, k, v, return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_zero_inputs():
    q, k, v = (torch.zeros(1, 2, 33, 64, dtype=torch.float16) for _ in range(3))
    out, lse = sageattn(q, k, v, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out))
    torch.testing.assert_close(lse, torch.full_like(lse, torch.log(torch.tensor(33.0)).item()))


# --------------------------------------------------------------------------- validation
def _qkv(**kw):
    return make_qkv(b=1, hq=2, nq=8, d=64, **kw)


@pytest.mark.parametrize("case,exc,match", [
    ("float32", TypeError, "float16 or bfloat16"),
    ("mixed_dtype", TypeError, "one dtype"),
    ("not_tensor", TypeError, "torch.Tensor"),
    ("3d", ValueError, "4-D"),
    ("layout", ValueError, "tensor_layout"),
    ("heads", ValueError, "multiple"),
    ("batch", ValueError, "batch"),
    ("head_dim", ValueError, "head dim"),
    ("kv_shape", ValueError, "k and v"),
    ("device", ValueError, "one device"),
    ("empty_k", ValueError, "at least one"),
    ("gran", ValueError, "qk_quant_gran"),
])
def test_validation_errors(case, exc, match):
    q, k, v = _qkv()
    kwargs = {}
    fn = sageattn_qk_int8_pv_fp16_cuda
    if case == "float32":
        q, k, v = (t.float() for t in (q, k, v))
    elif case == "mixed_dtype":
        k = k.bfloat16()
    elif case == "not_tensor":
        v = v.tolist()
    elif case == "3d":
        q = q[0]
    elif case == "layout":
        kwargs["tensor_layout"] = "BHSD"
    elif case == "heads":
        q = torch.cat([q, q[:, :1]], dim=1)
    elif case == "batch":
        q = torch.cat([q, q])
    elif case == "head_dim":
        q = q[..., :32]
    elif case == "kv_shape":
        v = v[:, :, :4]
    elif case == "device":
        v = v.to("meta")
    elif case == "empty_k":
        k, v = k[:, :, :0], v[:, :, :0]
    elif case == "gran":
        kwargs["qk_quant_gran"] = "per_block"
    with pytest.raises(exc, match=match):
        fn(q, k, v, **kwargs)


@pytest.mark.parametrize("sm_scale", [0.0, -0.125, float("inf"), float("nan")])
def test_sm_scale_must_be_positive(sm_scale):
    """The GPU kernels order scores by their integer value, which a non-positive scale reverses:
    one rule on every device, before anything runs."""
    with pytest.raises(ValueError, match="sm_scale must be a positive finite number"):
        sageattn(*_qkv(), sm_scale=sm_scale)


@pytest.mark.parametrize("fn", FP16_FNS + FP8_FNS, ids=lambda f: f.__name__)
def test_backward_is_a_clear_error(fn):
    """Inference only: a backward raises instead of returning gradients of the rounding."""
    q, k, v = (t.requires_grad_() for t in _qkv())
    out = fn(q, k, v)
    with pytest.raises(RuntimeError, match="inference-only"):
        out.float().sum().backward()
    with torch.no_grad():
        assert not fn(q, k, v).requires_grad


def test_pv_accum_dtype_values():
    q, k, v = _qkv()
    for value in ("fp32", "fp16+fp32", "fp16"):
        sageattn_qk_int8_pv_fp16_cuda(q, k, v, pv_accum_dtype=value, smooth_v=True)
    for value in ("fp32+fp16", "fp32+fp32", "fp32"):
        sageattn_qk_int8_pv_fp8_cuda(q, k, v, pv_accum_dtype=value)
        sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, pv_accum_dtype=value)
    with pytest.raises(ValueError, match="pv_accum_dtype"):
        sageattn_qk_int8_pv_fp16_cuda(q, k, v, pv_accum_dtype="fp32+fp32")
    with pytest.raises(ValueError, match="pv_accum_dtype"):
        sageattn_qk_int8_pv_fp8_cuda(q, k, v, pv_accum_dtype="fp16")


def test_triton_alias_arguments():
    q, k, v = _qkv()
    sageattn_qk_int8_pv_fp16_triton(q, k, v, quantization_backend="cuda")
    with pytest.raises(NotImplementedError, match="attn_mask"):
        sageattn_qk_int8_pv_fp16_triton(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="quantization_backend"):
        sageattn_qk_int8_pv_fp16_triton(q, k, v, quantization_backend="cpu")


def test_extra_kwargs_are_accepted():
    q, k, v = _qkv()
    sageattn(q, k, v, some_future_option=1)


def test_cpu_warns_once():
    core._warned.discard("cpu")
    q, k, v = _qkv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sageattn(q, k, v)
        sageattn(q, k, v)
    assert len([w for w in caught if "reference path" in str(w.message)]) == 1


# ----------------------------------------------------------------------------- dispatch
@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend cuda:0 has a given capability (and maybe the sm90 kernel)."""
    def set_gpu(cap, sm90=False):
        monkeypatch.setitem(core._capabilities, 0, cap)
        monkeypatch.setattr(core._extension, "has_cuda_kernel", lambda op: sm90 and op == "attn_sm90")
        return torch.device("cuda", 0)
    return set_gpu


@pytest.mark.parametrize("cap,sm90,kernel,gran", [
    ((8, 0), False, "fp16", "per_thread"),
    ((8, 6), False, "fp16", "per_thread"),
    ((8, 7), False, "fp16", "per_thread"),
    ((8, 9), False, "fp8", "per_thread"),
    ((9, 0), False, "fp8", "per_thread"),
    ((9, 0), True, "sm90_fp16", "per_thread"),
    ((12, 0), False, "fp8", "per_warp"),
    ((12, 1), False, "fp8", "per_warp"),
])
def test_auto_dispatch(fake_gpu, cap, sm90, kernel, gran):
    chosen, chosen_gran = core._auto_kernel(fake_gpu(cap, sm90))
    assert (chosen.name, chosen_gran) == (kernel, gran)


@pytest.mark.parametrize("cap", [(7, 5), (10, 0), (11, 0)])
def test_auto_dispatch_unsupported(fake_gpu, cap):
    with pytest.raises(ValueError, match=f"{cap[0]}.{cap[1]}"):
        core._auto_kernel(fake_gpu(cap))


def test_explicit_kernels(fake_gpu):
    assert core._explicit_kernel(fake_gpu((8, 0)), "fp16").name == "fp16"
    with pytest.raises(ValueError, match="8.9"):
        core._explicit_kernel(fake_gpu((8, 6)), "fp8")
    assert core._explicit_kernel(fake_gpu((9, 0), sm90=True), "fp16").name == "sm90_fp16"
    assert core._explicit_kernel(fake_gpu((9, 0), sm90=True), "fp8").name == "sm90_fp8"
    assert core._explicit_kernel(fake_gpu((12, 0)), "fp8").name == "fp8"


@pytest.mark.parametrize("name", sorted(core.KERNELS))
def test_every_kernel_runs_on_cpu(name):
    q, k, v = make_qkv(b=1, hq=2, hkv=1, nq=70, nk=90, d=64)
    out, lse = core._attention(q, k, v, "HND", False, None, True, name, "per_warp", True)
    assert_accurate(out, R.attention(q, k, v), 0.04)


# ------------------------------------------------------------------------------- varlen
def test_varlen_matches_per_sequence():
    lens_q, lens_k = [5, 40, 1], [7, 40, 33]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(sum(lens_q), 4, 64, generator=g).half()
    k = torch.randn(sum(lens_k), 2, 64, generator=g).half()
    v = torch.randn(sum(lens_k), 2, 64, generator=g).half()
    cu_q = torch.tensor([0, 5, 45, 46], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 47, 80], dtype=torch.int32)
    for causal in (False, True):
        out = sageattn_varlen(q, k, v, cu_q, cu_k, 40, 40, is_causal=causal)
        assert out.shape == q.shape
        for i in range(3):
            qs, ks = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
            ref = R.attention(q[qs][None], k[ks][None], v[ks][None], "NHD", is_causal=causal)[0]
            assert_accurate(out[qs], ref, L1_FP16_PV)


@pytest.mark.parametrize("lens_q, lens_k", [([16, 9, 16, 0, 16], [20, 9, 20, 3, 20]),  # apart: copied
                                            ([9, 16, 16, 16, 0], [9, 20, 20, 20, 3])])  # in a row: a view
def test_varlen_runs_sequences_of_equal_lengths_together(monkeypatch, lens_q, lens_k):
    """Sequences with the same query and key lengths are one call's batch, wherever they lie in the
    packing; each still gets exactly what it gets alone."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(sum(lens_q), 4, 64, generator=g).half()
    k, v = (torch.randn(sum(lens_k), 2, 64, generator=g).half() for _ in range(2))
    cu_q, cu_k = (torch.tensor([0, *itertools.accumulate(n)], dtype=torch.int32) for n in (lens_q, lens_k))
    batches = []
    attention = core._attention
    monkeypatch.setattr(core, "_attention", lambda q, *a: batches.append(q.shape[0]) or attention(q, *a))
    out = sageattn_varlen(q, k, v, cu_q, cu_k, 16, 20, is_causal=True)
    assert sorted(batches) == [1, 3]
    for i in [seq for seq, n in enumerate(lens_q) if n > 0]:
        qs, ks = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        alone = sageattn(q[qs][None], k[ks][None], v[ks][None], "NHD", is_causal=True)[0]
        assert torch.equal(out[qs], alone)


@pytest.mark.parametrize("smooth_k", [False, True])
def test_varlen_honours_smooth_k(smooth_k):
    """Each sequence runs as sageattn with the caller's smooth_k (K biased, so it matters)."""
    cu = torch.tensor([0, 30, 64], dtype=torch.int32)
    q, k, v = (t[0] for t in make_qkv(b=1, hq=2, nq=64, d=64, layout="NHD", k_outlier=20.0))
    out = sageattn_varlen(q, k, v, cu, cu, 34, 34, smooth_k=smooth_k)
    for a, b in ((0, 30), (30, 64)):
        one = sageattn_qk_int8_pv_fp16_cuda(q[None, a:b], k[None, a:b], v[None, a:b], "NHD", smooth_k=smooth_k)[0]
        assert torch.equal(out[a:b], one)


def test_varlen_validation():
    q = torch.randn(10, 2, 64).half()
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        sageattn_varlen(q, q, q, torch.tensor([0, 4, 9], dtype=torch.int32), cu, 6, 6)
    with pytest.raises(ValueError, match="max_seqlen"):
        sageattn_varlen(q, q, q, cu, cu, 4, 6)
    with pytest.raises(ValueError, match="3-D"):
        sageattn_varlen(q[None], q, q, cu, cu, 6, 6)


# ------------------------------------------------------------------------ torch.compile
def test_compile_fullgraph_traces():
    """fullgraph=True: no graph break through validation, padding, quantization and ops."""
    q, k, v = make_qkv(b=1, hq=4, hkv=2, nq=40, nk=50, d=72, layout="NHD")

    def f(q, k, v):
        out, lse = sageattn(q, k, v, tensor_layout="NHD", return_lse=True)
        return out, lse, sageattn_qk_int8_pv_fp8_cuda(q, k, v, tensor_layout="NHD", is_causal=True)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got, want = compiled(q, k, v), f(q, k, v)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
