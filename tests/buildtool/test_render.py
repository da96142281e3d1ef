"""render: golden files, the committed files are up to date, drift/stale detection, escaping,
strict templates, and (with Docker) `docker buildx bake --print` on every target and group."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildtool import render
from buildtool.errors import SagebuildError
from buildtool.matrix import load_project

GOLDEN = Path(__file__).resolve().parent / "golden"


def _golden_project(tmp_path: Path, repo: Path):
    shutil.copy(GOLDEN / "matrix.yaml", tmp_path / "matrix.yaml")
    shutil.copytree(repo / "templates", tmp_path / "templates")
    return load_project(tmp_path / "matrix.yaml")


def test_golden(tmp_path, repo):
    rendered = render.render(_golden_project(tmp_path, repo))
    assert sorted(rendered) == ["docker-bake.hcl", "docker/linux.Dockerfile",
                                "docker/windows.Dockerfile"]
    update = os.environ.get("SAGEBUILD_UPDATE_GOLDEN") == "1"
    for rel, text in rendered.items():
        expected = GOLDEN / rel
        if update:
            expected.parent.mkdir(parents=True, exist_ok=True)
            expected.write_text(text, encoding="utf-8")
        assert expected.read_text(encoding="utf-8") == text, (
            f"{rel} differs from tests/buildtool/golden/{rel}; if the template change is "
            "deliberate: SAGEBUILD_UPDATE_GOLDEN=1 python -m pytest tests/buildtool/test_render.py"
        )


def test_committed_files_are_up_to_date(repo):
    """`sagebuild render --check` passes on the committed docker-bake.hcl and docker/."""
    project = load_project(repo / "matrix.yaml")
    drifts = render.check(project)
    assert not drifts, "run `sagebuild render` and commit:\n" + "".join(d.diff for d in drifts)


def test_generated_files_say_so(repo):
    for rel in ("docker-bake.hcl", "docker/linux.Dockerfile", "docker/windows.Dockerfile"):
        assert render.GENERATED_MARK in (repo / rel).read_text(encoding="utf-8")
    # the escape directive must stay the first line of the Windows Dockerfile
    assert (repo / "docker/windows.Dockerfile").read_text().startswith("# escape=`\n")


def test_bake_content(repo):
    text = (repo / "docker-bake.hcl").read_text(encoding="utf-8")
    for name in ("linux-pytorch28-cu129-python312", "linux-pytorch27-cu128-python312",
                 "windows-pytorch28-cu129-python312", "test-linux-pytorch27-cu128-python312",
                 "test-linux-pytorch28-cu129-python312", "linux-pytorch211-cu130-python312"):
        assert f'target "{name}" {{' in text
    for group in ("linux", "windows", "pytorch27", "pytorch28", "pytorch211", "test-all",
                  "all", "default"):
        assert f'group "{group}" {{' in text
    assert 'output = ["type=local,dest=./builder/linux-pytorch28-cu129-python312"]' in text
    for var in ("VERSION", "BASE_IMAGE", "TEST_BASE_IMAGE", "PYTHON", "PYTHON_VERSION",
                "TEST_PYTHON", "TORCH_INDEX_URL", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS",
                "NVCC_THREADS", "AUDITWHEEL_PLAT"):
        assert f'variable "{var}" {{' in text


def test_dockerfile_layer_order(repo):
    """CUDA objects are compiled before sageattention/ is copied (Python edits reuse them)."""
    text = (repo / "docker/linux.Dockerfile").read_text(encoding="utf-8")
    csrc = text.index("COPY csrc/ csrc/")
    build_ext = text.index("setup.py build_ext")
    pkg = text.index("COPY sageattention/ sageattention/")
    assert csrc < build_ext < pkg < text.index("setup.py bdist_wheel")
    for stage in ("toolchain-image", "toolchain-pypi", "toolchain", "torch", "build", "repair",
                  "export", "test"):
        assert f" AS {stage}\n" in text
    assert "FROM scratch AS export" in text
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    assert "--mount=type=cache,target=/root/.cache/ccache" in text
    assert "COPY --from=build" not in text.split(" AS test\n")[1]  # test uses the exported wheel


def test_check_reports_drift_and_stale(tmp_path, repo):
    project = _golden_project(tmp_path, repo)
    assert render.write(project)  # first write creates everything
    assert render.write(project) == []  # idempotent
    assert render.check(project) == []
    bake = tmp_path / "docker-bake.hcl"
    bake.write_text(bake.read_text().replace('"1.0.0"', '"1.0.1"'))
    (tmp_path / "docker" / "old.Dockerfile").write_text(f"# {render.GENERATED_MARK}\nFROM x\n")
    (tmp_path / "docker" / "handmade.Dockerfile").write_text("FROM x\n")  # not ours: kept
    drifts = {d.path: d.diff for d in render.check(project)}
    assert set(drifts) == {"docker-bake.hcl", "docker/old.Dockerfile"}
    assert '-  default = "1.0.1"' in drifts["docker-bake.hcl"]
    assert '+  default = "1.0.0"' in drifts["docker-bake.hcl"]
    render.write(project)
    assert render.check(project) == []
    assert not (tmp_path / "docker" / "old.Dockerfile").exists()
    assert (tmp_path / "docker" / "handmade.Dockerfile").exists()


def test_strict_undefined(tmp_path, repo):
    project = _golden_project(tmp_path, repo)
    tpl = tmp_path / "templates" / "docker-bake.hcl.j2"
    tpl.write_text(tpl.read_text() + "\n# {{ no_such_value }}\n")
    with pytest.raises(SagebuildError) as info:
        render.render(project)
    assert "no_such_value" in info.value.message
    assert not (tmp_path / "docker-bake.hcl").exists()


def test_template_syntax_error(tmp_path, repo):
    project = _golden_project(tmp_path, repo)
    (tmp_path / "templates" / "linux.Dockerfile.j2").write_text("line\n{% if %}\n")
    with pytest.raises(SagebuildError) as info:
        render.render(project)
    assert info.value.line == 2


def test_hcl_escaping():
    assert render.hcl_string("a${b}%{c}\"\\") == '"a$${b}%%{c}\\"\\\\"'
    assert render.hcl_string(["x", "y"]) == '["x", "y"]'


# ---------------------------------------------------------------------------------------------
@pytest.mark.docker
def test_bake_print_every_target_and_group(repo, docker):
    project = load_project(repo / "matrix.yaml")
    names = (list(project.groups) + [t.name for t in project.targets]
             + [t.test_name for t in project.test_targets])
    for name in names:
        proc = subprocess.run(
            ["docker", "buildx", "bake", "--file", "docker-bake.hcl", "--print", name],
            cwd=repo, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, f"bake --print {name}:\n{proc.stderr}"
        printed = json.loads(proc.stdout)
        expected = project.groups.get(name, [name])
        assert set(printed["target"]) == set(expected), name
    # overrides through bake variables reach every target
    env = dict(os.environ, BASE_IMAGE="local/builder", PYTHON="/usr/bin/python3",
               TORCH_INDEX_URL="https://pypi.org/simple", TORCH_CUDA_ARCH_LIST="8.0")
    proc = subprocess.run(["docker", "buildx", "bake", "--file", "docker-bake.hcl", "--print",
                           "default"], cwd=repo, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    args = json.loads(proc.stdout)["target"]["linux-pytorch211-cu130-python312"]["args"]
    assert args["BASE_IMAGE"] == "local/builder"
    assert args["PYTHON"] == "/usr/bin/python3"
    assert args["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert args["TORCH_CUDA_ARCH_LIST"] == "8.0"
    assert args["CUDA_SOURCE"] == "pypi"


@pytest.mark.docker
def test_golden_bake_prints(tmp_path, repo, docker):
    """The golden bake file (abi3, Windows, escaping) is valid HCL for Buildx too."""
    proc = subprocess.run(
        ["docker", "buildx", "bake", "--file", str(GOLDEN / "docker-bake.hcl"), "--print", "all",
         "test-all", "release"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    targets = json.loads(proc.stdout)["target"]
    assert targets["linux-pytorch211-cu130-abi3"]["args"]["SAGEATTENTION_ABI3"] == "1"
    assert targets["windows-pytorch28-cu129-python312"]["args"]["PYTHON"] == "C:\\Python312\\python.exe"


# ---------------------------------------------------------------------------------------------
# Dockerfile sanity without a Docker engine (the Windows one cannot be built here at all):
# every variable an instruction uses is declared in its stage (ARG/ENV, or ENV inherited from
# the parent stage), every FROM/--from names a known stage or a global ARG. Forgetting to
# re-declare an ARG inside a stage is the classic silent Dockerfile bug: it expands to "".

_KNOWN_ENV = {"PATH", "LD_LIBRARY_PATH", "HOME"}


def _instructions(text: str) -> list[tuple[str, str]]:
    escape = "`" if text.startswith("# escape=`") else "\\"
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith(escape):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _check_dockerfile(text: str) -> list[str]:
    import re

    problems = []
    global_args: set[str] = set()
    stages: dict[str, set[str]] = {}  # stage -> ENV names (inherited by children)
    declared: set[str] = set()
    env: set[str] = set()
    in_stage = False
    for word, rest in _instructions(text):
        if word == "FROM":
            parts = rest.split()
            image = parts[0]
            for var in re.findall(r"\$\{(\w+)\}", image):
                if var not in global_args:
                    problems.append(f"FROM uses {var}, not a global ARG")
            # FROM toolchain-${CUDA_SOURCE}: inherit what the matching stages define
            pattern = re.sub(r"\\\$\\\{\w+\\\}", ".+", re.escape(image))
            parents = [st for st in stages if re.fullmatch(pattern, st)]
            env = set().union(*(stages[p] for p in parents))
            declared = set()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            if name:
                stages[name] = env
            in_stage = True
            current = name
            continue
        if word == "ARG":
            var = rest.split("=")[0].strip()
            (declared if in_stage else global_args).add(var)
            continue
        if not in_stage:
            problems.append(f"{word} before the first FROM")
            continue
        m = re.search(r"--from=(\S+)", rest)
        if m and m.group(1) not in stages:
            problems.append(f"--from={m.group(1)} is not an earlier stage")
        used = set(re.findall(r"\$\{(\w+)(?::?[-+][^}]*)?\}", rest))
        used |= set(re.findall(r"\$env:(\w+)", rest))
        used |= set(re.findall(r"%(\w+)%", rest))
        if word == "RUN":
            # shell-local variables (assigned in the same RUN) are fine
            local = set(re.findall(r"(?:^|[;&|\s(])(\w+)=", rest))
            local |= set(re.findall(r"\bfor (\w+) in\b", rest))
            local |= {v[1:] for v in re.findall(r"\$\w+(?=\s*=)", rest)}  # PowerShell $x = ...
            used -= local
        for var in sorted(used - declared - env - _KNOWN_ENV):
            problems.append(f"stage {current}: {word} uses {var}, not declared in the stage")
        if word == "ENV":
            for var in re.findall(r"(?:^|\s)(\w+)=", rest):
                env.add(var)
            if current:
                stages[current] = env
    return problems


@pytest.mark.parametrize("name", ["linux.Dockerfile", "windows.Dockerfile"])
def test_dockerfile_variables_declared(repo, name):
    for path in (repo / "docker" / name, GOLDEN / "docker" / name):
        assert _check_dockerfile(path.read_text(encoding="utf-8")) == [], path


def test_dockerfile_checker_finds_missing_arg():
    bad = "ARG BASE=x\nFROM ${BASE} AS a\nARG TORCH=1\nFROM a AS b\nRUN pip install torch==${TORCH}\n"
    assert _check_dockerfile(bad) == ["stage b: RUN uses TORCH, not declared in the stage"]
    assert _check_dockerfile("FROM ${NOPE}\n") == ["FROM uses NOPE, not a global ARG"]
