"""bench/sass_report.py: its parsers on fixed ptxas and cuobjdump text, and, where nvcc and
cuobjdump are at hand (CI installs cuobjdump from requirements-test.txt), the Hopper kernels'
key loops: no spills and no bigger than now. Compiling attn_sm90.cu takes about a minute."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sage_helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "sass_report.py").exists(), reason="no bench/ in this tree")

PTXAS = """\
ptxas info    : Compiling entry function '_ZN4sage4sm9016attn_sm90_kernelINS0_10Sm90TraitsILi128ELNS_2PVE1E6__halfEEEEvNS0_10Sm90ParamsE' for 'sm_90a'
ptxas info    : Function properties for _ZN4sage4sm9016attn_sm90_kernelINS0_10Sm90TraitsILi128ELNS_2PVE1E6__halfEEEEvNS0_10Sm90ParamsE
    16 bytes stack frame, 16 bytes spill stores, 24 bytes spill loads
ptxas info    : Used 168 registers, used 2 barriers, 16 bytes cumulative stack size
ptxas info    : Compiling entry function '_Z3addPf' for 'sm_90a'
ptxas info    : Function properties for _Z3addPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
"""

# An outer loop (0x0 .. 0x50) around the key loop (0x10 .. 0x40), then a loop without exp2.
SASS = """\
        Function : _Z1kv
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a0000017a02 */
        /*0010*/                   HGMMA.64x128x16.F32 R24, gdesc[UR4], R24 ; /* 0x0 */
        /*0020*/                   MUFU.EX2 R3, R3 ;                      /* 0x0 */
        /*0030*/              @!P1 LDL R5, [R1+0x4] ;                     /* 0x0 */
        /*0040*/               @P0 BRA 0x10 ;                             /* 0x0 */
        /*0050*/                   BRA 0x0 ;                              /* 0x0 */
        /*0060*/                   HMMA.16816.F32 R8, R4, R6, R8 ;        /* 0x0 */
        /*0070*/                   STL [R1], R8 ;                         /* 0x0 */
        /*0080*/               @P2 BRA 0x60 ;                             /* 0x0 */
        /*0090*/                   EXIT ;                                 /* 0x0 */
"""


@pytest.fixture(scope="module")
def sass_report():
    return load_script(ROOT / "bench" / "sass_report.py")


def test_parse_ptxas(sass_report):
    kernels = sass_report.parse_ptxas(PTXAS)
    assert kernels == {
        "_ZN4sage4sm9016attn_sm90_kernelINS0_10Sm90TraitsILi128ELNS_2PVE1E6__halfEEEEvNS0_10Sm90ParamsE":
            sass_report.Registers(168, 16, 24),
        "_Z3addPf": sass_report.Registers(8, 0, 0),
    }


def test_key_loop_is_the_smallest_loop_with_an_mma_and_exp2(sass_report):
    instructions = sass_report.parse_sass(SASS)["_Z1kv"]
    assert len(instructions) == 10 and instructions[1] == (0x10, "HGMMA.64x128x16.F32 R24, gdesc[UR4], R24")
    assert sass_report.key_loop(instructions) == sass_report.KeyLoop(instructions=4, local_loads=1, local_stores=0)
    assert sass_report.key_loop(instructions[5:]) is None  # an MMA loop, but no exp2 in it


def test_short_name(sass_report):
    name = "_ZN4sage11attn_kernelINS_10AttnTraitsILi64ELNS_2PVE0E13__nv_bfloat16EEEEvNS_10AttnParamsE"
    assert sass_report.short_name(name) == "sm80 hd64 fp16 __nv_bfloat16"
    assert sass_report.short_name(next(iter(sass_report.parse_ptxas(PTXAS)))) == "sm90 hd128 fp8 __half"
    persistent = "_ZN4sage4sm9016attn_sm90_kernelINS0_10Sm90TraitsILi64ELNS_2PVE0E6__halfEELb1EEEvNS0_10Sm90ParamsE"
    assert sass_report.short_name(persistent) == "sm90 hd64 fp16 persistent __half"
    assert sass_report.short_name(persistent.replace("Lb1", "Lb0")) == "sm90 hd64 fp16 __half"
    assert sass_report.short_name("_Z3addPf") == "_Z3addPf"


def test_cli_rejects_a_missing_source(sass_report, capsys):
    with pytest.raises(SystemExit) as e:
        sass_report.main(["csrc/no_such_file.cu"])
    assert e.value.code == 2 and "no such source file: csrc/no_such_file.cu" in capsys.readouterr().err


# Key-loop size (SASS instructions a warp per key block) and local loads + stores in it, as of
# the kernels measured in docs/kernels.md (H100; nvcc 13.0). A loop that grows by more than 5% or
# spills more fails here, before any GPU time is spent: update these with the change that moves
# them, and that change's measured speed.
HOPPER_KEY_LOOPS = {
    "sm90 hd128 fp16": (542, 0),
    # Persistent grids (the warpgroup index broadcast from lane 0: see attn_sm90.cuh).
    "sm90 hd128 fp16 persistent": (533, 0),
    # One n8 tile in 4 takes its exp2s from exp2_f16x2_poly (9 instructions a pair, MUFU 58 -> 50
    # a block), where one in 8 took them from an fp32 polynomial: +1.6% on H100
    # (bench/results/h100-c1a27bf-exp2-f16x2-ab.txt).
    "sm90 hd128 fp8": (542, 0),
    "sm90 hd128 fp8 persistent": (527, 0),
    "sm90 hd64 fp16": (500, 0),
    "sm90 hd64 fp16 persistent": (497, 0),
    # Two consumers, the row sums from the P·V MMA, paired exp2s, Q K^T a block ahead (kQKAhead).
    "sm90 hd64 fp8": (484, 0),
    "sm90 hd64 fp8 persistent": (480, 0),
}


@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc on PATH")
def test_hopper_key_loops(sass_report):
    if sass_report.find_cuobjdump() is None:
        pytest.skip("no cuobjdump (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    rows = sass_report.report(ROOT / "csrc" / "sm90" / "attn_sm90.cu", "90a")
    streams = {name: row for name, row in rows.items() if "kv_stream_kernel" in name}
    rows = {name: row for name, row in rows.items() if name.startswith("sm90 ")}
    assert len(rows) == 16, sorted(rows)  # hd 64/128 x fp16/fp8 P·V x one CTA a tile/persistent x fp16/bf16
    # kv_stream.cuh's warps (32 registers a thread, one in each scheduler quarter) share each SM
    # with the persistent e4m3 hd64 CTA, launched at 160 so that each quarter's file keeps 1024
    # registers free for one (hd 64 x fp16/bf16 x K group stride 1/8).
    assert len(streams) == 4 and all(row["registers"]["registers"] <= 32 for row in streams.values()), streams
    beside = [row["registers"]["registers"] for name, row in rows.items() if name.startswith("sm90 hd64 fp8 persistent")]
    assert beside and all(registers <= 160 for registers in beside), beside
    for name, row in rows.items():
        size, spills = HOPPER_KEY_LOOPS[name.rsplit(" ", 1)[0]]
        loop = row["key_loop"]
        assert loop is not None, name
        assert loop["instructions"] <= size * 1.05, (name, loop)
        assert loop["local_loads"] + loop["local_stores"] <= spills, (name, loop)
