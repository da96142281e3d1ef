"""What ptxas made of a CUDA source's kernels, without a GPU: registers and spills, and each
kernel's key loop in SASS (the smallest loop holding both an MMA and an exp2) with the
local-memory loads and stores inside it.

    python bench/sass_report.py csrc/sm90/attn_sm90.cu --arch 90a [--json report.json]

The key loop is what bounds the attention kernels (see the ncu figures in docs/kernels.md): its size
tracks their instruction count, and a spill inside it costs a local-memory round trip every
key block. The source is compiled as setup.py compiles it (its nvcc flags and include
directories; a CPU-only torch is enough). The SASS comes from cuobjdump and nvdisasm: a CUDA
toolkit's, or `pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` (requirements-test.txt).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_cli  # noqa: E402


@dataclass(frozen=True)
class Registers:
    registers: int
    spill_stores: int  # bytes
    spill_loads: int


@dataclass(frozen=True)
class KeyLoop:
    instructions: int
    local_loads: int  # LDL in the loop body
    local_stores: int  # STL


def parse_ptxas(log: str) -> dict[str, Registers]:
    """`-Xptxas -v` output -> per mangled kernel name."""
    out: dict[str, Registers] = {}
    name, spills = None, (0, 0)
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            name, spills = m.group(1), (0, 0)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spills = (int(m.group(1)), int(m.group(2)))
        elif (m := re.search(r"Used (\d+) registers", line)) and name:
            out[name] = Registers(int(m.group(1)), *spills)
            name = None
    return out


def parse_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """`cuobjdump -sass` output -> per mangled kernel name, its (address, instruction)s."""
    out: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in text.splitlines():
        if m := re.search(r"Function : (\S+)", line):
            current = out.setdefault(m.group(1), [])
        elif current is not None and (m := re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)):
            current.append((int(m.group(1), 16), m.group(2)))
    return out


def key_loop(instructions: list[tuple[int, str]]) -> KeyLoop | None:
    """The smallest loop (a backward branch's span) holding an MMA and an exp2."""
    index = {addr: i for i, (addr, _) in enumerate(instructions)}
    best = None
    for i, (addr, text) in enumerate(instructions):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        start = index.get(int(m.group(1), 16)) if m else None
        if start is None or start > i:
            continue
        body = [t for _, t in instructions[start:i + 1]]
        if any("MMA" in t for t in body) and any("MUFU.EX2" in t for t in body):
            if best is None or len(body) < best.instructions:
                best = KeyLoop(len(body), sum(t.startswith("LDL") or " LDL" in t for t in body),
                               sum(t.startswith("STL") or " STL" in t for t in body))
    return best


def short_name(mangled: str) -> str:
    """Our attention kernels by traits ('sm90 hd128 fp8 __half', 'sm80 hd64 fp16 __nv_bfloat16',
    'sm90 hd128 fp16 persistent __half' for the persistent grid's); other names unchanged."""
    m = re.search(r"(Sm90|Attn)TraitsILi(\d+)ELNS_2PVE(\d)E(\d+)", mangled)
    if not m:
        return mangled
    family, hd, pv, n = m.groups()
    elem = mangled[m.end():m.end() + int(n)]
    grid = " persistent" if mangled[m.end() + int(n):].startswith("EELb1E") else ""
    return f"{'sm90' if family == 'Sm90' else 'sm80'} hd{hd} {'fp8' if pv == '1' else 'fp16'}{grid} {elem}"


def load_setup():
    spec = importlib.util.spec_from_file_location("sage_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # main() only runs as __main__
    return module


def find_cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import site  # a pip-installed nvidia-cuda-cuobjdump
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        for path in sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "bin", "cuobjdump"))):
            return path
    return None


def compile_object(source: Path, arch: str, out_dir: Path) -> tuple[Path, str]:
    """nvcc -c with setup.py's flags for one architecture ('90a', '80'); -> (object, ptxas log)."""
    from torch.utils import cpp_extension

    setup = load_setup()
    includes = [ROOT / setup.CSRC, *map(Path, cpp_extension.include_paths()), sysconfig.get_paths()["include"]]
    includes.append(setup.cpu_torch_shim())  # harmless next to a CUDA torch's own header
    obj = out_dir / (source.stem + f"_sm{arch}.o")
    cmd = [os.environ.get("NVCC", "nvcc"), "-c", str(source), "-o", str(obj), *setup.NVCC_FLAGS,
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
           "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", *[f"-I{p}" for p in includes]]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"sass_report: nvcc failed ({run.returncode}) on {source}:\n{run.stderr[-4000:]}")
    return obj, run.stderr


def report(source: Path, arch: str) -> dict[str, dict]:
    """-> {short kernel name: {"registers": ..., "key_loop": ... or None}}."""
    cuobjdump = find_cuobjdump()
    with tempfile.TemporaryDirectory() as tmp:
        obj, log = compile_object(source, arch, Path(tmp))
        sass = {}
        if cuobjdump:  # it runs nvdisasm, which the pip wheels put next to it
            env = dict(os.environ, PATH=os.path.dirname(cuobjdump) + os.pathsep + os.environ.get("PATH", ""))
            sass = parse_sass(subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True,
                                             env=env, check=True).stdout)
    rows = {}
    for name, regs in parse_ptxas(log).items():
        loop = key_loop(sass[name]) if name in sass else None
        rows[short_name(name)] = {"registers": asdict(regs), "key_loop": asdict(loop) if loop else None}
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="a .cu file, e.g. csrc/sm90/attn_sm90.cu")
    p.add_argument("--arch", default="90a", help="compute capability without the dot: 90a, 80, 89 (default 90a)")
    p.add_argument("--json", type=bench_cli.output_path, help="also write the report here")
    a = p.parse_args(argv)
    if not a.source.is_file():
        p.error(f"no such source file: {a.source}")
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        p.error("nvcc not found on PATH (or set NVCC)")
    rows = report(a.source, a.arch)
    if find_cuobjdump() is None:
        print("(no cuobjdump: key loops not reported; pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)",
              file=sys.stderr)
    print(f"{'kernel':<40} {'regs':>5} {'spill st/ld':>12} {'key loop':>9} {'LDL/STL':>8}")
    for name, row in sorted(rows.items()):
        r, k = row["registers"], row["key_loop"]
        loop = f"{k['instructions']:>9} {k['local_loads']:>3}/{k['local_stores']:<4}" if k else f"{'-':>9} {'-':>8}"
        print(f"{name[:40]:<40} {r['registers']:>5} {r['spill_stores']:>5}/{r['spill_loads']:<6} {loop}")
    if a.json:
        bench_cli.write_json(a.json, {"source": str(a.source), "arch": a.arch, "kernels": rows})


if __name__ == "__main__":
    main()
