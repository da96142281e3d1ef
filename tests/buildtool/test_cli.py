"""cli: `sagebuild matrix` and `sagebuild render` as a user types them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from buildtool.cli import app

SEED = [
    "linux-pytorch28-cu129-python312",
    "linux-pytorch27-cu128-python312",
    "windows-pytorch28-cu129-python312",
]


@pytest.fixture
def run(repo, monkeypatch):
    monkeypatch.delenv("SAGEBUILD_MATRIX", raising=False)
    monkeypatch.setenv("COLUMNS", "250")

    def invoke(*args: str, cwd: Path | None = None):
        monkeypatch.chdir(cwd or repo)
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    return invoke


def _one_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return result.stderr


def test_matrix_python_as_typed(run):
    result = run("matrix", "--python", "3.12")
    assert result.exit_code == 0, result.output
    for name in SEED:
        assert name in result.stdout
    assert "groups:" in result.stdout and "test-all" in result.stdout


def test_matrix_names(run):
    result = run("matrix", "--python", "3.12", "--format", "names")
    assert result.exit_code == 0
    names = result.stdout.split()
    assert set(SEED) <= set(names)
    assert "linux-pytorch211-cu130-python312" in names


def test_matrix_filters_and_names(run):
    result = run("matrix", "linux", "--torch", "2.8", "--cuda", "12.9", "-f", "names")
    assert result.stdout.split() == ["linux-pytorch28-cu129-python312"]
    result = run("matrix", "test-all", "-f", "names")
    assert "linux-pytorch27-cu128-python312" in result.stdout.split()
    result = run("matrix", "default", "-f", "names")
    assert result.stdout.split() == ["linux-pytorch211-cu130-python312"]
    result = run("matrix", "--torch", "2.7", "--torch", "2.11", "--platform", "linux", "-f", "names")
    assert result.stdout.split() == ["linux-pytorch27-cu128-python312",
                                     "linux-pytorch211-cu130-python312"]


def test_matrix_json(run):
    result = run("matrix", "--format", "json", "--platform", "windows")
    rows = json.loads(result.stdout)
    assert {r["target"] for r in rows} == {
        "windows-pytorch27-cu128-python312", "windows-pytorch28-cu128-python312",
        "windows-pytorch28-cu129-python312"}
    row = next(r for r in rows if r["target"] == "windows-pytorch28-cu129-python312")
    assert row["wheel"] == "sageattention-0.1.0+cu129torch2.8-cp312-cp312-win_amd64.whl"
    assert row["torch_requirement"] == "torch==2.8.*"
    assert row["test_target"] is None


def test_matrix_github(run):
    result = run("matrix", "--format", "github", "--platform", "linux")
    out = result.stdout.strip()
    assert "\n" not in out  # one line for $GITHUB_OUTPUT
    data = json.loads(out)
    assert list(data) == ["include"]
    targets = [e["target"] for e in data["include"]]
    assert "linux-pytorch27-cu128-python312" in targets
    entry = data["include"][0]
    for key in ("target", "test_target", "runner", "python", "torch", "cuda", "platform"):
        assert key in entry


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--python", "3.11"], "--python: '3.11' matches no target"),
        (["--python", "3.11"], "allowed: 3.12"),
        (["--torch", "2.9"], "allowed: 2.7.0, 2.8.0, 2.11.0"),
        (["--cuda", "12.6"], "--cuda"),
        (["--platform", "windows", "--torch", "2.11"], "the filters select no target"),
        (["linux-pytorch27-cu129-python312"], "unknown target or group"),
        (["--matrix", "/nonexistent/matrix.yaml"], "matrix file not found"),
    ],
)
def test_matrix_bad_filters(run, args, needle):
    err = _one_error(run("matrix", *args))
    assert needle in err
    assert "matrix.yaml" in err


def test_matrix_bad_file(run, project_dir, write_matrix, matrix_text):
    write_matrix(matrix_text.replace('pythons: ["3.12"]\n\n', "pythons: [3.10]\n\n"))
    err = _one_error(run("matrix", cwd=project_dir))
    assert "matrix.yaml:" in err and "pythons[0]" in err and '"3.1"' not in err
    assert "expected a string, got the number 3.10 (YAML reads it as 3.1)" in err
    assert 'allowed: a quoted string: "3.10"' in err


def test_matrix_missing_file(run, tmp_path):
    err = _one_error(run("matrix", cwd=tmp_path))
    assert "no matrix.yaml" in err and "--matrix" in err


def test_matrix_env_and_subdir(run, repo, tmp_path, monkeypatch):
    assert run("matrix", "-f", "names", cwd=repo / "buildtool").exit_code == 0
    monkeypatch.setenv("SAGEBUILD_MATRIX", str(repo / "matrix.yaml"))
    result = run("matrix", "-f", "names", cwd=tmp_path)
    assert result.exit_code == 0 and SEED[0] in result.stdout
    monkeypatch.setenv("SAGEBUILD_MATRIX", str(tmp_path / "nowhere.yaml"))
    err = _one_error(run("matrix", cwd=tmp_path))
    assert "nowhere.yaml: SAGEBUILD_MATRIX: matrix file not found" in err  # not blamed on --matrix


def test_render_check_on_main(run):
    result = run("render", "--check")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stdout


def test_render_and_drift(run, project_dir, write_matrix, matrix_text):
    write_matrix(matrix_text)
    assert run("render", "--check", cwd=project_dir).exit_code == 1  # nothing rendered yet
    result = run("render", cwd=project_dir)
    assert result.exit_code == 0 and "wrote" in result.stdout
    assert (project_dir / "docker-bake.hcl").is_file()
    assert (project_dir / "docker" / "linux.Dockerfile").is_file()
    assert run("render", "--check", cwd=project_dir).exit_code == 0
    assert "nothing written" in run("render", cwd=project_dir).stdout
    # a hand edit is drift: non-zero exit and a unified diff
    bake = project_dir / "docker-bake.hcl"
    bake.write_text(bake.read_text().replace('default = "2"', 'default = "8"'))
    result = run("render", "--check", cwd=project_dir)
    assert result.exit_code == 1
    assert "--- a/docker-bake.hcl" in result.stdout and "+++ b/docker-bake.hcl" in result.stdout
    assert '-  default = "8"' in result.stdout and '+  default = "2"' in result.stdout
    assert "sagebuild render" in result.stderr
    # a matrix change is drift too
    write_matrix(matrix_text.replace("version: \"0.1.0\"", "version: \"2.3.0\""))
    run("render", cwd=project_dir)
    assert '"2.3.0"' in bake.read_text()


def test_render_bad_input_writes_nothing(run, project_dir, write_matrix, matrix_text):
    write_matrix(matrix_text.replace("    source: pypi", "    source: conda"))
    err = _one_error(run("render", cwd=project_dir))
    assert "source" in err and "'image' or 'pypi'" in err
    assert not (project_dir / "docker-bake.hcl").exists()
    assert not (project_dir / "docker").exists()


def test_version_and_help(run):
    assert run("--version").stdout.startswith("sagebuild ")
    result = run("matrix", "--help")
    assert "--python" in result.stdout and "--format" in result.stdout


def test_console_script(repo):
    """The installed `sagebuild` (pip install ./buildtool) works from the repository root."""
    exe = Path(sys.executable).with_name("sagebuild")
    if not exe.exists():
        exe = shutil.which("sagebuild")
        if exe is None:
            pytest.skip("sagebuild is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if k != "SAGEBUILD_MATRIX"}
    proc = subprocess.run([str(exe), "matrix", "--python", "3.12", "--format", "names"],
                          cwd=repo, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert set(SEED) <= set(proc.stdout.split())
    proc = subprocess.run([str(exe), "matrix", "--python", "3.7"], cwd=repo,
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1
