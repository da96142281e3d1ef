"""setup.py without compiling: arch list, gencode flags, sources, environment switches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sage_helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
# The wheel's test image holds tests/ and pyproject.toml only: nothing to check there.
pytestmark = pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="no setup.py in this tree")


@pytest.fixture(scope="module")
def setup_py():
    return load_script(ROOT / "setup.py")


def test_parse_arch(setup_py):
    assert setup_py.parse_arch("8.0") == (8, 0, "", False)
    assert setup_py.parse_arch("9.0a") == (9, 0, "a", False)
    assert setup_py.parse_arch("12.0+PTX") == (12, 0, "", True)
    with pytest.raises(SystemExit, match="cannot parse"):
        setup_py.parse_arch("sm_90")


def test_default_arch_list_depends_on_cuda(setup_py, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    names = lambda archs: [f"{a[0]}.{a[1]}{a[2]}" for a in archs]  # noqa: E731
    assert names(setup_py.arch_list((12, 8))) == ["8.0", "8.6", "8.9", "9.0a", "12.0"]
    assert names(setup_py.arch_list((12, 6))) == ["8.0", "8.6", "8.9", "9.0a"]


def test_arch_list_from_environment(setup_py, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0 9.0a")
    assert [a[:3] for a in setup_py.arch_list((13, 0))] == [(8, 0, ""), (9, 0, "a")]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5;8.0")
    with pytest.raises(SystemExit, match="8.0 or newer"):
        setup_py.arch_list((13, 0))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "12.0")
    with pytest.raises(SystemExit, match="CUDA 12.8"):
        setup_py.arch_list((12, 6))


def test_gencode(setup_py):
    assert setup_py.gencode(9, 0, "a", False) == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert setup_py.gencode(8, 0, "", True) == ["-gencode=arch=compute_80,code=sm_80",
                                                 "-gencode=arch=compute_80,code=compute_80"]


def test_sources_split_sm90(setup_py):
    common, sm90 = setup_py.sources()
    if not common:
        pytest.skip("no csrc/ in this tree")
    assert all(not s.startswith("/") for s in common + sm90)  # setuptools wants relative paths
    assert all(s.startswith("csrc/sm90/") for s in sm90)
    assert not any(s.startswith("csrc/sm90/") for s in common)
    assert "csrc/ops.cpp" in common


def _run_setup(args, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "setup.py", *args], cwd=ROOT, env=e, capture_output=True, text=True)


def test_skip_cuda_needs_no_toolkit():
    p = _run_setup(["--version"], SAGEATTENTION_SKIP_CUDA="1", CUDA_HOME="/nonexistent")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "0.1.0"


def test_bad_cuda_home_is_a_clear_error():
    p = _run_setup(["--version"], CUDA_HOME="/nonexistent/cuda", SAGEATTENTION_SKIP_CUDA="")
    assert p.returncode != 0
    assert "CUDA_HOME" in p.stderr
