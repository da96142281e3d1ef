"""bench/ scripts without a GPU: bench_attention.py (arguments, FLOP counting, ratios, table),
call_timeline.py, report.py, error_budget.py, bench_quant.py, compare.py, sm90_phases.py, and wheel_ab.sh and
wheel_check.sh up to their first GPU step (on a stub wheel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sage_helpers import load_script, stub_wheel

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_attention.py"
PHASES = ROOT / "bench" / "sm90_phases.py"
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


def test_bench_ms_samples_the_paths_in_turns(bench):
    # A clock that slows down sample by sample: paths timed in turns see the same drift, so two
    # labels of one function measure the same median. Rounds take the paths in varying orders.
    order = []
    clock = iter(range(1000))

    def sample(fn, calls, settle):
        order.append(fn())
        return 1.0 + next(clock) / 100 + (0.5 if fn() == "slow" else 0.0)

    fns = {"a": lambda: "a", "b": lambda: "b", "slow": lambda: "slow"}
    ms = bench.bench_ms(fns, warmup=0, reps=8, min_ms=0.0, sample=sample, cost=lambda fn, warmup: bench.SAMPLE_MS)
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert len(rounds) == 8 and all(sorted(r) == ["a", "b", "slow"] for r in rounds)  # one sample each a round
    assert len({tuple(r) for r in rounds}) > 2  # in varying orders: a path's predecessor varies
    assert ms["a"] == pytest.approx(ms["b"], abs=0.03)
    assert ms["slow"] - ms["a"] == pytest.approx(0.5, abs=0.03)


def test_bench_ms_samples_until_each_path_has_min_ms(bench):
    counts = {}

    def sample(fn, calls, settle):
        counts[fn()] = counts.get(fn(), 0) + 1
        return {"fast": 1.0, "long": 50.0}[fn()]

    bench.bench_ms({"fast": lambda: "fast", "long": lambda: "long"}, warmup=0, reps=3, min_ms=100.0,
                   sample=sample, cost=lambda fn, warmup: bench.SAMPLE_MS / 5)
    assert counts == {"fast": 20, "long": 20}  # 100 ms of "fast" (5 calls of 1 ms a sample) takes 20 rounds


def test_bench_ms_settles_each_sample_for_settle_ms(bench):
    # A sample is ~SAMPLE_MS of calls, its untimed calls before it ~settle_ms, both counted in
    # calls of the path's own duration: a call longer than a sample still settles ~settle_ms.
    settles = []

    def sample(fn, calls, settle):
        settles.append((fn(), calls, settle))
        return 1.0

    call_ms = {"short": bench.SAMPLE_MS / 4, "long": 4 * bench.SAMPLE_MS}
    bench.bench_ms({"short": lambda: "short", "long": lambda: "long"}, warmup=0, reps=2, min_ms=0.0,
                   settle_ms=8 * bench.SAMPLE_MS, sample=sample, cost=lambda fn, warmup: call_ms[fn()])
    assert sorted(set(settles)) == [("long", 1, 2), ("short", 4, 32)]
    settles.clear()
    bench.bench_ms({"short": lambda: "short"}, warmup=0, reps=2, min_ms=0.0, sample=sample,
                   cost=lambda fn, warmup: call_ms[fn()])
    assert set(settles) == {("short", 4, 0)}


def test_samples_settle_by_default(bench):
    # The default times each path at its own power-limited clock (bench_ms).
    assert bench.parse_args([]).settle_ms > 0
    assert bench.parse_args(["--settle-ms", "0"]).settle_ms == 0


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
    data = {"env": {"gpu": "H100", "torch": "2.11", "commit": "abc", "dtype": "fp16",
                    "timing": "each sample after ~100 ms"}, "rows": [
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
    assert "commit abc" in lines[0] and "after ~100 ms" in lines[0] and lines[1].startswith("| hd |")
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
    assert args.n == [1024, 2048, 4096, 8192] and args.hd == [128, 64]
    assert not args.sample_missed and bq.parse_args(["--sample-missed"]).sample_missed
    assert bq.main(["--out", str(tmp_path / "q.json")]) == 2
    assert not (tmp_path / "q.json").exists()


def test_call_timeline_reports_the_last_call_from_its_first_kernel(tmp_path, capsys):
    timeline = load_script(ROOT / "bench" / "call_timeline.py")
    calls = [("stats", 0.0, 14.0), ("stream", 9.0, 580.0), ("attn", 15.0, 632.0),
             ("stats", 640.0, 650.0), ("stream", 645.0, 1200.0), ("attn", 651.0, 1270.0)]
    last, previous = timeline.last_call(list(reversed(calls)), 2)  # any order: sorted by start
    assert last == [{"name": "stats", "start_us": 0.0, "end_us": 10.0},
                    {"name": "stream", "start_us": 5.0, "end_us": 560.0},
                    {"name": "attn", "start_us": 11.0, "end_us": 630.0}]
    assert previous == [{"name": "stats", "start_us": -640.0, "end_us": -626.0},
                        {"name": "stream", "start_us": -631.0, "end_us": -60.0},
                        {"name": "attn", "start_us": -625.0, "end_us": -8.0}]
    assert timeline.last_call(calls[3:], 1)[1] == []
    with pytest.raises(ValueError, match="5 kernels do not split into 2 calls"):
        timeline.last_call(calls[:5], 2)
    with pytest.raises(ValueError, match="launched different kernels"):
        timeline.last_call(calls[:3] + [("other", 640.0, 650.0)] + calls[4:], 2)
    args = timeline.parse_args(["--n", "4096", "--hd", "64", "--causal", "true"])
    assert args.paths == ["sm90_fp8"] and args.calls == 3 and args.n == [4096]
    with pytest.raises(SystemExit):
        timeline.parse_args(["--paths", "no_such_path"])
    assert "invalid choice" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert timeline.main(["--out", str(tmp_path / "t.json")]) == 2
        assert not (tmp_path / "t.json").exists()


def test_duration_options_refuse_negative_values(bench, capsys):
    assert bench.parse_args(["--settle-ms", "100"]).settle_ms == 100.0
    for option in ("--settle-ms", "--min-ms"):
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args([option, "-5"])
        assert exit_info.value.code == 2 and "must be a number >= 0" in capsys.readouterr().err


def test_end_to_end_paths_are_labelled_as_the_json_reports_them(bench):
    paths = bench.end_to_end_paths(False, "per_thread", [])
    assert list(paths) == ["sageattn", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient"]
    assert list(bench.end_to_end_paths(True, "per_thread", [], ())) == ["sageattn"]
    assert bench.CAUSAL["both"] == (False, True) and bench.parse_args(["--causal", "true"]).causal == "true"


def test_timing_in_turns_names_the_settle(bench):
    assert "untimed" not in bench.timing_in_turns(10, 3)
    assert "~100 ms of untimed calls" in bench.timing_in_turns(10, 3, settle_ms=100.0)


def test_bench_clocks_reads_the_trace_and_summarizes_windows(tmp_path):
    clocks = load_script(ROOT / "bench" / "bench_clocks.py")
    trace = clocks.parse_trace([
        "timestamp, clocks.current.sm [MHz], power.draw [W]",  # a header, if asked for: skipped
        "2026/12/06 22:00:00.000, 1980, 350.5",
        "2026/12/06 22:00:00.020, 1980, 690.0",
        "2026/12/06 22:00:01.000, 1755, 700.0",
        "2026/12/06 22:00:01.02",  # cut off when nvidia-smi was stopped
    ])
    assert [(round(t - trace[0][0], 3), mhz, w) for t, mhz, w in trace] == [
        (0.0, 1980.0, 350.5), (0.02, 1980.0, 690.0), (1.0, 1755.0, 700.0)]
    t0 = trace[0][0]
    assert clocks.window_clock(trace, t0, t0 + 0.05) == (1980.0, 520.25)
    assert clocks.window_clock(trace, t0 + 2, t0 + 3) == (None, None)
    windows = [{"t": 0.05 * i, "ms": 1.0 if i == 0 else 1.1, "mhz": 1980.0 if i == 0 else 1755.0, "watts": 700.0}
               for i in range(60)]
    windows[0]["watts"] = 350.0  # from idle
    windows[-1]["mhz"] = None  # a window the trace missed
    s = clocks.summarize(windows)
    assert s["first_ms"] == 1.0 and s["steady_ms"] == 1.1 and s["slowdown"] == pytest.approx(1.1)
    assert s["first_mhz"] == 1980.0 and s["steady_mhz"] == 1755.0
    assert s["first_watts"] == 350.0 and s["steady_watts"] == 700.0


def test_bench_clocks_traces_while_it_measures(tmp_path, monkeypatch):
    clocks = load_script(ROOT / "bench" / "bench_clocks.py")
    events = []

    class FakeSmi:  # writes two samples, as nvidia-smi -lms would while the paths run
        def __init__(self, cmd, stdout, stderr):
            events.append("start")
            stdout.write("2026/12/06 22:00:00.000, 1980, 300\n2026/12/06 22:00:00.020, 1755, 700\n")

        def terminate(self):
            events.append("stop")

        def wait(self):
            pass

    def measure():
        events.append("measure")
        return ["row"]

    monkeypatch.setattr(clocks.subprocess, "Popen", FakeSmi)
    rows, trace = clocks.traced(measure, tmp_path / "t.csv", 20)
    assert events == ["start", "measure", "stop"] and rows == ["row"] and [p[1] for p in trace] == [1980.0, 1755.0]

    def failing():
        raise RuntimeError("out of memory")

    events.clear()
    with pytest.raises(RuntimeError):
        clocks.traced(failing, tmp_path / "t.csv", 20)
    assert events == ["start", "stop"]  # the trace is stopped whatever happens

    def no_smi(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(clocks.subprocess, "Popen", no_smi)
    assert clocks.traced(lambda: ["row"], tmp_path / "t.csv", 20) == (["row"], [])


def test_bench_clocks_without_gpu_exits_2(tmp_path):
    clocks = load_script(ROOT / "bench" / "bench_clocks.py")
    args = clocks.parse_args(["--paths", "sdpa_cudnn", "sage_sm90_fp8", "--seconds", "2"])
    assert args.paths == ["sdpa_cudnn", "sage_sm90_fp8"] and args.seconds == 2.0 and args.n == [4096]
    assert clocks.main(["--out", str(tmp_path / "c.json")]) == 2
    assert not (tmp_path / "c.json").exists()


def _bench_json(path, rows):
    path.write_text(json.dumps({"env": {"gpu": "H200"}, "rows": [
        {"N": n, "D": d, "causal": c, "results": res} for (n, d, c), res in rows.items()]}))
    return path


def test_compare_ratios_and_summary(tmp_path, capsys):
    compare = load_script(ROOT / "bench" / "compare.py")
    shape, causal_shape, hd64 = (4096, 128, False), (4096, 128, True), (4096, 64, False)
    files = []
    for rep, (fp16_new, fp8_new) in enumerate([(110.0, 95.0), (99.8, 101.0)]):
        files.append(_bench_json(tmp_path / f"b{rep}.json", {
            shape: {"kernel_sm90_fp16": {"tflops": 100.0}, "kernel_sm90_fp8": {"tflops": 100.0, "rel_l1": 0.038},
                    "sdpa_cudnn": {"error": "RuntimeError"}},
            causal_shape: {"kernel_sm90_fp16": {"tflops": 50.0}},
            hd64: {"kernel_sm90_fp16": {"tflops": 80.0}}}))
        files.append(_bench_json(tmp_path / f"n{rep}.json", {
            shape: {"kernel_sm90_fp16": {"tflops": fp16_new}, "kernel_sm90_fp8": {"tflops": fp8_new, "rel_l1": 0.037}},
            causal_shape: {"kernel_sm90_fp16": {"tflops": 50.0}}}))  # hd64 not timed in new: skipped
    out_json = tmp_path / "cmp.json"
    assert compare.main([str(f) for f in files] + ["--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "N= 4096 hd128 full   kernel_sm90_fp16      100 ->    110  1.100x" in out
    assert "l1 0.0380->0.0370" in out and "sdpa_cudnn" not in out and "hd 64" not in out
    summary = {(s["label"], s["d"]): s for s in json.loads(out_json.read_text())["summary"]}
    fp16 = summary[("kernel_sm90_fp16", 128)]  # ratios 1.1, 1.0, 0.998, 1.0
    assert fp16["count"] == 4 and fp16["steady"] == 3 and fp16["low"] == pytest.approx(0.998)
    assert fp16["geomean"] == pytest.approx((1.1 * 0.998) ** 0.25)
    assert summary[("kernel_sm90_fp8", 128)]["steady"] == 1
    assert "kernel_sm90_fp16   hd128   4 ratios  geomean 1.024  range 0.998-1.100  3 of 4 >= 0.999" in out
    assert compare.main([str(files[0]), str(files[1]), "--labels", "kernel_sm90_fp8"]) == 0
    assert "kernel_sm90_fp16" not in capsys.readouterr().out


def test_compare_quant_files_by_bandwidth(tmp_path, capsys):
    compare = load_script(ROOT / "bench" / "compare.py")
    files = []
    for name, gbps in [("base", 2000.0), ("new", 2500.0)]:
        rows = [{"op": "quant_v_fp8", "B": 4, "H": 32, "N": 4096, "D": 128, "us": 1e3 / gbps, "min_bytes_gbps": gbps},
                {"op": "quant_int8_smooth", "B": 4, "H": 32, "N": 4096, "D": 128, "us": 1.0, "min_bytes_gbps": 1000.0}]
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"env": {}, "rows": rows}))
    assert compare.main([str(f) for f in files]) == 0
    out = capsys.readouterr().out
    assert "N= 4096 hd128 quant_v_fp8          2000 ->   2500  1.250x" in out
    assert "N= 4096 hd128 quant_int8_smooth    1000 ->   1000  1.000x" in out


def test_compare_clocks_files_by_their_steady_time(tmp_path, capsys):
    compare = load_script(ROOT / "bench" / "compare.py")
    files = []
    for name, ms in [("base", 0.6036), ("new", 0.6020)]:
        rows = [{"path": "sage_sm90_fp8", "B": 4, "H": 32, "N": 4096, "D": 64, "causal": True, "windows": [],
                 "summary": {"first_ms": 0.61, "steady_ms": ms}}]
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"env": {}, "rows": rows}))
    assert compare.main([str(f) for f in files]) == 0
    # 4 B H N^2 D / 2 flops: 274.9 GFLOP a call
    assert "N= 4096 hd 64 causal sage_sm90_fp8         455 ->    457  1.003x" in capsys.readouterr().out
    rows[0]["summary"] = {}  # a run whose windows gave no steady time
    files[1].write_text(json.dumps({"env": {}, "rows": rows}))
    with pytest.raises(SystemExit) as e:
        compare.main([str(f) for f in files])
    assert e.value.code == 2 and "new.json: a bench_clocks.py JSON file with a malformed row" in capsys.readouterr().err


@pytest.mark.parametrize("script, usage, count", [("wheel_ab", "BASE.whl NEW.whl [NEW2.whl ...]", 2),
                                                  ("wheel_check", "WHEEL.whl", 1)])
def test_wheel_scripts_reject_bad_arguments(tmp_path, script, usage, count):
    missing = [str(tmp_path / f"w{i}.whl") for i in range(count)]
    usage, absent = f"usage: bash bench/{script}.sh {usage}", f"{script}: no such wheel: "
    for args, message in [([], usage), (missing[:-1], usage), (missing, absent),
                          ([*missing, "extra.whl"], absent if script == "wheel_ab" else usage)]:
        run = subprocess.run(["bash", str(ROOT / "bench" / f"{script}.sh"), *args], capture_output=True, text=True,
                             env={**os.environ, "OUT": str(tmp_path / "out")})
        assert run.returncode == 2 and message in run.stderr, run.stderr


def _stub_wheel(folder: Path) -> Path:
    """A pure-Python sageattention wheel with no kernels: enough to install and import."""
    return stub_wheel(folder, init="__version__ = '0.0.0'\n\ndef extension_loaded():\n    return False\n")


def test_wheel_check_runs_against_the_installed_wheel_and_reports_failed_stages(tmp_path):
    # The stub imports from its own install folder, not from the checkout's sageattention/;
    # bench_attention cannot run on it (no kernels), and that stage's failure is the exit code.
    script, wheel = ROOT / "bench" / "wheel_check.sh", _stub_wheel(tmp_path)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(script), str(wheel)], capture_output=True, text=True,
                         env={**env, "STAGES": ""})
    assert run.returncode == 0, run.stderr
    assert "/wheel/sageattention/__init__.py extension_loaded False" in run.stdout
    run = subprocess.run(["bash", str(script), str(wheel)], capture_output=True, text=True,
                         env={**env, "STAGES": "attention", "ATTN_ARGS": "--n 1024"})
    assert run.returncode == 1 and "bench_attention 1: rc=1" in run.stdout, run.stdout + run.stderr
    assert (tmp_path / "out" / "attention-1.log").exists()


def test_wheel_ab_installs_both_wheels_before_it_benchmarks(tmp_path):
    # Both stubs install and import from their own folders; the first benchmark then fails on
    # the base side (no kernels) and the script says which.
    (tmp_path / "new").mkdir()
    base, new = _stub_wheel(tmp_path), _stub_wheel(tmp_path / "new")
    run = subprocess.run(["bash", str(ROOT / "bench" / "wheel_ab.sh"), str(base), str(new)], capture_output=True,
                         text=True, env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
                                         "STAGES": "quant", "REPS": "1"})
    assert run.returncode == 1 and "bench_quant.py failed for base, repetition 1" in run.stderr, run.stderr
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["pip-base.log", "pip-new.log", "quant-base-1.log"]


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python on a GPU machine: benchmark runs and compare.py are logged, not run;
# with FAKE_HANG set, the GPU tests hang (a kernel that never ends).
case "$1" in
  -m) [ "$2" = pytest ] && [ -n "${FAKE_HANG-}" ] && exec sleep 60
    exec "$REAL_PYTHON" "$@" ;;
  bench/bench_attention.py | bench/bench_quant.py | bench/bench_clocks.py)
    echo "bench $1 side=$(basename "$PYTHONPATH") commit=$SAGE_COMMIT" >> "$FAKE_LOG"
    while [ $# -gt 0 ]; do [ "$1" = --out ] && : > "$2"; shift; done ;;
  */bench/compare.py) shift; echo "compare $*" >> "$FAKE_LOG"; echo "== summary over all pairs" ;;
  *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


def wheel_ab_with(fake_python: str, wheels: int, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """wheel_ab.sh over `wheels` stub wheels, with `fake_python` standing in for python (its calls
    logged to tmp_path/calls.log, the real one at $REAL_PYTHON); output in tmp_path/out."""
    paths = []
    for i in range(wheels):
        (tmp_path / str(i)).mkdir()
        paths.append(str(stub_wheel(tmp_path / str(i), version=f"0.0.{i}")))
    fake = tmp_path / "python"
    fake.write_text(fake_python)
    fake.chmod(0o755)
    return subprocess.run(["bash", str(ROOT / "bench" / "wheel_ab.sh"), *paths], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(fake),
                                           "REAL_PYTHON": sys.executable, "FAKE_LOG": str(tmp_path / "calls.log"),
                                           **env})


def test_wheel_ab_interleaves_every_side_and_compares_each_candidate_with_base(tmp_path):
    p = wheel_ab_with(FAKE_PYTHON, 3, tmp_path, STAGES="attention", REPS="2", NEW2_COMMIT="c2")
    out, log = tmp_path / "out", tmp_path / "calls.log"
    assert p.returncode == 0, p.stderr
    runs = [f"bench bench/bench_attention.py side={s} commit={c}"
            for s, c in [("base", "base"), ("new", "new"), ("new2", "c2")]]
    pairs = lambda side: " ".join(f"{out}/attention-{s}-{r}.json" for r in (1, 2) for s in ("base", side))
    assert log.read_text().splitlines() == runs * 2 + [
        f"compare {pairs('new')} --json {out}/attention-ab.json",
        f"compare {pairs('new2')} --json {out}/attention-ab-new2.json"]
    assert "== new against base" in p.stdout and "== new2 against base" in p.stdout


def test_wheel_ab_clocks_stage_times_each_side_alone_and_compares(tmp_path):
    p = wheel_ab_with(FAKE_PYTHON, 2, tmp_path, STAGES="clocks", REPS="2", CLOCKS_ARGS="--n 4096 --hd 64")
    out, log = tmp_path / "out", tmp_path / "calls.log"
    assert p.returncode == 0, p.stderr
    pairs = " ".join(f"{out}/clocks-{s}-{r}.json" for r in (1, 2) for s in ("base", "new"))
    assert log.read_text().splitlines() == [f"bench bench/bench_clocks.py side={s} commit={s}"
                                            for s in ("base", "new")] * 2 + [f"compare {pairs} --json {out}/clocks-ab.json"]


def test_wheel_ab_ends_a_hanging_step_and_goes_on(tmp_path):
    p = wheel_ab_with(FAKE_PYTHON, 2, tmp_path, STAGES="test attention", REPS="1", STEP_TIMEOUT="2", FAKE_HANG="1")
    assert p.returncode == 124 and "gpu tests (new): timed out after 2 s" in p.stdout, p.stdout + p.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[:2] == [f"bench bench/bench_attention.py side={s} commit={s}" for s in ("base", "new")]
    assert len(calls) == 3 and calls[2].startswith("compare "), calls


def test_compare_rejects_bad_input(tmp_path, capsys):
    compare = load_script(ROOT / "bench" / "compare.py")
    good = _bench_json(tmp_path / "a.json", {(1024, 64, False): {"sageattn": {"tflops": 1.0}}})
    other = _bench_json(tmp_path / "b.json", {(2048, 64, False): {"sageattn": {"tflops": 1.0}}})
    (tmp_path / "bad.json").write_text('{"rows": [{"N": 1}]}')
    (tmp_path / "broken.json").write_text("{")
    for args, message in [([good], "files come in pairs (base, new), got 1"),
                          ([good, tmp_path / "missing.json"], "missing.json: No such file or directory"),
                          ([good, tmp_path / "bad.json"], "bad.json: not a bench_attention.py, bench_quant.py or bench_clocks.py JSON file"),
                          ([good, tmp_path / "broken.json"], "broken.json: not JSON")]:
        with pytest.raises(SystemExit) as e:
            compare.main([str(a) for a in args])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert compare.main([str(good), str(other)]) == 1  # nothing timed in both
    assert "(no shape and path timed in both)" in capsys.readouterr().out


# ----------------------------------------------------------- sm90_phases.py
def _copy_kernel(tmp_path: Path) -> Path:
    dst = tmp_path / "csrc" / "sm90"
    dst.mkdir(parents=True)
    shutil.copy(ROOT / "csrc" / "sm90" / "attn_sm90.cuh", dst)
    return dst / "attn_sm90.cuh"


def test_sm90_phases_patch_instruments_every_phase(tmp_path):
    phases = load_script(PHASES)
    src = _copy_kernel(tmp_path)
    before = src.read_text()
    phases.patch(tmp_path)
    after = src.read_text()
    assert "struct Phases" not in before and "struct Phases" in after
    for i in range(6):  # every phase has its mark
        assert f"ph.mark({i});" in after, i
    assert after.count('printf("PH ') == 1 and "ph.acc[8] += 1;" in after and "ph.acc[9] +=" in after
    assert "if (ph.acc[8] == 0) ph.acc[10] +=" in after  # the first tile's wait: before its tile is counted


def test_sm90_phases_patch_refuses_a_changed_kernel(tmp_path):
    phases = load_script(PHASES)
    src = _copy_kernel(tmp_path)
    text = src.read_text()
    anchor = phases.EDITS[-1][0]  # one of the source lines the patch instruments, altered
    changed = text.replace(anchor, anchor.replace("(", "( ", 1))
    assert changed != text
    src.write_text(changed)
    with pytest.raises(SystemExit, match="expected one occurrence"):
        phases.patch(tmp_path)


def test_sm90_phases_summary_reports_the_second_launch_per_tile(tmp_path, capsys):
    phases = load_script(PHASES)
    # Two warpgroups, 2 tiles and 10 key blocks each; the first launch and unmarked lines are ignored.
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([
        "PH 0 0 9 9 9 9 9 9 9 9 9 9 9",
        "SHAPE sm90_fp8 hd128 N=4096 full launch0",
        "PH 0 0 1 1 1 1 1 1 1 1 1 1 1",
        "END",
        "SHAPE sm90_fp8 hd128 N=4096 full launch1",
        "PH 0 0 100 200 300 1000 50 150 40 10 2 30 24",
        "PH 0 1 300 400 500 3000 150 250 60 10 2 10 6",
        "END",
        "PH 1 0 7 7 7 7 7 7 7 7 7 7 7",
    ]))
    out = phases.summarize(raw)
    assert list(out) == ["sm90_fp8 hd128 N=4096 full"]
    s = out["sm90_fp8 hd128 N=4096 full"]
    assert (s["warpgroups"], s["tiles"], s["key_blocks"]) == (2, 2, 10)
    assert s["cycles_per_tile"] == {"tile wait": 100, "quantize_q": 150, "first block": 200, "steps": 1000,
                                    "drain": 50, "store": 100}
    assert s["load_wait_cycles_per_tile"] == 25 and s["first_load_wait_cycles_per_tile"] == 10
    assert s["first_tile_load_wait_cycles"] == 15
    assert sum(s["share"].values()) == pytest.approx(1.0)
    assert "quantize_q" in capsys.readouterr().out
    phases.main(["summary", str(raw), "--json", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text()) == out
