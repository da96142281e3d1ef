"""`sagebuild build` / `sagebuild test` command lines (bake replaced by a fake where noted)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from buildtool import bake, commands, wheels
from buildtool.cli import app
from buildtool.matrix import load_project

from tests.buildtool.test_wheels import make_contents

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
# `docker info` of a local Linux daemon, as python-on-whales gives it (the fields sagebuild reads)
LINUX_DAEMON = SimpleNamespace(os_type="linux", operating_system="Debian GNU/Linux 12 (bookworm)", n_cpu=2,
                               mem_total=8 << 30)


@pytest.fixture
def proj(write_matrix, matrix_text) -> Path:
    return write_matrix(matrix_text)


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def default_target(matrix: Path) -> str:
    p = load_project(matrix)
    return p.groups["default"][0]


def command_line(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if "docker buildx bake" in line)
    inner = line.split("&& ", 1)[1].rstrip(")")
    return shlex.split(inner)


def test_dry_run_prints_plan_and_exact_command(proj):
    r = run("build", "--dry-run", "--matrix", str(proj))
    assert r.exit_code == 0, r.output
    t = default_target(proj)
    cmd = command_line(r.output)
    assert cmd[:7] == ["docker", "buildx", "bake", "--file", "docker-bake.hcl", "--progress", "plain"]
    assert cmd[-1] == t
    assert f"{t}.output=type=local,dest={proj.parent / 'builder' / '.staging' / t}" in cmd
    assert "job(s) x" in r.output and t in r.output


def test_dry_run_overrides(proj):
    r = run("build", "linux", "--dry-run", "--matrix", str(proj), "--base-image", "local/x:1",
            "--arch-list", "8.0;9.0a", "--jobs", "3x2", "--set", "*.args.PYTHON=/usr/bin/python3")
    assert r.exit_code == 0, r.output
    cmd = command_line(r.output)
    for s in ["*.args.BASE_IMAGE=local/x:1", "*.args.TORCH_CUDA_ARCH_LIST=8.0;9.0a", "*.args.MAX_JOBS=3",
              "*.args.NVCC_THREADS=2", "*.args.PYTHON=/usr/bin/python3"]:
        assert s in cmd
    linux = [t.name for t in load_project(proj).targets if t.platform == "linux"]
    assert cmd[-len(linux):] == linux
    assert not any(t.startswith("windows") for t in cmd)


def test_user_set_wins_over_sagebuild_defaults(proj):
    r = run("build", "--dry-run", "--matrix", str(proj), "--jobs", "2", "--set", "*.args.MAX_JOBS=7")
    cmd = command_line(r.output)
    assert "*.args.MAX_JOBS=7" in cmd and "*.args.MAX_JOBS=2" not in cmd


@pytest.mark.parametrize("args, words", [
    (["--arch-list", "7.0"], ["--arch-list", "7.0"]),
    (["--arch-list", "9.5"], ["unknown GPU architecture"]),
    (["--jobs", "lots"], ["--jobs", "invalid value"]),
    (["--set", "oops"], ["--set", "TARGET.KEY=VALUE"]),
    (["no-such-target"], ["unknown target or group", "no-such-target"]),
])
def test_bad_options_exit_2_with_one_message(proj, args, words):
    r = run("build", "--dry-run", "--matrix", str(proj), *args)
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in r.output
    assert not (proj.parent / "builder").exists()


def test_missing_docker_is_a_clear_error(proj, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    r = run("build", "--matrix", str(proj))
    assert r.exit_code == 1
    assert "`docker` command was not found" in r.output and "install Docker Engine" in r.output


# ---- build with a fake bake -----------------------------------------------------------------


def fake_bake(log: str, wheel_tag: str | None = "cp312-cp312-manylinux_2_28_x86_64"):
    def run_bake(bake_file, targets, sets, *, progress, console, log_path, stream=None):
        tracker = bake.Tracker(targets)
        lines = (DATA / log).read_text().splitlines()
        for line in lines:
            tracker.feed(line)
        ok = "ERROR" not in (DATA / log).read_text()
        if ok and wheel_tag:
            for t in targets:
                dest = Path(sets[f"{t}.output"].split("dest=", 1)[1])
                (dest / f"sageattention-0.1.0-{wheel_tag}.whl").write_bytes(
                    wheels.wheel_bytes(make_contents(tag=wheel_tag)))
                (dest / "build-info.json").write_text(json.dumps({
                    "python": "3.12.7", "arch_list": "8.0", "torch": "2.11.0+cu130",
                    "nvcc": ["Cuda compilation tools, release 13.0, V13.0.88"]}))
        tracker.finish(ok)
        return bake.BakeResult(ok, tracker, 1.0, 0 if ok else 1)

    return run_bake


def test_build_collects_and_a_failed_rebuild_keeps_it(proj, monkeypatch):
    monkeypatch.setattr(bake, "check_docker", lambda docker="docker": None)
    t = "linux-pytorch211-cu130-python312"
    monkeypatch.setattr(bake, "run_bake", fake_bake("bake-ok.log"))
    r = run("build", t, "--matrix", str(proj), "--progress", "plain")
    assert r.exit_code == 0, r.output
    builder = proj.parent / "builder"
    manifest = json.loads((builder / "manifest.json").read_text())
    wheel = builder / manifest["wheels"][t]["file"]
    assert wheel.name == "sageattention-0.1.0+cu130torch2.11-cp312-cp312-manylinux_2_28_x86_64.whl"
    before = wheel.read_bytes()
    assert not (builder / ".staging").exists()

    monkeypatch.setattr(bake, "run_bake", fake_bake("bake-fail-compile.log"))
    r = run("build", t, "--matrix", str(proj), "--progress", "plain")
    assert r.exit_code == 1
    assert "failed at step [build 4/6]" in r.output
    assert "error: #error deliberately broken" in r.output
    assert wheel.read_bytes() == before
    assert json.loads((builder / "manifest.json").read_text()) == manifest


def test_build_that_exports_no_wheel_fails(proj, monkeypatch):
    monkeypatch.setattr(bake, "check_docker", lambda docker="docker": None)
    monkeypatch.setattr(bake, "run_bake", fake_bake("bake-ok.log", wheel_tag=None))
    r = run("build", "linux-pytorch211-cu130-python312", "--matrix", str(proj))
    assert r.exit_code == 1
    assert "exported no wheel" in r.output


# ---- test -----------------------------------------------------------------------------------


def test_test_linux_works_as_typed(proj):
    r = run("test", "linux", "--dry-run", "--matrix", str(proj), "--base-image", "local/py:3")
    assert r.exit_code == 0, r.output
    cmd = command_line(r.output)
    tests = [t.test_name for t in load_project(proj).targets if t.platform == "linux" and t.testable]
    assert cmd[-len(tests):] == tests
    assert "*.args.TEST_BASE_IMAGE=local/py:3" in cmd
    for name in tests:
        target = name.removeprefix("test-")
        assert f"{name}.args.WHEEL_DIR=builder/.test/{target}" in cmd
        assert f"{name}.output=type=docker,name=sagebuild-test:{target}" in cmd


def test_test_without_a_built_wheel_says_what_to_run(proj):
    r = run("test", "linux-pytorch211-cu130-python312", "--matrix", str(proj))
    assert r.exit_code == 1
    assert "sagebuild build linux-pytorch211-cu130-python312" in r.output


def test_installed_check_source_runs_standalone(tmp_path):
    """The script run inside the test image is gpucode.py + installed.py concatenated: it must
    compile and, without the package installed, report that (not crash)."""
    import subprocess
    import sys

    src = commands.installed_check_source()
    compile(src, "<installed-check>", "exec")
    expect = {"package": "sageattention-not-installed", "version": "1", "torch": "2.11.0",
              "torch_cuda": "13.0", "torch_requirement": "torch==2.11.*", "arch_list": "8.0"}
    p = subprocess.run([sys.executable, "-c", src, "--json", json.dumps(expect)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout.split("SAGEBUILD-REPORT ", 1)[1])
    assert report["ok"] is False
    assert report["checks"][0]["check"] == "installed"


def test_installed_check_fails_a_wheel_whose_extension_does_not_load(tmp_path):
    """A package that imports but whose _C does not load (the failure the established package
    hides until "kernel is not available") fails the in-image check."""
    import subprocess
    import sys

    import torch

    from buildtool import wheels as W

    contents = make_contents(version="0.1.0+cu130torch2.11")
    contents["sageattention/_C.abi3.so"] = contents.pop("sageattention/_C.cpython-311-x86_64-linux-gnu.so")
    contents["sageattention/__init__.py"] = b"def extension_loaded():\n    return False\n"
    _, contents = W.retag(contents, version="0.1.0+cu130torch2.11", requires=["torch==2.11.*"])
    site = tmp_path / "site"
    for name, data in contents.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    (site / "sageattention-0.1.0+cu130torch2.11.dist-info" / "INSTALLER").write_text("pip\n")
    expect = {"package": "sageattention", "version": "0.1.0+cu130torch2.11",
              "torch": torch.__version__.split("+")[0], "torch_cuda": torch.version.cuda or "",
              "torch_requirement": "torch==2.11.*", "arch_list": "8.0"}
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    p = subprocess.run([sys.executable, "-c", commands.installed_check_source(), "--json", json.dumps(expect)],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout.split("SAGEBUILD-REPORT ", 1)[1])
    result = {c["check"]: c["ok"] for c in report["checks"]}
    assert result["version"] and result["requires torch"] and result["import"] and result["extension installed"]
    assert result["extension loads (extension_loaded())"] is False
    assert result["load_library _C.abi3.so"] is False
    assert result["read GPU code of _C.abi3.so"] is False
    assert result["machine code for arch list 8.0"] is False


def test_test_stops_at_a_missing_wheel_and_says_why(proj, monkeypatch):
    """A wheel listed in manifest.json but gone: the problem is named, nothing is staged for the
    test image and Docker is never asked."""
    t = "linux-pytorch211-cu130-python312"
    builder = proj.parent / "builder"
    builder.mkdir()
    (builder / "manifest.json").write_text(json.dumps(
        {"version": 1, "wheels": {t: {"file": "gone.whl", "sha256": "0", "version": "0.1.0"}}}))
    monkeypatch.setattr(bake, "check_docker", lambda docker="docker": pytest.fail("Docker was asked"))
    r = run("test", t, "--matrix", str(proj))
    assert r.exit_code == 1, r.output
    assert "gone.whl listed in manifest.json is missing" in r.output
    assert f"sagebuild build {t}" in r.output
    assert not (builder / ".test").exists()


@pytest.mark.parametrize("text", ["{bad", "[1, 2]", '{"wheels": []}'])
def test_a_corrupt_manifest_is_one_clear_error(proj, monkeypatch, text):
    builder = proj.parent / "builder"
    builder.mkdir()
    (builder / "manifest.json").write_text(text)
    monkeypatch.setattr(bake, "check_docker", lambda docker="docker": None)
    monkeypatch.setattr(bake, "daemon_info", lambda: LINUX_DAEMON)
    monkeypatch.setattr(bake, "run_bake", lambda *a, **k: pytest.fail("bake ran"))
    t = "linux-pytorch211-cu130-python312"
    for args in (["test", t], ["build", t]):
        r = run(*args, "--matrix", str(proj))
        assert r.exit_code == 1, r.output
        assert "manifest.json: unreadable manifest" in r.output and "Traceback" not in r.output
    assert run("test", t, "--dry-run", "--matrix", str(proj)).exit_code == 0


def test_windows_targets_need_a_windows_daemon(proj, monkeypatch):
    monkeypatch.setattr(bake, "check_docker", lambda docker="docker": None)
    monkeypatch.setattr(bake, "daemon_info", lambda: LINUX_DAEMON)
    monkeypatch.setattr(bake, "run_bake", lambda *a, **k: pytest.fail("bake ran"))
    windows = [t.name for t in load_project(proj).targets if t.platform == "windows"]
    r = run("build", "all", "--matrix", str(proj))
    assert r.exit_code == 2, r.output
    assert "this Docker daemon runs linux containers" in r.output
    assert all(name in r.output for name in windows)
    assert "sagebuild build linux" in r.output
    r = run("build", "windows", "--dry-run", "--jobs", "2", "--matrix", str(proj))
    assert r.exit_code == 0 and "note: this Docker daemon runs linux containers" in r.output


def test_daemon_mismatch_is_pure(proj):
    targets = load_project(proj).targets
    linux = [t for t in targets if t.platform == "linux"]
    assert commands.daemon_mismatch(linux, "linux") is None
    err = commands.daemon_mismatch(linux, "windows")
    assert err is not None and err.exit_code == 2 and "these targets need linux containers" in err.message
    assert "sagebuild build" not in err.allowed  # no target of the selection fits a Windows daemon


def test_sagebuild_runs_without_fcntl(proj):
    """Windows has no fcntl: importing the CLI must not need it (the manifest lock is filelock's)."""
    code = ("import sys; sys.modules['fcntl'] = None; from buildtool.cli import main; "
            f"sys.argv = ['sagebuild', 'matrix', '--matrix', {str(proj)!r}]; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "linux-pytorch211-cu130-python312" in p.stdout
