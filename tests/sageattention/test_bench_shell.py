"""The GPU-machine scripts' argument and environment checks (bench/args.sh), which must fail
before any install, build or GPU work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sage_helpers import stub_wheel

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"gpu_check": [], "wheel_check": ["a.whl"], "wheel_ab": ["a.whl", "b.whl"]}
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "args.sh").exists(),
                                reason="no bench/ in this tree (the wheel test image copies tests/ only)")


def run(script: str, args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    for name in args:
        (tmp_path / name).touch()
    return subprocess.run(["bash", str(ROOT / "bench" / f"{script}.sh"), *(str(tmp_path / a) for a in args)],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env})


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_usage(script):
    p = subprocess.run(["bash", str(ROOT / "bench" / f"{script}.sh"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and f"bash bench/{script}.sh" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_stage_typo_is_an_error(script, tmp_path):
    p = run(script, SCRIPTS[script], tmp_path, STAGES="tset")
    assert p.returncode == 2 and f"{script}: unknown stage 'tset' in STAGES (allowed: " in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["wheel_check", "wheel_ab"])
@pytest.mark.parametrize("reps", ["0", "abc", "-1"])
def test_reps_must_be_a_count(script, reps, tmp_path):
    p = run(script, SCRIPTS[script], tmp_path, REPS=reps)
    assert p.returncode == 2 and f"REPS must be a whole number >= 1, got '{reps}'" in p.stderr, p.stderr


@pytest.mark.parametrize("script", ["wheel_check", "wheel_ab"])
def test_step_timeout_must_be_a_count(script, tmp_path):
    p = run(script, SCRIPTS[script], tmp_path, STEP_TIMEOUT="10m")
    assert p.returncode == 2 and "STEP_TIMEOUT must be a whole number >= 1, got '10m'" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import torch; assert not torch.cuda.is_available()"]
                                   ).returncode != 0, reason="needs torch without a GPU")
def test_gpu_check_stops_without_a_gpu(tmp_path):
    p = run("gpu_check", [], tmp_path)
    assert p.returncode == 1 and "gpu_check: no CUDA GPU visible to torch" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()  # nothing built, nothing written


def test_wheel_ab_checks_every_candidate(tmp_path):
    (tmp_path / "a.whl").touch()
    (tmp_path / "b.whl").touch()
    p = subprocess.run(["bash", str(ROOT / "bench" / "wheel_ab.sh"), "a.whl", "b.whl", "c.whl"], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, "OUT": str(tmp_path / "out")})
    assert p.returncode == 2 and "wheel_ab: no such wheel: c.whl" in p.stderr, p.stderr


def test_a_wheel_without_sageattention_says_so(tmp_path):
    wheel = stub_wheel(tmp_path, "other")
    p = subprocess.run(["bash", str(ROOT / "bench" / "wheel_check.sh"), str(wheel)], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "STAGES": ""})
    assert p.returncode == 1, p.stderr
    assert f"wheel_check: {wheel.name} does not import as sageattention: No module named 'sageattention'" in p.stderr
    assert "Traceback" not in p.stderr

