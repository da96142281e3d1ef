"""bench/ncu_source.py on a small source page in ncu's CSV form: parsing, regions, the hot
loop and its opcode tables, and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sage_helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "ncu_source.py").exists(), reason="no bench/ in this tree")

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"Instructions Executed","stall_barrier","stall_selected","stall_wait","stall_wait (Not Issued)"')


def row(address, source, samples, executed, barrier=0, selected=0, wait=0):
    return f'"{address:#x}","{source}","{samples}","0","{executed}","{barrier}","{selected}","{wait}","{wait}"'


# A prologue (executed 10 times), a loop body (1000 times, the last instruction predicated),
# an epilogue (10 times).
PAGE = "\n".join([
    '"Kernel Name","void k(int)",',
    HEADER,
    row(0x00, "LDC R1, c[0x0][0x28]", 5, 10, barrier=4, selected=1),
    row(0x10, "S2R R0, SR_TID.X", 3, 10, selected=3),
    row(0x20, "FFMA.FTZ R2, R2, R3, R4", 40, 1000, selected=10, wait=30),
    row(0x30, "MUFU.EX2 R2, R2", 100, 1000, selected=20, wait=80),
    row(0x40, "@!P0 BRA 0x20", 7, 1000, selected=7),
    row(0x50, "EXIT", 45, 10, barrier=45),
])


@pytest.fixture(scope="module")
def ncu():
    return load_script(ROOT / "bench" / "ncu_source.py")


def test_parse_reads_every_instruction(ncu):
    ins = ncu.parse(PAGE)
    assert [i.address for i in ins] == [0x00, 0x10, 0x20, 0x30, 0x40, 0x50]
    assert [i.opcode for i in ins] == ["LDC", "S2R", "FFMA.FTZ", "MUFU.EX2", "BRA", "EXIT"]
    assert ins[3].samples == 100 and ins[3].executed == 1000
    assert ins[3].stalls == {"stall_barrier": 0, "stall_selected": 20, "stall_wait": 80}  # not the Not Issued copy


def test_regions_split_where_the_execution_count_changes(ncu):
    got = ncu.regions(ncu.parse(PAGE))
    assert [(r.start, r.end, r.instructions, r.executed, r.samples) for r in got] == [
        (0x00, 0x10, 2, 10, 8), (0x20, 0x40, 3, 1000, 147), (0x50, 0x50, 1, 10, 45)]
    assert got[1].top_stalls == [("stall_wait", 110), ("stall_selected", 37)]


def test_hot_loop_and_its_tables(ncu):
    ins = ncu.parse(PAGE)
    assert [i.opcode for i in ncu.hot_loop(ins)] == ["FFMA.FTZ", "MUFU.EX2", "BRA"]
    s = ncu.summary(ins, min_share=0.05)
    assert s["samples"] == 200
    assert [r["start"] for r in s["regions"]] == [0x20, 0x50]  # the 8-sample prologue is under 5%
    loop = s["hot_loop"]
    assert (loop["instructions"], loop["samples"]) == (3, 147)
    assert loop["by_opcode"] == [("MUFU.EX2", 100), ("FFMA.FTZ", 40), ("BRA", 7)]
    assert loop["stall_wait_by_opcode"] == [("MUFU.EX2", 80), ("FFMA.FTZ", 30)]
    text = ncu.render(s)
    assert "hot loop: 3 instructions, 147 samples (73.5%)" in text
    assert "MUFU.EX2 68.0%" in text


def test_parse_rejects_other_csv(ncu):
    with pytest.raises(ValueError, match="'Address' and 'Source'"):
        ncu.parse('"a","b"\n"1","2"')
    with pytest.raises(ValueError, match="Instructions Executed"):
        ncu.parse('"Address","Source","Warp Stall Sampling (All Samples)"\n"0x0","NOP","1"')


def test_cli(ncu, tmp_path, capsys):
    page = tmp_path / "sass.csv"
    page.write_text(PAGE)
    out = tmp_path / "summary.json"
    assert ncu.main([str(page), "--json", str(out)]) == 0
    assert "hot loop: 3 instructions" in capsys.readouterr().out
    assert json.loads(out.read_text())["hot_loop"]["samples"] == 147

    assert ncu.main([str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    assert ncu.main([str(bad)]) == 2
    assert f"{bad}: no header row" in capsys.readouterr().err


def test_cli_rejects_a_page_without_instructions(ncu, tmp_path, capsys):
    # ncu's page of a kernel it sampled nothing of: the header alone is no summary ("samples: 0").
    page = tmp_path / "header.csv"
    page.write_text('"Kernel Name","void k(int)",\n' + HEADER + "\n")
    assert ncu.main([str(page)]) == 2
    assert f"{page}: no instruction rows after the header" in capsys.readouterr().err
