"""The bench/ scripts at their edges, without a GPU: bad arguments and input files end in one
error line and exit 2 before anything is measured, and every output file is replaced in one
step (bench/bench_cli.py), so that a run killed mid-write leaves no truncated JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sage_helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
pytestmark = pytest.mark.skipif(not (BENCH / "bench_attention.py").exists(), reason="no bench/ in this tree")

NCU_PAGE = ('"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed"\n'
            '"0x0","FFMA R1, R2, R3, R4","5","10"\n')
PH_RAW = "SHAPE sm90_fp8 hd128 N=4096 full launch1\nPH 0 0 1 1 1 1 1 1 1 10 2 1 1\nEND\n"


def script(name: str):
    return load_script(BENCH / f"{name}.py")


def refused(main, argv, capsys) -> str:
    """The error ``main(argv)`` exits 2 with (argparse's usage line, then one line)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def attention_json(path: Path, b: int = 4, **env) -> Path:
    path.write_text(json.dumps({
        "env": {"gpu": "NVIDIA H100", "dtype": "fp16", "qk_quant_gran": "per_thread", "timing": "settled", **env},
        "rows": [{"B": b, "H": 32, "N": 1024, "D": 128, "causal": False, "results": {"sageattn": {"tflops": 400.0}}}]}))
    return path


def quant_json(path: Path) -> Path:
    path.write_text(json.dumps({"env": {}, "rows": [
        {"op": "quant_v_fp8", "B": 4, "H": 32, "N": 1024, "D": 128, "us": 1.0, "min_bytes_gbps": 2000.0}]}))
    return path



def test_tflops_counts_causal_as_half():
    tflops = script("bench_cli").tflops
    full = tflops(4, 32, 4096, 128, False, 1.0)
    assert full == pytest.approx(4 * 4 * 32 * 4096 * 4096 * 128 / 1e-3 / 1e12)
    assert tflops(4, 32, 4096, 128, True, 1.0) == pytest.approx(full / 2)

def clocks_json(path: Path) -> Path:
    path.write_text(json.dumps({"env": {}, "rows": [
        {"B": 4, "H": 32, "N": 4096, "D": 128, "causal": False, "path": "sageattn", "windows": [],
         "summary": {"steady_ms": 1.0}}]}))
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ bench_cli.py itself
def test_write_json_replaces_the_file_in_one_step(tmp_path, monkeypatch):
    cli = script("bench_cli")
    out = tmp_path / "out.json"
    cli.write_json(out, {"rows": [1]})
    assert json.loads(out.read_text()) == {"rows": [1]}
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() creates files, not mkstemp's 0600

    def killed(src, dst):  # the process dies once the new text is written, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.write_json(out, {"rows": [1, 2]})
    assert json.loads(out.read_text()) == {"rows": [1]}  # the previous file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # and no leftover beside it


def test_json_kind_tells_the_benchmarks_apart(tmp_path):
    cli = script("bench_cli")
    for write, kind in [(attention_json, "bench_attention.py"), (quant_json, "bench_quant.py"),
                        (clocks_json, "bench_clocks.py")]:
        assert cli.json_kind(json.loads(write(tmp_path / "x.json").read_text())) == kind
    for data in ({}, [1, 2], None, {"rows": []}, {"rows": "x"}, {"rows": [1]}, {"rows": [{"N": 1}]}):
        assert cli.json_kind(data) is None, data


# ------------------------------------------------------------------------ output files
def _fake_gpu(monkeypatch, ba):
    """bench_attention (as ``ba``) on no GPU: no check, no environment, tensors on the CPU."""
    monkeypatch.setattr(ba, "missing_gpu", lambda: None)
    monkeypatch.setattr(ba, "environment", lambda *args, **kwargs: {"gpu": "fake"})
    monkeypatch.setattr(ba, "DEVICE", "cpu")


def run_bench_attention(monkeypatch, out):
    bench = script("bench_attention")
    _fake_gpu(monkeypatch, bench)
    monkeypatch.setattr(bench, "run_shape", lambda args, b, h, n, d, causal, dtype: {
        "B": b, "H": h, "N": n, "D": d, "causal": causal, "results": {}})
    return bench.main(["--n", "64", "128", "--hd", "64", "--causal", "false", "--out", str(out)])


def run_bench_quant(monkeypatch, out):
    bq = script("bench_quant")
    _fake_gpu(monkeypatch, bq.ba)
    monkeypatch.setattr(bq.ba, "bench_ms", lambda fns, *args, **kwargs: {label: 1.0 for label in fns})
    return bq.main(["--n", "64", "--hd", "64", "--batch", "1", "--heads", "1", "--out", str(out)])


def run_bench_clocks(monkeypatch, out):
    clocks = script("bench_clocks")
    _fake_gpu(monkeypatch, clocks.ba)
    row = {"B": 1, "H": 1, "N": 64, "D": 64, "causal": False, "path": "sageattn",
           "windows": [{"t": 0.0, "wall": [0.0, 0.1], "calls": 1, "ms": 1.0}]}
    monkeypatch.setattr(clocks, "traced", lambda measure, trace_file, period_ms: ([row], []))
    return clocks.main(["--paths", "sageattn", "--out", str(out)])


def run_error_budget(monkeypatch, out):
    return script("error_budget").main(["--n", "32", "--hd", "16", "--heads", "1", "--gran", "per_warp",
                                        "--out", str(out)]) or 0


def run_compare(monkeypatch, out):
    base, new = attention_json(out.parent / "base.json"), attention_json(out.parent / "new.json")
    return script("compare").main([str(base), str(new), "--json", str(out)])


def run_sass_report(monkeypatch, out):
    sass = script("sass_report")
    monkeypatch.setattr(sass.shutil, "which", lambda name: "/usr/bin/" + name)  # nvcc and cuobjdump "found"
    registers = {"registers": 168, "spill_stores": 0, "spill_loads": 0}
    monkeypatch.setattr(sass, "report", lambda source, arch: {"k": {"registers": registers, "key_loop": None}})
    return sass.main([str(BENCH / "sass_report.py"), "--json", str(out)]) or 0


def run_ncu_source(monkeypatch, out):
    page = out.parent / "sass.csv"
    page.write_text(NCU_PAGE)
    return script("ncu_source").main([str(page), "--json", str(out)])


def run_sm90_phases(monkeypatch, out):
    raw = out.parent / "raw.txt"
    raw.write_text(PH_RAW)
    return script("sm90_phases").main(["summary", str(raw), "--json", str(out)])


WRITERS = [run_bench_attention, run_bench_quant, run_bench_clocks, run_error_budget, run_compare,
           run_sass_report, run_ncu_source, run_sm90_phases]


@pytest.mark.parametrize("run", WRITERS, ids=lambda f: f.__name__[4:])
def test_outputs_are_replaced_in_one_step(run, tmp_path, monkeypatch, capsys):
    # Each write goes to a file beside the output, renamed over it: never the output itself half written.
    renames, rename = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), rename(src, dst)))
    out = tmp_path / "out.json"
    assert run(monkeypatch, out) == 0
    assert renames and all(src.parent == tmp_path and dst == out for src, dst in renames)
    json.loads(out.read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_bench_attention_writes_after_every_row(tmp_path, monkeypatch, capsys):
    written, rename = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (written.append(json.loads(Path(src).read_text())),
                                                         rename(src, dst)))
    assert run_bench_attention(monkeypatch, tmp_path / "b.json") == 0
    assert [len(data["rows"]) for data in written] == [1, 2]  # a killed run keeps the shapes it finished


OUTPUT_OPTIONS = [  # (script, arguments before the output option, the option)
    ("bench_attention", [], "--out"), ("bench_quant", [], "--out"), ("bench_clocks", [], "--out"),
    ("error_budget", [], "--out"), ("compare", ["a.json", "b.json"], "--json"),
    ("sass_report", ["x.cu"], "--json"), ("ncu_source", ["x.csv"], "--json"),
    ("sm90_phases", ["summary", "raw.txt"], "--json"),
]


@pytest.mark.parametrize("name, before, option", OUTPUT_OPTIONS, ids=[o[0] for o in OUTPUT_OPTIONS])
def test_output_paths_are_checked_before_anything_runs(name, before, option, tmp_path, capsys):
    main = script(name).main
    err = refused(main, [*before, option, tmp_path], capsys)
    assert f"argument {option}: {tmp_path} is a directory" in err
    missing = tmp_path / "missing" / "x.json"
    err = refused(main, [*before, option, missing], capsys)
    assert f"argument {option}: {missing}: no such directory: {missing.parent}" in err
    assert not missing.parent.exists()  # not created


# ------------------------------------------------------------------ argument values
COUNTS = [
    ("bench_attention", "--n"), ("bench_attention", "--batch"), ("bench_attention", "--heads"),
    ("bench_attention", "--reps"), ("bench_attention", "--acc-heads"),
    ("bench_quant", "--n"), ("bench_quant", "--batch"), ("bench_quant", "--heads"), ("bench_quant", "--reps"),
    ("bench_clocks", "--n"), ("bench_clocks", "--batch"), ("bench_clocks", "--heads"), ("bench_clocks", "--trace-ms"),
    ("error_budget", "--n"), ("error_budget", "--hd"), ("error_budget", "--heads"),
]


@pytest.mark.parametrize("name, option", COUNTS, ids=[" ".join(c) for c in COUNTS])
def test_shapes_and_counts_must_be_positive(name, option, capsys):
    main = script(name).main
    for value in ("0", "-5", "x"):
        err = refused(main, [option, value], capsys)
        assert f"argument {option}: must be an integer >= 1, got '{value}'" in err


def test_warmup_may_be_zero(capsys):
    assert script("bench_attention").parse_args(["--warmup", "0"]).warmup == 0
    err = refused(script("bench_quant").main, ["--warmup", "-1"], capsys)
    assert "argument --warmup: must be an integer >= 0, got '-1'" in err


def test_bench_quant_min_ms_is_a_duration(capsys):
    assert "argument --min-ms: must be a number >= 0" in refused(script("bench_quant").main, ["--min-ms", "-1"], capsys)


@pytest.mark.parametrize("option", ["--seconds", "--window-ms"])
def test_bench_clocks_spans_must_be_positive(option, capsys):
    clocks = script("bench_clocks")
    assert f"argument {option}: must be a number > 0, got '0'" in refused(clocks.main, [option, "0"], capsys)
    assert clocks.parse_args(["--idle", "0"]).idle == 0  # no idle before a path: allowed


def test_bench_attention_paths_are_the_kernels(capsys):
    bench = script("bench_attention")
    assert bench.parse_args(["--paths", "fp8", "sm90_fp8"]).paths == ["fp8", "sm90_fp8"]
    assert bench.parse_args(["--paths"]).paths == []  # (all available, as without --paths)
    err = refused(bench.main, ["--paths", "fp16", "bogus"], capsys)
    assert "argument --paths: invalid choice: 'bogus' (choose from 'fp16', 'fp8', 'sm90_fp16', 'sm90_fp8')" in err
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    assert "of: fp16, fp8, sm90_fp16, sm90_fp8" in " ".join(capsys.readouterr().out.split())


def test_bench_clocks_paths_are_the_end_to_end_labels(capsys):
    clocks = script("bench_clocks")
    assert clocks.parse_args(["--paths", "sage_fp16", "sdpa_efficient"]).paths == ["sage_fp16", "sdpa_efficient"]
    err = refused(clocks.main, ["--paths", "sm90_fp8"], capsys)  # bench_attention's name, not a label
    assert "invalid choice: 'sm90_fp8' (choose from 'sageattn', 'sage_fp16', 'sage_fp8', 'sage_sm90_fp16'" in err
    with pytest.raises(SystemExit):
        clocks.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "of: sageattn, sage_fp16, sage_fp8, sage_sm90_fp16, sage_sm90_fp8, sdpa_flash, sdpa_cudnn, sdpa_efficient" \
        in help_text


# ----------------------------------------------------------------------- report.py
REPORT_INPUTS = [
    ("missing", None, "No such file or directory"),
    ("truncated", '{"rows": [', "not JSON (Expecting value, line 1)"),
    ("empty object", "{}", "not a bench_attention.py JSON (no 'rows' with N, D, causal and results)"),
    ("list", "[1, 2]", "not a bench_attention.py JSON"),
    ("null", "null", "not a bench_attention.py JSON"),
    ("quant", quant_json, "a bench_quant.py JSON, not a bench_attention.py one"),
    ("clocks", clocks_json, "a bench_clocks.py JSON, not a bench_attention.py one"),
    ("bad value", '{"rows": [{"N": "4k", "D": 128, "causal": false, "results": {}}]}',
     "a bench_attention.py JSON with a malformed value (TypeError: "),
]


@pytest.mark.parametrize("what, content, message", REPORT_INPUTS, ids=[r[0] for r in REPORT_INPUTS])
def test_report_rejects_what_bench_attention_did_not_write(what, content, message, tmp_path, capsys):
    path = tmp_path / "in.json"
    if callable(content):
        content(path)
    elif content is not None:
        path.write_text(content)
    assert f"error: {path}: {message}" in refused(script("report").main, [path], capsys)


def test_report_errors_are_one_line_not_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, str(BENCH / "report.py"), str(quant_json(tmp_path / "q.json"))],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == "", run.stderr
    assert run.stderr.splitlines()[-1] == f"report.py: error: {tmp_path / 'q.json'}: a bench_quant.py JSON, not a " \
                                          "bench_attention.py one"
    assert "Traceback" not in run.stderr


# ---------------------------------------------------------------------- compare.py
@pytest.mark.parametrize("field, new", [
    ("gpu", {"gpu": "NVIDIA H200"}), ("dtype", {"dtype": "bf16"}), ("qk_quant_gran", {"qk_quant_gran": "per_warp"}),
    ("B", {"b": 2}), ("timing", {"timing": "quick turns"}),
])
def test_compare_refuses_runs_that_measured_different_things(field, new, tmp_path, capsys):
    compare = script("compare")
    files = [attention_json(tmp_path / "base.json"), attention_json(tmp_path / "new.json", **new)]
    err = refused(compare.main, files, capsys)
    assert f"{files[1]} vs {files[0]}: the runs differ: {field}: base " in err and "--allow-mismatch" in err
    assert compare.main([*map(str, files), "--allow-mismatch"]) == 0
    assert f"(the runs differ: {field}: base " in capsys.readouterr().out


def test_compare_takes_two_wheels_of_one_run(tmp_path, capsys):
    # wheel_ab.sh: each side imports its own install and records its own commit.
    files = [attention_json(tmp_path / f"{side}.json", sageattention_file=f"/w/{side}/sageattention/__init__.py",
                            extension=f"/w/{side}/_C.so", commit=side, time=side) for side in ("base", "new")]
    assert script("compare").main([str(f) for f in files]) == 0
    assert "differ" not in capsys.readouterr().out


def test_compare_refuses_files_of_different_kinds(tmp_path, capsys):
    compare = script("compare")
    base, new = attention_json(tmp_path / "a.json"), quant_json(tmp_path / "q.json")
    err = refused(compare.main, [base, new, "--allow-mismatch"], capsys)
    assert f"{new} vs {base}: the kinds differ: base bench_attention.py, new bench_quant.py" in err
    clocks = clocks_json(tmp_path / "c.json")
    err = refused(compare.main, [clocks, new], capsys)
    assert f"{new} vs {clocks}: the kinds differ: base bench_clocks.py, new bench_quant.py" in err


# ------------------------------------------------------------------- sm90_phases.py
@pytest.mark.parametrize("raw, message", [
    ("SHAPE a launch1\nPH 0 0 1 2\nEND\n", "raw.txt:2: malformed PH line (want PH, block, warpgroup and 11 counts)"),
    ("SHAPE a launch1\nPH 0 0 1 1 1 1 1 1 1 1 1 1 x\nEND\n", "raw.txt:2: malformed PH line"),
    ("SHAPE a launch1\nPH 0 0 0 0 0 0 0 0 0 0 0 0 0\nEND\n", "raw.txt: a launch1: its warpgroups count no tiles"),
    ("no markers here\n", "raw.txt: no PH lines between a 'SHAPE ... launch1' and its END"),
    ("SHAPE a launch0\nPH 0 0 1 1 1 1 1 1 1 10 2 1 1\nEND\n", "raw.txt: no PH lines between"),
    (None, "raw.txt: No such file or directory"),
], ids=["short PH line", "PH count not a number", "no tiles", "no markers", "no launch1", "missing file"])
def test_sm90_phases_summary_rejects_what_run_did_not_print(raw, message, tmp_path, capsys):
    path = tmp_path / "raw.txt"
    if raw is not None:
        path.write_text(raw)
    assert message in refused(script("sm90_phases").main, ["summary", path], capsys)


def test_sm90_phases_needs_a_copy_of_the_repository(tmp_path, monkeypatch, capsys):
    phases = script("sm90_phases")
    patched = []
    monkeypatch.setattr(phases, "patch", patched.append)  # never instrument this checkout, whatever happens
    err = refused(phases.main, ["patch", tmp_path / "missing"], capsys)
    assert "argument tree: " in err and "missing: no csrc/sm90/attn_sm90.cuh there" in err
    for tree in (ROOT, ROOT / "bench" / ".."):
        assert "is this repository: patch a copy of it" in refused(phases.main, ["patch", tree], capsys)
    assert patched == []


def test_sm90_phases_run_needs_an_importable_build(tmp_path, monkeypatch, capsys):
    phases = script("sm90_phases")
    ran = []
    monkeypatch.setattr(phases, "run", lambda build, head_dims: ran.append((build, head_dims)))
    (tmp_path / "csrc" / "sm90").mkdir(parents=True)
    (tmp_path / "csrc" / "sm90" / "attn_sm90.cuh").write_text("")  # a tree, but nothing built or installed
    err = refused(phases.main, ["run", tmp_path], capsys)
    assert "argument build: " in err and "no sageattention package there" in err and "--target" in err
    (tmp_path / "sageattention").mkdir()
    (tmp_path / "sageattention" / "__init__.py").write_text("")  # what pip --target leaves
    assert phases.main(["run", str(tmp_path)]) == 0 and ran == [(tmp_path, None)]
    assert phases.main(["run", str(tmp_path), "--hd", "64"]) == 0 and ran[-1] == (tmp_path, [64])
    assert "argument --hd: invalid choice: 32" in refused(phases.main, ["run", tmp_path, "--hd", "32"], capsys)
