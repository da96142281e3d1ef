"""Compatibility facts: which PyTorch release ships which CUDA builds, for which Pythons,
and which GPU architectures each CUDA toolkit can compile for.

These tables are data, not guesses: every row names its source. Add a row only after checking
PyTorch's release notes / RELEASE.md ("PyTorch CUDA Support Matrix") or the index itself.

* 2.7: CUDA 11.8, 12.6, 12.8 (PyTorch 2.7 release notes; cu128 is new with Blackwell support).
* 2.8: CUDA 12.6, 12.8, 12.9 (PyTorch 2.8 release notes; CUDA 11.8 dropped).
* 2.9: CUDA 12.6, 12.8, 13.0 (pytorch/pytorch#164471, RELEASE.md "For Release 2.9 ...").
* 2.11: CUDA 12.6, 12.8, 13.0 (RELEASE.md as changed by pytorch/pytorch#182849 for 2.12, which
  removed 12.8 and added 13.2 relative to the 2.11 table; pytorch/pytorch#177975 made 13.0 the
  PyPI default in 2.11).
* 2.10 is not listed: its CUDA set was not verified.
"""

from __future__ import annotations

import re

from packaging.version import Version

#: torch "major.minor" -> CUDA "major.minor" builds published on download.pytorch.org
TORCH_CUDA_BUILDS: dict[str, tuple[str, ...]] = {
    "2.7": ("11.8", "12.6", "12.8"),
    "2.8": ("12.6", "12.8", "12.9"),
    "2.9": ("12.6", "12.8", "13.0"),
    "2.11": ("12.6", "12.8", "13.0"),
}

#: torch "major.minor" -> CPython "major.minor" versions PyTorch publishes wheels for
TORCH_PYTHONS: dict[str, tuple[str, ...]] = {
    "2.7": ("3.9", "3.10", "3.11", "3.12", "3.13"),
    "2.8": ("3.9", "3.10", "3.11", "3.12", "3.13"),
    "2.9": ("3.10", "3.11", "3.12", "3.13", "3.14"),
    "2.11": ("3.10", "3.11", "3.12", "3.13", "3.14"),
}

#: the Python versions sagebuild knows how to name and build for
KNOWN_PYTHONS: tuple[str, ...] = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")

#: last python.org release with a Windows installer per minor (used by the Windows Dockerfile)
PYTHON_WINDOWS_INSTALLER: dict[str, str] = {
    "3.9": "3.9.13",
    "3.10": "3.10.11",
    "3.11": "3.11.9",
    "3.12": "3.12.10",
    "3.13": "3.13.9",
    "3.14": "3.14.0",
}

#: CUDA "major.minor" toolkits sagebuild knows (a matrix may only name these)
KNOWN_CUDA: tuple[str, ...] = ("11.8", "12.6", "12.8", "12.9", "13.0")

#: the abi3 floor: an abi3 wheel is tagged cp39-abi3
ABI3_PYTHON = "3.9"

#: GPU architecture ("compute capability", TORCH_CUDA_ARCH_LIST spelling) -> first CUDA
#: toolkit that can compile for it. ``9.0a`` (Hopper arch-specific features: WGMMA, setmaxnreg)
#: needs CUDA 12.0; Blackwell ``10.0``/``12.0`` need CUDA 12.8. CUDA 13.0 dropped sm < 7.5.
ARCH_MIN_CUDA: dict[str, str] = {
    "7.5": "10.0",
    "8.0": "11.0",
    "8.6": "11.1",
    "8.7": "11.4",
    "8.9": "11.8",
    "9.0": "11.8",
    "9.0a": "12.0",
    "10.0": "12.8",
    "10.0a": "12.8",
    "12.0": "12.8",
    "12.0a": "12.8",
}

_ARCH_RE = re.compile(r"^(?P<arch>\d+\.\d+a?)(?P<ptx>\+PTX)?$")


def major_minor(version: str) -> str:
    """``"12.8.1"`` -> ``"12.8"``; ``"2.8.0"`` -> ``"2.8"``."""
    v = Version(version)
    return f"{v.major}.{v.minor}"


def torch_ships(torch_version: str, cuda_version: str) -> bool:
    """Does PyTorch publish a build of ``torch_version`` for CUDA ``cuda_version``?"""
    return major_minor(cuda_version) in TORCH_CUDA_BUILDS.get(major_minor(torch_version), ())


def parse_arch_list(arch_list: str) -> list[str]:
    """Split a ``TORCH_CUDA_ARCH_LIST`` value (``;`` or space separated) into its entries."""
    return [a for a in re.split(r"[;\s]+", arch_list.strip()) if a]


def check_arch_list(arch_list: str, cuda_version: str) -> str | None:
    """Return a problem description, or ``None`` when every arch compiles with this CUDA."""
    items = parse_arch_list(arch_list)
    if not items:
        return "the arch list is empty"
    cuda = Version(cuda_version)
    for item in items:
        m = _ARCH_RE.match(item)
        if not m or m["arch"] not in ARCH_MIN_CUDA:
            return f"unknown GPU architecture {item!r}"
        need = Version(ARCH_MIN_CUDA[m["arch"]])
        if cuda < need:
            return f"architecture {item} needs CUDA >= {need}, this target uses CUDA {cuda_version}"
        if cuda.major >= 13 and Version(m["arch"].rstrip("a")) < Version("7.5"):
            return f"CUDA {cuda_version} cannot compile for {item} (CUDA 13 dropped sm < 7.5)"
    if len(set(items)) != len(items):
        return "the arch list names an architecture twice"
    return None


def auditwheel_excludes(cuda_version: str) -> list[str]:
    """Shared libraries a torch extension links but must NOT vendor: torch's own libraries and
    the CUDA runtime libraries that the torch wheel (nvidia-* wheels) or the driver provide.
    Listed by exact soname (auditwheel's --exclude wildcard support is version dependent)."""
    major = Version(cuda_version).major
    cudart = "libcudart.so.11.0" if major == 11 else f"libcudart.so.{major}"
    return [
        "libtorch.so",
        "libtorch_cpu.so",
        "libtorch_cuda.so",
        "libtorch_python.so",
        "libc10.so",
        "libc10_cuda.so",
        "libcuda.so.1",
        cudart,
        f"libcublas.so.{major}",
        f"libcublasLt.so.{major}",
    ]
