"""Build of the sageattention wheel: the Python package plus the CUDA extension ``sageattention._C``.

Metadata (name, version, dependencies) lives in pyproject.toml; this file only describes
the extension. Environment:

  TORCH_CUDA_ARCH_LIST     GPU architectures, default "8.0;8.6;8.9;9.0a;12.0" (12.0 only with
                           CUDA >= 12.8). "9.0a" also builds the Hopper (wgmma) kernels in
                           csrc/sm90/, which are compiled for sm_90a only.
  MAX_JOBS                 parallel compile jobs (ninja)
  NVCC_THREADS             nvcc --threads (parallel arch compilation inside one nvcc)
  SAGEATTENTION_SKIP_CUDA  =1: no extension, a pure-Python wheel (reference path only)
  SAGEATTENTION_ABI3       =1: build against Python's stable ABI, one cp39-abi3 wheel
  CUDA_HOME                the CUDA toolkit (found from nvcc on PATH when unset)

No GPU is needed to build.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"
SM90_DIR = "csrc/sm90/"  # compiled only for sm_90a, and only when 9.0a is in the arch list
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0a;12.0"
MIN_ARCH = (8, 0)
LIMITED_API = "0x03090000"  # Python 3.9: one cp39-abi3 wheel covers 3.9+

NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "--use_fast_math",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    "-DNDEBUG",
]
CXX_FLAGS = ["/O2", "/std:c++17", "/DNDEBUG"] if os.name == "nt" else ["-O3", "-std=c++17", "-DNDEBUG"]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------ arch list
def parse_arch(entry: str) -> tuple[int, int, str, bool]:
    """'9.0a+PTX' -> (9, 0, 'a', True)."""
    m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", entry.strip())
    if not m:
        raise SystemExit(f"setup.py: TORCH_CUDA_ARCH_LIST: cannot parse {entry!r} (expected e.g. 8.0, 9.0a, 12.0+PTX)")
    return int(m.group(1)), int(m.group(2)), m.group(3), bool(m.group(4))


def nvcc_version(cuda_home: str) -> tuple[int, int]:
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"setup.py: cannot run {nvcc} --version ({e}); check CUDA_HOME") from e
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise SystemExit(f"setup.py: cannot read the CUDA version from `{nvcc} --version`")
    return int(m.group(1)), int(m.group(2))


def arch_list(cuda: tuple[int, int]) -> list[tuple[int, int, str, bool]]:
    raw = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not raw:
        raw = DEFAULT_ARCHS if cuda >= (12, 8) else DEFAULT_ARCHS.replace(";12.0", "")
    archs = [parse_arch(e) for e in re.split(r"[;\s,]+", raw) if e]
    for major, minor, suffix, _ in archs:
        if (major, minor) < MIN_ARCH:
            raise SystemExit(f"setup.py: TORCH_CUDA_ARCH_LIST has {major}.{minor}{suffix}: "
                             f"the sageattention kernels need compute capability 8.0 or newer")
        if major >= 12 and cuda < (12, 8):
            raise SystemExit(f"setup.py: arch {major}.{minor} needs CUDA 12.8 or newer, this nvcc is "
                             f"{cuda[0]}.{cuda[1]}")
    return archs


def gencode(major: int, minor: int, suffix: str, ptx: bool) -> list[str]:
    sm = f"{major}{minor}{suffix}"
    flags = [f"-gencode=arch=compute_{sm},code=sm_{sm}"]
    if ptx:
        flags.append(f"-gencode=arch=compute_{sm},code=compute_{sm}")
    return flags


# ------------------------------------------------------------------------------- sources
def sources() -> tuple[list[str], list[str]]:
    """(common sources, sm90-only sources), relative to the project root, sorted."""
    found = sorted(
        p.relative_to(ROOT).as_posix()
        for pattern in ("**/*.cu", "**/*.cpp")
        for p in (ROOT / CSRC).glob(pattern)
    )
    common = [s for s in found if not s.startswith(SM90_DIR)]
    sm90 = [s for s in found if s.startswith(SM90_DIR)]
    return common, sm90


# ----------------------------------------------------------------------------- extension
def cpu_torch_shim() -> str:
    """The one generated header a CPU-only torch lacks for c10/cuda includes (compile checks)."""
    shim = ROOT / "build" / "cpu-torch-shim"
    header = shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return str(shim)


def cuda_extension():
    """-> (ext_modules, cmdclass, options) for the CUDA build."""
    try:
        from torch.utils import cpp_extension
    except ImportError as e:
        raise SystemExit(
            "setup.py: building the CUDA extension needs torch (>= 2.7) importable at build time: "
            "`pip install torch` first and build with `pip install --no-build-isolation .`, or set "
            "SAGEATTENTION_SKIP_CUDA=1 for the pure-Python package"
        ) from e
    import torch

    if "pip-build-env" in torch.__file__:
        print(f"setup.py: NOTE: building against torch {torch.__version__} from pip's isolated build "
              f"environment: the extension loads only with that torch. To build against your installed "
              f"torch, use `pip install --no-build-isolation .`", file=sys.stderr)
    cuda_home = cpp_extension.CUDA_HOME
    cpu_torch = torch.version.cuda is None
    if cpu_torch:  # torch leaves CUDA_HOME unset for its CPU builds: a compile check only
        cuda_home = cpp_extension._find_cuda_home()
        cpp_extension.CUDA_HOME = cuda_home
    if not cuda_home:
        raise SystemExit(
            "setup.py: no CUDA toolkit found: set CUDA_HOME to it (e.g. CUDA_HOME=/usr/local/cuda-12.8, "
            "the directory holding bin/nvcc, matching torch.version.cuda's major version), or set "
            "SAGEATTENTION_SKIP_CUDA=1 to build the pure-Python package (reference path only)"
        )
    common, sm90 = sources()
    if not common:
        raise SystemExit(f"setup.py: no CUDA sources under {ROOT / CSRC}")
    archs = arch_list(nvcc_version(cuda_home))
    with_sm90 = any((a[0], a[1], a[2]) == (9, 0, "a") for a in archs)

    nvcc = list(NVCC_FLAGS)
    threads = os.environ.get("NVCC_THREADS", "").strip()
    if threads:
        nvcc += ["--threads", threads]
    abi3 = env_flag("SAGEATTENTION_ABI3")
    if abi3:
        nvcc.append(f"-DPy_LIMITED_API={LIMITED_API}")
    arch_flags = [f for a in archs for f in gencode(*a)]
    cxx = CXX_FLAGS + ([f"-DPy_LIMITED_API={LIMITED_API}"] if abi3 else [])
    names = ", ".join(f"{a[0]}.{a[1]}{a[2]}{'+PTX' if a[3] else ''}" for a in archs)
    print(f"setup.py: CUDA {cuda_home}, archs {names}; sm90 kernels: {'yes' if with_sm90 else 'no'}; "
          f"abi3: {abi3}; MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}; "
          f"NVCC_THREADS={threads or '(nvcc default)'}")

    ext = cpp_extension.CUDAExtension(
        name="sageattention._C",
        sources=common + (sm90 if with_sm90 else []),
        include_dirs=[str(ROOT / CSRC)],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc + arch_flags},
        py_limited_api=abi3,
    )
    ext.sm90_sources = sm90 if with_sm90 else []
    if cpu_torch:
        # A CPU-only torch has no libc10_cuda/libtorch_cuda to link: compile and link
        # without them so the sources are checked; the result needs a CUDA torch to load.
        torch_lib = Path(torch.__file__).parent / "lib"
        ext.libraries = [lib for lib in ext.libraries
                         if not lib.endswith("_cuda") or any(torch_lib.glob(f"lib{lib}.*"))]
        ext.include_dirs.append(cpu_torch_shim())
        print(f"setup.py: WARNING: torch {torch.__version__} is CPU-only: compile check, the built "
              f"extension will not load with this torch", file=sys.stderr)

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's BuildExtension (ninja), plus: csrc/sm90/ compiled for sm_90a alone, and
        our Py_LIMITED_API (cp39) in place of the one torch adds for py_limited_api."""

        def build_extension(self, extension):
            args = extension.extra_compile_args
            if abi3:
                for key in ("cxx", "nvcc"):
                    args[key] = [f for f in args[key] if not f.startswith("-DPy_LIMITED_API=")]
                    args[key].append(f"-DPy_LIMITED_API={LIMITED_API}")
            sm90_srcs = getattr(extension, "sm90_sources", [])
            if sm90_srcs:
                extension.sources = [s for s in extension.sources if s not in sm90_srcs]
                nvcc_sm90 = [f for f in args["nvcc"] if not f.startswith("-gencode")]
                nvcc_sm90.append("-gencode=arch=compute_90a,code=sm_90a")
                objects = self.compiler.compile(
                    sm90_srcs, output_dir=self.build_temp, macros=extension.define_macros,
                    include_dirs=extension.include_dirs, debug=self.debug,
                    extra_postargs={"cxx": args["cxx"], "nvcc": nvcc_sm90}, depends=extension.depends)
                extension.extra_objects = list(extension.extra_objects or []) + list(objects)
            super().build_extension(extension)

    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}
    options = {"bdist_wheel": {"py_limited_api": "cp39"}} if abi3 else {}
    return [ext], cmdclass, options


def main() -> None:
    if env_flag("SAGEATTENTION_SKIP_CUDA"):
        print("setup.py: SAGEATTENTION_SKIP_CUDA=1: pure-Python package, no CUDA extension", file=sys.stderr)
        ext_modules, cmdclass, options = [], {}, {}
    else:
        ext_modules, cmdclass, options = cuda_extension()
    setup(ext_modules=ext_modules, cmdclass=cmdclass, options=options)


if __name__ == "__main__":
    main()
