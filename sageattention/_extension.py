"""Loads the compiled CUDA kernels (``sageattention._C``) once and remembers why not.

``_C`` is a plain extension module with no Python functions: importing it runs the
``TORCH_LIBRARY_IMPL(sageattention, CUDA, ...)`` registrations of csrc/ops.cpp (and of
csrc/sm90/ when the build targeted sm_90a). The op schemas must exist first: ``_ops``
defines them and then calls :func:`load`.
"""

from __future__ import annotations

import importlib

import torch

_loaded: bool = False
_error: BaseException | None = None
_attempted: bool = False


def load() -> bool:
    """Import ``sageattention._C`` once; later calls return the first outcome."""
    global _loaded, _error, _attempted
    if not _attempted:
        _attempted = True
        try:
            importlib.import_module("sageattention._C")
            _loaded = True
        except ImportError as e:  # not built (SAGEATTENTION_SKIP_CUDA=1), or ABI mismatch
            _error = _explain(e)
        except OSError as e:  # e.g. a missing CUDA runtime library
            _error = e
    return _loaded


def _explain(error: ImportError) -> ImportError:
    """An "undefined symbol" means _C was compiled against another torch: say so."""
    if "undefined symbol" not in str(error):
        return error
    return ImportError(
        f"{error} -- sageattention._C was built against a different torch than the installed "
        f"{torch.__version__}; rebuild it against this torch: pip install --no-build-isolation "
        f"--force-reinstall --no-deps <sageattention source or sdist>")


def extension_loaded() -> bool:
    """True when the CUDA kernels (``sageattention._C``) are importable."""
    return load()


def extension_error() -> BaseException | None:
    """The exception that importing ``sageattention._C`` raised, or None."""
    load()
    return _error


def has_cuda_kernel(op: str) -> bool:
    """Whether ``sageattention::<op>`` has a CUDA implementation (read once per op)."""
    if op not in _cuda_kernels:
        _cuda_kernels[op] = load() and torch._C._dispatch_has_kernel_for_dispatch_key(
            f"sageattention::{op}", "CUDA")
    return _cuda_kernels[op]


_cuda_kernels: dict[str, bool] = {}
