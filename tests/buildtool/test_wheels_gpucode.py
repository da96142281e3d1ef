"""Reading the GPU machine code of a compiled extension (.nv_fatbin), without cuobjdump."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from buildtool.gpucode import (
    FATBIN_MAGIC, GpuCode, elf_section, fatbin_archs, missing_archs, required_code, so_archs,
)


def entry(kind: int, sm: int, flags: int = 0x11, payload: bytes = b"\0" * 16) -> bytes:
    padded = payload + b"\0" * (-len(payload) % 8)
    words = [0] * 16
    hdr = bytearray(struct.pack("<16I", *words))
    struct.pack_into("<HHII", hdr, 0, kind, 0x101, 64, len(padded))
    struct.pack_into("<I", hdr, 28, sm)
    struct.pack_into("<I", hdr, 40, flags)
    return bytes(hdr) + padded


def fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def elf(sections: dict[str, bytes]) -> bytes:
    """A minimal 64-bit little-endian ELF file holding ``sections``."""
    names = [""] + list(sections) + [".shstrtab"]
    strtab = b""
    offsets = {}
    for n in names:
        offsets[n] = len(strtab)
        strtab += n.encode() + b"\0"
    datas = [b""] + list(sections.values()) + [strtab]
    body = b""
    placed = []
    base = 64
    for d in datas:
        placed.append((base + len(body), len(d)))
        body += d + b"\0" * (-len(d) % 8)
    shoff = base + len(body)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, len(names), len(names) - 1)
    shdrs = b""
    for n, (off, size) in zip(names, placed):
        sh = bytearray(64)
        struct.pack_into("<I", sh, 0, offsets[n])
        struct.pack_into("<QQ", sh, 0x18, off, size)
        shdrs += bytes(sh)
    return bytes(header) + body + shdrs


def test_required_code_spells_torch_arch_lists():
    assert required_code("8.0;9.0a") == [GpuCode("elf", 80), GpuCode("elf", 90, "a")]
    assert required_code("8.6 12.0+PTX") == [GpuCode("elf", 86), GpuCode("elf", 120), GpuCode("ptx", 120)]
    with pytest.raises(ValueError):
        required_code("sm_80")


def test_fatbins_of_several_translation_units_are_all_read():
    section = fatbin(entry(2, 80), entry(2, 90, 0x100011)) + fatbin(entry(1, 80, 0x8011), entry(2, 120, 0x1100011))
    found = fatbin_archs(section)
    assert found == {GpuCode("elf", 80), GpuCode("elf", 90, "a"), GpuCode("ptx", 80), GpuCode("elf", 120, "a")}
    assert missing_archs(found, "8.0;9.0a;12.0a") == []
    # plain 9.0 machine code does not satisfy 9.0a, and 8.6 is simply absent
    assert [str(c) for c in missing_archs({GpuCode("elf", 90), GpuCode("elf", 80)}, "8.0;8.6;9.0a")] == ["sm_86", "sm_90a"]


def test_so_archs_reads_the_section_of_an_elf_file():
    data = elf({".text": b"\x90" * 40, ".nv_fatbin": fatbin(entry(2, 80), entry(2, 89))})
    assert elf_section(data, ".text") == b"\x90" * 40
    assert so_archs(data) == {GpuCode("elf", 80), GpuCode("elf", 89)}
    assert so_archs(elf({".text": b""})) == set()  # a CPU-only build holds no GPU code at all
    with pytest.raises(ValueError):
        so_archs(b"MZ not elf")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to compile a real fatbin")
@pytest.mark.parametrize("extra", [[], ["-Xfatbin", "-compress-all"]])
def test_real_nvcc_output(tmp_path: Path, extra: list[str]):
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }\n")
    out = tmp_path / "k.so"
    subprocess.run(
        ["nvcc", "-shared", "-Xcompiler", "-fPIC", *extra,
         "-gencode", "arch=compute_80,code=[sm_80,compute_80]", "-gencode", "arch=compute_90a,code=sm_90a",
         "-o", str(out), str(src)], check=True, capture_output=True, timeout=300,
    )
    found = so_archs(out.read_bytes())
    assert {GpuCode("elf", 80), GpuCode("elf", 90, "a"), GpuCode("ptx", 80)} <= found
    assert missing_archs(found, "8.0+PTX;9.0a") == []
    assert [str(c) for c in missing_archs(found, "8.6;9.0a;12.0")] == ["sm_86", "sm_120"]
