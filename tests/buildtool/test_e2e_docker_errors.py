"""Real Docker: a build that cannot start fails fast, says how to fix it, and leaves
./builder/ as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from buildtool import wheels
from buildtool.cli import app
from tests.buildtool.test_wheels import make_contents

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]


def test_unpullable_base_image_fails_with_hint_and_keeps_wheels(docker, tmp_path):
    # a scratch project: the real templates + generated files, and one wheel already collected
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("matrix.yaml", "docker-bake.hcl", ".dockerignore"):
        (proj / name).write_bytes((REPO / name).read_bytes())
    for d in ("docker", "templates"):
        (proj / d).mkdir()
        for f in (REPO / d).iterdir():
            (proj / d / f.name).write_bytes(f.read_bytes())
    builder = proj / "builder"
    builder.mkdir()
    old = builder / "sageattention-0.1.0+cu130torch2.11-cp312-cp312-manylinux_2_28_x86_64.whl"
    old.write_bytes(wheels.wheel_bytes(make_contents(version="0.1.0+cu130torch2.11")))
    (builder / "manifest.json").write_text(json.dumps({"version": 1, "wheels": {
        "linux-pytorch211-cu130-python312": {"file": old.name, "sha256": wheels.sha256_file(old)}}}))
    before = {p.name: p.read_bytes() for p in builder.iterdir() if p.is_file()}

    r = CliRunner().invoke(app, ["build", "linux-pytorch211-cu130-python312", "--matrix", str(proj / "matrix.yaml"),
                                 "--progress", "plain", "--base-image", "local/sagebuild-no-such-image:0"],
                           catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "docker buildx bake failed" in r.output
    assert "--base-image" in r.output and "hint:" in r.output
    after = {p.name: p.read_bytes() for p in builder.iterdir() if p.is_file()}
    assert after == before
    assert not (builder / ".staging").exists()
