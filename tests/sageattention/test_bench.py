"""bench/bench_attention.py without a GPU: arguments, FLOP counting, ratios, table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sage_helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_attention.py"
# The wheel's test image holds tests/ and pyproject.toml only.
pytestmark = pytest.mark.skipif(not BENCH.exists(), reason="no bench/ in this tree")


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH)


def test_defaults_are_the_issue_grid(bench):
    args = bench.parse_args([])
    assert (args.batch, args.heads, args.n, args.hd, args.causal, args.dtype) == (4, 32, [1024, 4096, 16384], [64, 128], "both", "fp16")
    args = bench.parse_args(["--n", "4096", "--hd", "128", "--causal", "true", "--dtype", "bf16", "--out", "x.json"])
    assert args.n == [4096] and args.hd == [128] and args.causal == "true" and args.out == Path("x.json")


def test_tflops_counts_causal_as_half(bench):
    full = bench.tflops(4, 32, 4096, 128, False, 1.0)
    assert full == pytest.approx(4 * 4 * 32 * 4096 * 4096 * 128 / 1e-3 / 1e12)
    assert bench.tflops(4, 32, 4096, 128, True, 1.0) == pytest.approx(full / 2)


def test_ratios_and_table(bench, capsys):
    row = {"B": 4, "H": 32, "N": 4096, "D": 128, "causal": False, "results": {
        "sageattn": {"ms": 1, "tflops": 600.0, "cos": 0.9999, "rel_l1": 0.01},
        "sage_fp16": {"ms": 1, "tflops": 500.0},
        "sdpa_flash": {"ms": 1, "tflops": 400.0},
        "sdpa_cudnn": {"error": "RuntimeError: no kernel"},
    }}
    bench.add_ratios(row)
    assert row["best_sage"] == "sageattn"
    assert row["ratios"] == {"sageattn/sdpa_flash": pytest.approx(1.5)}
    bench.print_row(row)
    out = capsys.readouterr().out
    assert "sageattn=600" in out and "sdpa_cudnn=n/a" in out and "1.50x" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_main_without_gpu_exits_2(bench, tmp_path):
    assert bench.main(["--out", str(tmp_path / "b.json")]) == 2


def test_report_table_rows_and_ratios(tmp_path, capsys):
    report = load_script(ROOT / "bench" / "report.py")
    data = {"env": {"gpu": "H100", "torch": "2.11", "commit": "abc", "dtype": "fp16"}, "rows": [
        {"N": 1024, "D": 64, "causal": True, "results": {"sageattn": {"tflops": 100.0}}},
        {"N": 4096, "D": 128, "causal": False, "results": {
            "sageattn": {"tflops": 450.0, "cos": 0.99994, "rel_l1": 0.0106}, "sdpa_flash": {"tflops": 300.0},
            "sdpa_cudnn": {"tflops": 600.0}, "sage_sm90_fp8": {"tflops": 400.0, "rel_l1": 0.037},
            "kernel_sm90_fp16": {"tflops": 480.0}}},
    ]}
    path = tmp_path / "bench.json"
    path.write_text(__import__("json").dumps(data))
    assert report.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "commit abc" in lines[0] and lines[1].startswith("| hd |")
    assert lines[3] == ("| 128 | 4k | no | 450 | 300 | 600 | 1.50x | 0.75x | 400 (L1 0.037) "
                        "| 0.99994 / 0.0106 | 480 / n/a |")  # hd128 sorts first
    assert lines[4] == "| 64 | 1k | yes | 100 | n/a | n/a | n/a | n/a | n/a | n/a | n/a / n/a |"


def test_error_budget_separates_the_roundings(tmp_path, capsys):
    """bench/error_budget.py: each rounding alone, then together, against fp64 attention."""
    budget = load_script(ROOT / "bench" / "error_budget.py")
    rows = {"+".join(r["roundings"]): r for r in budget.budget(512, 64, 2, "per_thread", seed=0)}
    assert len(rows) == 11  # INT8 Q K^T x e4m3 P x (V as given, e4m3, two e4m3 terms), less none
    l1 = {k: r["rel_l1"] for k, r in rows.items()}
    # INT8 Q K^T alone is the smallest error; e4m3's 3 mantissa bits on P and V are the
    # bulk of the fp8 path's error, and all three together are the largest.
    assert l1["qk_int8"] < 0.015 < l1["p_e4m3"] < l1["p_e4m3+v_e4m3"] < l1["qk_int8+p_e4m3+v_e4m3"]
    assert 0.03 < l1["p_e4m3+v_e4m3"] < 0.045 and all(r["cosine"] > 0.999 for r in rows.values())
    # V in two e4m3 terms leaves little of V's rounding: the path's error falls below 0.035.
    assert l1["v_e4m3_hi_lo"] < 0.2 * l1["v_e4m3"]
    assert l1["qk_int8+p_e4m3+v_e4m3_hi_lo"] < 0.032 < l1["qk_int8+p_e4m3+v_e4m3"]
    assert budget.main(["--n", "256", "--hd", "64", "--heads", "1", "--gran", "per_warp",
                        "--out", str(tmp_path / "eb.json")]) is None
    saved = json.loads((tmp_path / "eb.json").read_text())
    assert len(saved["rows"]) == 11 and "commit" in saved["meta"]
    assert "per_warp" in capsys.readouterr().out


def test_bench_quant_without_gpu_exits_2(tmp_path):
    bq = load_script(ROOT / "bench" / "bench_quant.py")
    args = bq.parse_args([])
    assert args.n == [1024, 2048, 4096, 8192] and args.hd == [128, 64] and args.gran == "per_thread"
    assert bq.main(["--out", str(tmp_path / "q.json")]) == 2
    assert not (tmp_path / "q.json").exists()
