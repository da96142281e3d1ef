"""Shared fixtures of the sagebuild tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def matrix_text() -> str:
    """The committed matrix.yaml (tests mutate copies of it)."""
    return (REPO / "matrix.yaml").read_text(encoding="utf-8")


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A scratch project: the repo's templates/ next to a matrix.yaml the test writes."""
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    return tmp_path


@pytest.fixture
def write_matrix(project_dir: Path):
    def write(text: str) -> Path:
        path = project_dir / "matrix.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        ok = subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
        return ok and subprocess.run(
            ["docker", "buildx", "version"], capture_output=True, timeout=30
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker() -> None:
    if not docker_available():
        pytest.skip("needs a running Docker engine with Buildx (`docker info` failed)")
