"""sageattention: INT8 Q·K^T attention with K smoothing and FP16 or FP8 P·V, for PyTorch.

API-compatible with the established ``sageattention`` package (2.x): see
:func:`sageattn` and the explicit kernels. ``extension_loaded()`` tells whether the CUDA
kernels are importable, ``extension_error()`` why not.
"""

from ._extension import extension_error, extension_loaded
from ._version import __version__
from .core import (
    sageattn,
    sageattn_qk_int8_pv_fp8_cuda,
    sageattn_qk_int8_pv_fp8_cuda_sm90,
    sageattn_qk_int8_pv_fp16_cuda,
    sageattn_qk_int8_pv_fp16_triton,
    sageattn_varlen,
)

__all__ = [
    "__version__",
    "extension_error",
    "extension_loaded",
    "sageattn",
    "sageattn_qk_int8_pv_fp8_cuda",
    "sageattn_qk_int8_pv_fp8_cuda_sm90",
    "sageattn_qk_int8_pv_fp16_cuda",
    "sageattn_qk_int8_pv_fp16_triton",
    "sageattn_varlen",
]
