"""The torch ops (sageattention/_ops.py): schemas, CPU dispatch to the reference, fake
implementations (opcheck), and the extension loader."""

from __future__ import annotations

import pytest
import torch

import sageattention
from sageattention import _extension, _ops
from sageattention import reference as R

ops = torch.ops.sageattention
FP8_UTILS = ("test_faketensor", "test_aot_dispatch_dynamic")  # test_schema compares with allclose: no fp8 on CPU


def _quantized(nq=40, nk=40, hq=2, hkv=2, d=64, dtype=torch.float16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, hq, nq, d, generator=g).to(dtype)
    k = torch.randn(1, hkv, nk, d, generator=g).to(dtype)
    v = torch.randn(1, hkv, nk, d, generator=g).to(dtype)
    qi, qs = ops.quant_int8(q, None, 0, 32, 8, 0.18)
    ki, ks = ops.quant_int8(k, k.float().mean(2), 0, 64, 8, 1.0)
    return q, k, v, qi, qs, ki, ks


def test_all_schemas_defined():
    for name in _ops.SCHEMAS:
        assert hasattr(ops, name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sageattention::{name}", "CPU")


def test_cpu_ops_are_the_reference():
    q, k, v, qi, qs, ki, ks = _quantized(nq=33, nk=70, hq=4, hkv=2)
    a = ops.attn_fp16pv(qi, ki, v, qs, ks, 0, False, True)
    b = R.attn_fp16pv(qi, ki, v, qs, ks, 0, False, True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    v8, vs = ops.quant_v_fp8(v, 0)
    r8, rs = R.quant_v_fp8(v, 0)
    assert torch.equal(v8.view(torch.uint8), r8.view(torch.uint8)) and torch.equal(vs, rs)


def test_opcheck_quant_int8():
    x = torch.randn(2, 50, 3, 64, dtype=torch.bfloat16)  # NHD
    torch.library.opcheck(ops.quant_int8, (x, x.float().mean(1), 1, 64, 8, 1.0))  # mean [B, H, D]
    torch.library.opcheck(ops.quant_int8, (x, None, 1, 32, 1, 0.5))


def test_quant_int8_smooth_is_quant_int8_of_x_minus_its_sample_mean():
    x = torch.randn(2, 70, 3, 64, dtype=torch.float16) + 3.0  # NHD, an offset the mean removes
    qi, qs, mean = ops.quant_int8_smooth(x, 1, 64, 8)
    want_mean = x.float()[:, R.sample_tokens(70)].mean(1)
    torch.testing.assert_close(mean, want_mean)
    ri, rs = ops.quant_int8(x, want_mean, 1, 64, 8, 1.0)
    assert torch.equal(qi, ri) and torch.equal(qs, rs)
    torch.library.opcheck(ops.quant_int8_smooth, (x, 1, 64, 8))
    with pytest.raises(ValueError, match="at least one token"):
        ops.quant_int8_smooth(x[:, :0], 1, 64, 8)


def test_opcheck_v_ops():
    v = torch.randn(1, 2, 130, 64, dtype=torch.float16)
    torch.library.opcheck(ops.quant_v_fp8, (v, 0), test_utils=FP8_UTILS)


@pytest.mark.parametrize("causal,lse", [(False, False), (True, True)])
def test_opcheck_attention(causal, lse):
    q, k, v, qi, qs, ki, ks = _quantized(nq=40, nk=40, hq=4, hkv=2)
    torch.library.opcheck(ops.attn_fp16pv, (qi, ki, v, qs, ks, 0, causal, lse))
    v8, vs = ops.quant_v_fp8(v, 0)
    torch.library.opcheck(ops.attn_fp8pv, (qi, ki, v8, qs, ks, vs, 1, torch.bfloat16, causal, lse),
                          test_utils=FP8_UTILS)
    torch.library.opcheck(ops.attn_sm90, (q, ki, v8, ks, vs, 0, 32, 8, 0.18, causal, lse), test_utils=FP8_UTILS)
    torch.library.opcheck(ops.attn_sm90, (q.transpose(1, 2), ki, v.transpose(1, 2), ks, None, 1, 64, 1, 0.18,
                                          causal, lse))
    torch.library.opcheck(ops.attn_sm90_fp8, (q, k, v, 0, 8, True, 32, 8, 0.18, causal, lse), test_utils=FP8_UTILS)
    torch.library.opcheck(ops.attn_sm90_fp8, (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 1, 1, False,
                                              64, 1, 0.18, causal, lse), test_utils=FP8_UTILS)


def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 100, 3, 128, dtype=torch.float16)  # NHD
        qi, qs = ops.quant_int8(x, None, 1, 32, 8, 1.0)
        assert qi.shape == (2, 3, 100, 128) and qi.dtype == torch.int8 and qs.shape == (2, 3, 100)
        ki, ks, km = ops.quant_int8_smooth(x, 1, 64, 8)
        assert ki.shape == qi.shape and ks.shape == qs.shape and km.shape == (2, 3, 128) and km.dtype == torch.float32
        v8, vs = ops.quant_v_fp8(x, 1)
        assert v8.shape == (2, 3, 128, 128) and v8.dtype == torch.float8_e4m3fn and vs.shape == (2, 3, 128)
        out, lse = ops.attn_fp8pv(qi, qi, v8, qs, qs, vs, 1, torch.bfloat16, False, True)
        assert out.shape == (2, 100, 3, 128) and out.dtype == torch.bfloat16 and lse.shape == (2, 3, 100)
        out, lse = ops.attn_fp16pv(qi, qi, x, qs, qs, 1, False, False)
        assert out.shape == x.shape and lse.shape == (0,)


def test_extension_state_is_reported():
    loaded = sageattention.extension_loaded()
    assert isinstance(loaded, bool)
    assert (sageattention.extension_error() is None) == loaded
    assert _extension.load() is loaded  # loaded once, same answer


def test_version():
    assert sageattention.__version__ == "0.1.0" or "+" in sageattention.__version__


def test_undefined_symbol_is_explained():
    err = _extension._explain(ImportError("/x/_C.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"))
    assert "different torch" in str(err) and "--no-build-isolation" in str(err)
    other = ImportError("No module named 'sageattention._C'")
    assert _extension._explain(other) is other
