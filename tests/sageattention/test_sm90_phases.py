"""bench/sm90_phases.py without a GPU: its patch applies to the kernel as it stands (and
fails loudly where an anchor is gone), and its summary attributes the printed counters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sage_helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "sm90_phases.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="no bench/ in this tree")


@pytest.fixture(scope="module")
def phases():
    return load_script(SCRIPT)


def copy_kernel(tmp_path: Path) -> Path:
    dst = tmp_path / "csrc" / "sm90"
    dst.mkdir(parents=True)
    shutil.copy(ROOT / "csrc" / "sm90" / "attn_sm90.cuh", dst)
    return dst / "attn_sm90.cuh"


def test_patch_instruments_every_phase(phases, tmp_path):
    src = copy_kernel(tmp_path)
    before = src.read_text()
    phases.patch(tmp_path)
    after = src.read_text()
    assert "struct Phases" not in before and "struct Phases" in after
    for i in range(6):  # every phase has its mark
        assert f"ph.mark({i});" in after, i
    assert after.count('printf("PH ') == 1 and "ph.acc[8] += 1;" in after


def test_patch_refuses_a_changed_kernel(phases, tmp_path):
    src = copy_kernel(tmp_path)
    src.write_text(src.read_text().replace("store(p, c, tid, st);", "store(p, c, tid, st); "))
    with pytest.raises(SystemExit, match="expected one occurrence"):
        phases.patch(tmp_path)


def test_summary_reports_the_second_launch_per_tile(phases, tmp_path, capsys):
    # Two warpgroups, 2 tiles and 10 key blocks each; the first launch and unmarked lines are ignored.
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([
        "PH 0 0 9 9 9 9 9 9 9 9 9",
        "SHAPE sm90_fp8 hd128 N=4096 full launch0",
        "PH 0 0 1 1 1 1 1 1 1 1 1",
        "END",
        "SHAPE sm90_fp8 hd128 N=4096 full launch1",
        "PH 0 0 100 200 300 1000 50 150 40 10 2",
        "PH 0 1 300 400 500 3000 150 250 60 10 2",
        "END",
        "PH 1 0 7 7 7 7 7 7 7 7 7",
    ]))
    out = phases.summarize(raw)
    assert list(out) == ["sm90_fp8 hd128 N=4096 full"]
    s = out["sm90_fp8 hd128 N=4096 full"]
    assert (s["warpgroups"], s["tiles"], s["key_blocks"]) == (2, 2, 10)
    assert s["cycles_per_tile"] == {"tile wait": 100, "quantize_q": 150, "first block": 200, "steps": 1000,
                                    "drain": 50, "store": 100}
    assert s["load_wait_cycles_per_tile"] == 25
    assert sum(s["share"].values()) == pytest.approx(1.0)
    assert "quantize_q" in capsys.readouterr().out
    phases.main(["summary", str(raw), "--json", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text()) == out
