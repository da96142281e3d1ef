"""End to end: assertions on a wheel that a real `sagebuild build` + `sagebuild test` left in
./builder/. `.ci/run` runs the build and sets SAGEBUILD_E2E_TARGET (and, for the expected
arch list, SAGEBUILD_E2E_ARCH_LIST) before the test suite; without it these tests skip.
With it they must find the wheel: a missing or wrong wheel fails them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from buildtool import wheels
from buildtool.matrix import load_project

REPO = Path(__file__).resolve().parents[2]
BUILDER = Path(os.environ.get("SAGEBUILD_E2E_BUILDER", REPO / "builder"))
TARGET = os.environ.get("SAGEBUILD_E2E_TARGET")

pytestmark = pytest.mark.skipif(not TARGET, reason="set SAGEBUILD_E2E_TARGET after a real `sagebuild build` (.ci/run does)")


@pytest.fixture(scope="module")
def target():
    return load_project(REPO / "matrix.yaml").target(TARGET)


@pytest.fixture(scope="module")
def entry(target):
    manifest = json.loads((BUILDER / "manifest.json").read_text())
    assert TARGET in manifest["wheels"], f"manifest.json has no entry for {TARGET}: {sorted(manifest['wheels'])}"
    return manifest["wheels"][TARGET]


def test_manifest_entry_is_complete(entry, target):
    for key in ("target", "file", "sha256", "size", "python", "torch", "cuda", "arch_list", "build_seconds", "nvcc"):
        assert entry.get(key) not in (None, ""), f"manifest entry lacks {key}: {entry}"
    path = BUILDER / entry["file"]
    assert path.is_file()
    assert wheels.sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["size"]
    # the CUDA in the target's name is the compiler that built it
    assert f"release {Version(target.cuda).major}.{Version(target.cuda).minor}" in entry["nvcc"]
    assert entry["torch"].split("+")[0] == target.torch
    want_arch = os.environ.get("SAGEBUILD_E2E_ARCH_LIST")
    if want_arch:
        assert entry["arch_list"] == want_arch


def test_wheel_name_metadata_record_and_gpu_code(entry, target):
    path = BUILDER / entry["file"]
    name, version, _, tags = parse_wheel_filename(path.name)
    assert name == "sageattention"
    assert version.local == target.local_version.lower()  # cu130torch2.11
    assert all(t.platform.startswith("manylinux_") for t in tags), tags
    problems = wheels.check_wheel(path.name, wheels.read_wheel(path), package="sageattention",
                                  version=entry["version"], torch_requirement=target.torch_requirement,
                                  arch_list=entry["arch_list"])
    assert problems == []


def test_pip_installs_from_the_index_and_imports(entry, tmp_path):
    """pip resolves the exact version from builder/simple, and the installed package imports
    (with this interpreter's torch; the extension itself is loaded by `sagebuild test`, in an
    image with the torch it was built against)."""
    site = tmp_path / "site"
    version = entry["version"]
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                        "--no-cache-dir", "--target", str(site),
                        "--index-url", f"file://{BUILDER}/simple", f"sageattention=={version}"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    code = ("import importlib.metadata as m, sageattention, os; "
            "print(m.version('sageattention')); print(os.path.dirname(sageattention.__file__))")
    env = dict(os.environ, PYTHONPATH=str(site))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    installed_version, location = p.stdout.split()[:2]
    assert installed_version == version
    assert location == str(site / "sageattention")
    assert any(f.startswith("_C") and f.endswith(".so") for f in os.listdir(location))


def test_sagebuild_test_passed(entry):
    """.ci/run records `sagebuild test`'s exit code next to the wheel."""
    marker = BUILDER / "logs" / "e2e-test.rc"
    assert marker.exists(), "sagebuild test did not run"
    assert marker.read_text().strip() == "0", (BUILDER / "logs").glob("test-*.log")
