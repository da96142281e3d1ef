"""csrc/common/launch.cuh's rules, checked on the source: every kernel is launched by
launch_after (a programmatic dependent launch on sm_90), so every kernel must wait for the
previous one (ptx::wait_prior_grids) before it touches global memory. A kernel launched with
<<<>>>, or one that never waits, would race with its predecessor on Hopper GPUs only and only
sometimes: these checks catch both without a GPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in {".cu", ".cuh", ".cpp", ".h"})


def block_at(text: str, start: int) -> str:
    """The brace-balanced block that opens at the first '{' from `start`."""
    depth = 0
    for i in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[text.index("{", start):i + 1]
    raise ValueError("unbalanced braces")


def raw_launches(root: Path) -> list[str]:
    """file:line of every <<<>>> launch outside comments."""
    found = []
    for path in sources(root):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "<<<" in line.split("//")[0]:
                found.append(f"{path.relative_to(root)}:{n}")
    return found


def kernels(root: Path) -> dict[str, bool]:
    """Every __global__ function: whether it waits, itself or through the one run() it calls."""
    result = {}
    for path in sources(root):
        text = path.read_text()
        for m in re.finditer(r"__global__\s+void\s+(?:(?:__launch_bounds__|__maxnreg__)\([^)]*\)\s*)?(\w+)\s*\(", text):
            body = block_at(text, m.end())
            call = re.search(r"(\w+)<[^;]*>::run\(\w+\);", body)
            if "wait_prior_grids()" not in body and call and f"struct {call.group(1)}" in text:
                body = block_at(text, text.index("static void run(", text.index(f"struct {call.group(1)}")))
            result[f"{path.relative_to(root)}: {m.group(1)}"] = "wait_prior_grids()" in body
    return result


@pytest.mark.skipif(not CSRC.is_dir(), reason="no csrc/ in this tree")
def test_every_launch_goes_through_launch_after():
    assert raw_launches(CSRC) == []


@pytest.mark.skipif(not CSRC.is_dir(), reason="no csrc/ in this tree")
def test_every_kernel_waits_for_the_previous_one():
    found = kernels(CSRC)
    # the quantization passes (5), kv_stream.cuh's two and the attention kernels (2)
    assert len(found) == 9, sorted(found)
    assert [name for name, waits in found.items() if not waits] == []


def test_the_checks_catch_a_raw_launch_and_a_kernel_that_does_not_wait(tmp_path):
    (tmp_path / "k.cu").write_text(
        "template <class T> struct K { static void run(int* p) { *p = 0; } };\n"
        "__global__ void __launch_bounds__(256) plain(int* p) { *p = 1; }\n"
        "__global__ void through_run(int* p) { K<int>::run(p); }\n"
        "__global__ void waits(int* p) { ptx::wait_prior_grids(); *p = 1; }\n"
        "__global__ void __maxnreg__(32) capped(int* p) { *p = 1; }\n"
        "void go(int* p) {\n  // plain<<<1, 1>>>(p) in a comment\n  plain<<<1, 1>>>(p);\n}\n")
    assert raw_launches(tmp_path) == ["k.cu:8"]
    assert kernels(tmp_path) == {"k.cu: plain": False, "k.cu: through_run": False, "k.cu: waits": True,
                                 "k.cu: capped": False}
