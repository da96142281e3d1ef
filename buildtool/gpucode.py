"""Which GPU machine code a compiled extension holds: the ``.nv_fatbin`` section of its ELF
shared object, read without cuobjdump (which neither the build nor the test image has).

Standard library only and no ``from __future__`` import: ``sagebuild test`` also runs this
source inside the test image (see :mod:`buildtool.installed`), where only Python + torch exist.

Format (checked against nvcc 13.0 output: plain, ``-Xfatbin -compress-all``, ``sm_90a``,
``sm_100f``, ``sm_120a``, ``+PTX``): the section holds one fatbin per translation unit, 8-byte
aligned. A fatbin is a 16-byte header (u32 magic ``0xBA55ED50``, u16 version, u16 header size,
u64 payload size) followed by entries; an entry header has u16 kind (1 PTX, 2 ELF/cubin),
u16 version, u32 header size, u32 padded payload size, ..., u32 SM number at offset 28 and u32
flags at offset 40 (``0x100000``: arch-specific ``a``, ``0x200000``: family ``f``). Only headers
are read, so compressed payloads need no decompression.
"""

import re
import struct
from dataclasses import dataclass
from typing import List, Optional, Set

FATBIN_MAGIC = 0xBA55ED50
FLAG_ARCH_SPECIFIC = 0x100000
FLAG_FAMILY = 0x200000
KINDS = {1: "ptx", 2: "elf"}


@dataclass(frozen=True, order=True)
class GpuCode:
    """One fatbin entry: machine code (``elf``, a cubin) or ``ptx``, for ``sm`` (80, 90, ...)."""

    kind: str
    sm: int
    suffix: str = ""  # "", "a" or "f"

    def __str__(self) -> str:
        prefix = "sm" if self.kind == "elf" else "compute"
        return "%s_%d%s" % (prefix, self.sm, self.suffix)


def elf_section(data: bytes, name: str) -> Optional[bytes]:
    """The bytes of section ``name`` of a 64-bit little-endian ELF file (``None``: absent)."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("only 64-bit little-endian ELF files are supported")
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if e_shoff == 0 or e_shnum == 0:
        return None

    def header(i):
        base = e_shoff + i * e_shentsize
        (sh_name,) = struct.unpack_from("<I", data, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, base + 0x18)
        return sh_name, sh_offset, sh_size

    _, str_off, str_size = header(e_shstrndx)
    strtab = data[str_off:str_off + str_size]
    want = name.encode()
    for i in range(e_shnum):
        sh_name, off, size = header(i)
        end = strtab.find(b"\0", sh_name)
        if strtab[sh_name:end] == want:
            return data[off:off + size]
    return None


def fatbin_archs(section: bytes) -> Set[GpuCode]:
    """Every (kind, sm, suffix) in a ``.nv_fatbin`` section."""
    found = set()
    pos = 0
    while pos + 16 <= len(section):
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", section, pos)
        if magic != FATBIN_MAGIC:
            pos += 8
            continue
        off, end = pos + hsize, min(pos + hsize + fsize, len(section))
        while off + 48 <= end:
            kind, _ever, ehsize, padded = struct.unpack_from("<HHII", section, off)
            if ehsize < 48:
                break
            (sm,) = struct.unpack_from("<I", section, off + 28)
            (flags,) = struct.unpack_from("<I", section, off + 40)
            suffix = "a" if flags & FLAG_ARCH_SPECIFIC else "f" if flags & FLAG_FAMILY else ""
            found.add(GpuCode(KINDS.get(kind, "kind%d" % kind), sm, suffix))
            off += ehsize + padded
        pos = max(end, pos + 8)
        pos += (-pos) % 8
    return found


def so_archs(data: bytes) -> Set[GpuCode]:
    """GPU code embedded in a shared object (empty: no ``.nv_fatbin`` section at all)."""
    section = elf_section(data, ".nv_fatbin")
    return fatbin_archs(section) if section else set()


_ARCH_ITEM = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$", re.IGNORECASE)


def required_code(arch_list: str) -> List[GpuCode]:
    """What a ``TORCH_CUDA_ARCH_LIST`` promises: ``"8.0;9.0a+PTX"`` -> ``[sm_80, sm_90a,
    compute_90a]`` (machine code per entry, plus PTX for ``+PTX``)."""
    need = []
    for item in re.split(r"[;\s]+", arch_list.strip()):
        if not item:
            continue
        m = _ARCH_ITEM.match(item)
        if not m:
            raise ValueError("unknown entry %r in arch list %r" % (item, arch_list))
        sm = int(m.group(1)) * 10 + int(m.group(2))
        need.append(GpuCode("elf", sm, m.group(3).lower()))
        if m.group(4):
            need.append(GpuCode("ptx", sm, m.group(3).lower()))
    return need


def missing_archs(found: Set[GpuCode], arch_list: str) -> List[GpuCode]:
    """The entries of ``arch_list`` with no matching code in ``found``."""
    return [code for code in required_code(arch_list) if code not in found]
