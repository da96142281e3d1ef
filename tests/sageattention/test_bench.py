"""bench/bench_attention.py without a GPU: arguments, FLOP counting, ratios, table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_attention.py"
# The wheel's test image holds tests/ and pyproject.toml only.
pytestmark = pytest.mark.skipif(not BENCH.exists(), reason="no bench/ in this tree")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
