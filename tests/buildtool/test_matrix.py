"""matrix: the model, expansion into targets, groups, filters and every bad-input case."""

from __future__ import annotations

import re

import pytest

from buildtool.errors import EXIT_USAGE, SagebuildError
from buildtool.matrix import find_matrix, load_project, load_text, select

SEED_TARGETS = [
    "linux-pytorch28-cu129-python312",
    "linux-pytorch27-cu128-python312",
    "windows-pytorch28-cu129-python312",
]
SEED_TESTS = ["test-linux-pytorch27-cu128-python312", "test-linux-pytorch28-cu129-python312"]
SEED_GROUPS = ["linux", "windows", "pytorch27", "pytorch28", "test-all", "all", "default"]


@pytest.fixture
def project(repo):
    return load_project(repo / "matrix.yaml")


def test_seed_matrix(project):
    names = [t.name for t in project.targets]
    for n in SEED_TARGETS:
        assert n in names
    tests = [t.test_name for t in project.test_targets]
    for n in SEED_TESTS:
        assert n in tests
    for g in SEED_GROUPS + ["pytorch211"]:
        assert project.groups[g], g
    assert "linux-pytorch211-cu130-python312" in names
    # default = the Linux wheel of the newest torch
    assert project.groups["default"] == ["linux-pytorch211-cu130-python312"]
    assert project.groups["test-all"] == [t.test_name for t in project.test_targets]
    assert set(project.groups["all"]) == set(names)
    # torch 2.7 has no cu129 build, so no such target exists
    assert not any(n.startswith("linux-pytorch27-cu129") for n in names)


def test_matrix_version_is_the_package_version(project, repo):
    """Target and wheel names carry matrix.yaml's version; it must be the one the package has."""
    import tomllib

    package_version = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    assert {t.version for t in project.targets} == {package_version}


def test_target_fields(project):
    t = project.target("linux-pytorch211-cu130-python312")
    assert t.cuda_source == "pypi"
    assert t.base_image == "quay.io/pypa/manylinux_2_28_x86_64"
    assert t.python_exe == "/opt/python/cp312-cp312/bin/python"
    assert t.index_url == "https://download.pytorch.org/whl/cu130"
    assert t.arch_list == "8.0;8.6;8.9;9.0a;12.0"
    assert t.wheel_filename == (
        "sageattention-0.1.0+cu130torch2.11-cp312-cp312-manylinux_2_28_x86_64.whl"
    )
    w = project.target("windows-pytorch28-cu129-python312")
    assert w.platform_tag == "win_amd64" and not w.testable
    assert w.python_exe == "C:\\Python312\\python.exe"
    c = project.target("linux-pytorch28-cu129-python312")
    assert c.base_image == "pytorch/manylinux2_28-builder:cuda12.9"
    assert c.test_base_image == "python:3.12-slim-bookworm"


def test_abi3_and_torch_cuda_and_index_override(matrix_text, write_matrix):
    text = matrix_text.replace(
        "build:\n",
        'build:\n  - platforms: [linux]\n    pythons: ["3.11", "3.12"]\n    torch: ["2.7.0"]\n'
        '    cuda: ["12.9.1"]\n    torch_cuda: "12.8"\n    abi3: true\n',
    ).replace('pythons: ["3.12"]\n\n', 'pythons: ["3.11", "3.12"]\n\n')
    text = text.replace('  "2.11.0":\n    cuda: ["13.0.2"]',
                        '  "2.11.0":\n    cuda: ["13.0.2"]\n    index_url: "https://pypi.org/simple"')
    p = load_project(write_matrix(text))
    t = p.target("linux-pytorch27-cu129-abi3")
    assert t.abi3 and t.python is None and t.build_python == "3.12"
    assert t.torch_cuda == "12.8"
    assert t.index_url == "https://download.pytorch.org/whl/cu128"  # torch's cu128 build
    assert t.python_tag == "cp39-abi3"
    assert t.wheel_filename.endswith("-cp39-abi3-manylinux_2_28_x86_64.whl")
    assert "+cu129torch2.7-" in t.wheel_filename
    assert "abi3" in p.groups
    assert p.target("linux-pytorch211-cu130-python312").index_url == "https://pypi.org/simple"


def test_exclude_rule(matrix_text, write_matrix):
    text = matrix_text.replace("# exclude: [{platform: windows", "exclude: [{platform: windows")
    p = load_project(write_matrix(text))
    names = [t.name for t in p.targets]
    assert "windows-pytorch27-cu128-python312" not in names
    assert "windows-pytorch28-cu129-python312" in names


def test_user_group(matrix_text, write_matrix):
    text = matrix_text.replace("groups: {}", "groups:\n  release: [linux, windows-pytorch28-cu129-python312]")
    p = load_project(write_matrix(text))
    assert "windows-pytorch28-cu129-python312" in p.groups["release"]
    assert "linux-pytorch27-cu128-python312" in p.groups["release"]


# ---------------------------------------------------------------------------------------------
# bad input: ONE error naming file, line, field and what is allowed


def _error(write_matrix, text) -> SagebuildError:
    path = write_matrix(text)
    with pytest.raises(SagebuildError) as info:
        load_project(path)
    err = info.value
    assert err.exit_code == EXIT_USAGE
    assert str(err.file).endswith("matrix.yaml")
    return err


def _line_of(text: str, needle) -> int:
    """Line of the first `needle`; for (anchor, needle): the first needle after the anchor."""
    anchor, needle = needle if isinstance(needle, tuple) else (None, needle)
    seen = anchor is None
    for i, line in enumerate(text.splitlines(), 1):
        seen = seen or anchor in line
        if seen and needle in line:
            return i
    raise AssertionError(needle)


BAD = [
    # id, old, new, line needle, field, message part, allowed part
    ("unknown-key", "    dockerfile: linux ", "    dockerfil: linux ", "dockerfil:",
     "platforms.linux.dockerfil", "unknown key 'dockerfil'", "dockerfile"),
    ("unknown-top-key", "package: sageattention", "package: sageattention\npakage: x", "pakage:",
     "pakage", "unknown key", "torch_index_url"),
    ("python-float", 'pythons: ["3.12"]\n\n', "pythons: [3.10]\n\n", "pythons: [3.10]",
     "pythons[0]", "expected a string, got the number 3.10", 'a quoted string: "3.10"'),
    ("wrong-type-bool", "    test: true\n", "    test: maybe\n", "test: maybe",
     "platforms.linux.test", "boolean", None),
    ("wrong-type-list", '    cuda: ["12.8.1"]\n', '    cuda: "12.8.1"\n', 'cuda: "12.8.1"',
     'torch."2.7.0".cuda', "list", None),
    ("bad-source", "    source: pypi", "    source: conda", "source: conda",
     'cuda."13.0.2".source', "Input should be", "'image' or 'pypi'"),
    ("missing-key", "    wheel_tag: win_amd64\n", "", "  windows:",
     "platforms.windows.wheel_tag", "required key is missing", None),
    ("unsupported-python", 'pythons: ["3.12"]\n\n', 'pythons: ["3.12", "3.8"]\n\n', "pythons:",
     "pythons[1]", "unsupported Python 3.8", "3.9, 3.10"),
    ("unsupported-torch", '  "2.11.0":\n    cuda: ["13.0.2"]', '  "2.10.0":\n    cuda: ["13.0.2"]',
     '"2.10.0":', 'torch."2.10.0"', "unsupported PyTorch 2.10.0", "2.7.x, 2.8.x"),
    ("unsupported-cuda", '  "13.0.2":\n', '  "12.4.1":\n', '"12.4.1":',
     'cuda."12.4.1"', "unsupported CUDA 12.4.1", "12.8.x"),
    ("incompatible-torch-cuda", '  "2.7.0":\n    cuda: ["12.8.1"]', '  "2.7.0":\n    cuda: ["12.9.1"]',
     'cuda: ["12.9.1"]', 'torch."2.7.0".cuda[0]', "PyTorch 2.7 has no CUDA 12.9 build",
     "11.8, 12.6, 12.8"),
    ("incompatible-in-build", '    torch: ["2.7.0", "2.8.0"]\n',
     '    torch: ["2.7.0", "2.8.0"]\n    cuda: ["12.9.1"]\n', 'cuda: ["12.9.1"]', "build[0].cuda[0]",
     "torch_cuda", "11.8, 12.6, 12.8"),
    ("torch-cuda-major", '    torch: ["2.11.0"]\n', '    torch: ["2.11.0"]\n    torch_cuda: "12.8"\n',
     '    torch_cuda: "12.8"', "build[1].torch_cuda", "differ in major", "CUDA 13.x build"),
    ("arch-too-new", '    arch_list: "8.0;8.6;8.9;9.0a;12.0"\n    source: image\n    base_images:\n'
     '      linux: pytorch/manylinux2_28-builder:cuda12.8',
     '    arch_list: "8.0;8.6;8.9;9.0a;12.0;13.0"\n    source: image\n    base_images:\n'
     '      linux: pytorch/manylinux2_28-builder:cuda12.8', "13.0\"", 'cuda."12.8.1".arch_list',
     "unknown GPU architecture '13.0'", "9.0a"),
    ("dup-python", 'pythons: ["3.12"]\n\n', 'pythons: ["3.12", "3.12"]\n\n', "pythons:",
     "pythons[1]", "duplicate entry '3.12'", None),
    ("dup-key", '  "2.8.0":\n', '  "2.7.0":\n    cuda: ["12.8.1"]\n  "2.8.0":\n', None,
     'torch."2.7.0"', "duplicate key '2.7.0'", None),
    ("dup-target", "build:\n", 'build:\n  - platforms: [linux]\n    torch: ["2.11.0"]\n', None,
     "build[2]", "duplicate entry: target linux-pytorch211-cu130-python312", None),
    ("unknown-platform-in-build", "  - platforms: [linux, windows]", "  - platforms: [linux, macos]",
     "[linux, macos]", "build[0].platforms[1]", "unknown platform 'macos'", "linux, windows"),
    ("unknown-cuda-in-torch", '    cuda: ["12.8.1", "12.9.1"]', '    cuda: ["12.8.1", "12.6.3"]',
     '"12.6.3"]', 'torch."2.8.0".cuda[1]', "not declared under cuda:", "12.8.1, 12.9.1, 13.0.2"),
    ("exclude-matches-nothing", '# exclude: [{platform: windows, torch: "2.7"}]',
     'exclude: [{platform: windows, torch: "2.11"}]', "exclude: [", "exclude[0]",
     "matches no target", "at least one target"),
    ("exclude-unknown-platform", "# exclude: [{platform: windows", "exclude: [{platform: macos",
     "exclude: [", "exclude[0].platform", "unknown platform 'macos'", "linux, windows"),
    ("exclude-not-a-version", '# exclude: [{platform: windows, torch: "2.7"}]',
     'exclude: [{torch: "abc"}]', "exclude: [", "exclude[0].torch", "unknown PyTorch version 'abc'",
     "2.7.0, 2.8.0, 2.11.0"),
    ("python-not-for-torch", ['pythons: ["3.12"]\n\n', '    pythons: ["3.12"]\n    torch: ["2.11.0"]'],
     ['pythons: ["3.12", "3.9"]\n\n', '    torch: ["2.11.0"]'], None,
     "build[1].pythons", "PyTorch 2.11.0 publishes no wheels for Python 3.9", "3.10"),
    ("bad-placeholder", 'torch_index_url: "https://download.pytorch.org/whl/{cuda_short}"',
     'torch_index_url: "https://download.pytorch.org/whl/{cuda}"', "torch_index_url:",
     "torch_index_url", "unknown placeholder {cuda}", "{cuda_short}"),
    ("unbalanced-brace", r"python_exe: 'C:\Python{python_nodot}\python.exe'",
     r"python_exe: 'C:\Python{python_nodot\python.exe'", "python_exe: 'C:",
     "platforms.windows.python_exe", "unbalanced braces", "{python}, {python_nodot}"),
    ("lone-closing-brace", '  "2.11.0":\n    cuda: ["13.0.2"]',
     '  "2.11.0":\n    cuda: ["13.0.2"]\n    index_url: "https://pypi.org/simple}"',
     ('"2.11.0":', "index_url:"),
     'torch."2.11.0".index_url', "unbalanced braces", "{cuda_short}"),
    ("placeholder-format-spec", 'test_base_image: "python:{python}-slim-bookworm"',
     'test_base_image: "python:{python:d}-slim-bookworm"', "test_base_image:",
     "platforms.linux.test_base_image", "unknown placeholder {python:d}", "{python}"),
    ("pythons-not-a-list", 'pythons: ["3.12"]\n\n', "pythons: 3.12\n\n", "pythons: 3.12",
     "pythons", "expected a list, got the number 3.12", '["3.11", "3.12"]'),
    ("bool-as-string", "    test: true\n", '    test: "no"\n', 'test: "no"', "platforms.linux.test",
     'expected a boolean, got the string "no"', "true or false"),
    ("string-as-bool", "    test_python_exe: python3", "    test_python_exe: yes",
     "test_python_exe: yes",
     "platforms.linux.test_python_exe", "got the boolean yes", 'a quoted string: "yes"'),
    ("empty-string", "      linux: quay.io/pypa/manylinux_2_28_x86_64",
     '      linux: ""', ('"13.0.2":', 'linux: ""'), 'cuda."13.0.2".base_images.linux',
     "empty string", "pytorch/manylinux2_28-builder:cuda12.8"),
    ("groups-empty-value", "groups: {}", "groups:", "groups:", "groups",
     "expected a mapping, got an empty value", '{"release": ['),
    ("pattern-mismatch", "wheel_tag: win_amd64", "wheel_tag: Win-AMD64", "Win-AMD64",
     "platforms.windows.wheel_tag", "'Win-AMD64' does not match", "[a-z0-9_]+"),
    ("platform-not-a-mapping", "  windows:\n", "  windows: 5\n  unused:\n", "windows: 5",
     "platforms.windows", "expected a mapping, got the number 5", "wheel_tag, dockerfile"),
    ("float-key", '  "12.9.1":\n    arch_list', "  12.10:\n    arch_list", "12.10:",
     'cuda."12.10"', "expected a string key, got the number 12.10 (YAML reads it as 12.1)",
     'a quoted string: "12.10"'),
    ("group-unknown-member", "groups: {}", "groups:\n  rel: [linux-pytorch29-cu128-python312]",
     "linux-pytorch29", "groups.rel[0]", "unknown target or group", "did you mean"),
    ("missing-base-image", "      linux: quay.io/pypa/manylinux_2_28_x86_64\n",
     "      windows: mcr.microsoft.com/windows/servercore:ltsc2022\n", ('"13.0.2":', "base_images:"),
     'cuda."13.0.2".base_images', "no base image for platform 'linux'", None),
]


@pytest.mark.parametrize(("old", "new", "needle", "field", "msg", "allowed"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(matrix_text, write_matrix, old, new, needle, field, msg, allowed):
    text = matrix_text
    for o, n in zip(*((old, new) if isinstance(old, list) else ([old], [new]))):
        assert o in text, "test case does not apply to matrix.yaml any more"
        text = text.replace(o, n, 1)
    err = _error(write_matrix, text)
    assert err.field == field, err.format()
    assert msg in err.message, err.format()
    if allowed is not None:
        assert err.allowed and allowed in err.allowed, err.format()
    if needle is not None:
        assert err.line == _line_of(text, needle), err.format()
    else:
        assert err.line is not None
    formatted = err.format()
    assert formatted.startswith(f"{err.file}:{err.line}: {field}: ")
    assert not (err.allowed or "").rstrip().endswith(":"), formatted


def test_empty_build(matrix_text, write_matrix):
    start, end = matrix_text.index("build:\n"), matrix_text.index("# exclude:")
    text = matrix_text[:start] + "build: []\n\n" + matrix_text[end:]
    err = _error(write_matrix, text)
    assert (err.field, err.line) == ("build", _line_of(text, "build: []")), err.format()
    assert err.message == "empty list: at least 1 entry is needed", err.format()
    assert '[{"platforms": ["linux"], ' in err.allowed, err.format()


def test_not_utf8(matrix_text, write_matrix):
    path = write_matrix(matrix_text)
    latin1 = matrix_text.replace("# CUDA toolkits", "# CUDA toolkits (\xe9)").encode("latin-1")
    path.write_bytes(latin1)
    with pytest.raises(SagebuildError) as info:
        load_project(path)
    err = info.value
    assert err.exit_code == EXIT_USAGE and str(err.file).endswith("matrix.yaml")
    assert err.line == _line_of(matrix_text, "# CUDA toolkits"), err.format()
    assert "not UTF-8" in err.message and "0xe9" in err.message, err.format()
    assert "UTF-8" in err.allowed


def test_yaml_syntax_error(matrix_text, write_matrix):
    text = matrix_text.replace('pythons: ["3.12"]', 'pythons: ["3.12"')
    err = _error(write_matrix, text)
    assert "YAML syntax error" in err.message
    assert err.line is not None and err.line >= _line_of(text, 'pythons: ["3.12"')


def test_not_a_mapping(write_matrix):
    err = _error(write_matrix, "- just\n- a list\n")
    assert "must be a mapping" in err.message


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEBUILD_MATRIX", raising=False)
    with pytest.raises(SagebuildError) as info:
        find_matrix(cwd=tmp_path)
    assert "no matrix.yaml" in info.value.message
    assert "--matrix" in info.value.allowed
    with pytest.raises(SagebuildError) as info:
        find_matrix(tmp_path / "nope.yaml")
    assert info.value.message == "matrix file not found"


def test_find_matrix(repo, tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEBUILD_MATRIX", raising=False)
    assert find_matrix(cwd=repo / "buildtool") == repo / "matrix.yaml"
    assert find_matrix(repo) == repo / "matrix.yaml"
    monkeypatch.setenv("SAGEBUILD_MATRIX", str(repo / "matrix.yaml"))
    assert find_matrix(cwd=tmp_path) == repo / "matrix.yaml"


def test_load_text_path_in_message(matrix_text, tmp_path):
    with pytest.raises(SagebuildError) as info:
        load_text(matrix_text.replace("package:", "packge:"), tmp_path / "matrix.yaml")
    assert "matrix.yaml:" in info.value.format()


# ---------------------------------------------------------------------------------------------
# filters


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(python=["3.12"]), 7),
        (dict(python=["312"]), 7),
        (dict(python=["cp312"]), 7),
        (dict(platform=["linux"]), 4),
        (dict(torch=["2.8"]), 4),
        (dict(torch=["2.8.0"]), 4),
        (dict(torch=["28"]), 4),
        (dict(cuda=["12.9"]), 2),
        (dict(cuda=["cu129"]), 2),
        (dict(cuda=["12.9.1"]), 2),
        (dict(platform=["linux"], torch=["2.8"], cuda=["12.9"]), 1),
        (dict(torch=["2.7", "2.11"]), 3),
        (dict(names=["linux"]), 4),
        (dict(names=["test-all"]), 4),
        (dict(names=["test-linux-pytorch27-cu128-python312"]), 1),
        (dict(names=["default"]), 1),
        (dict(names=["pytorch28"], platform=["windows"]), 2),
    ],
)
def test_select(project, kwargs, expected):
    assert len(select(project, **kwargs)) == expected


@pytest.mark.parametrize(
    ("kwargs", "field", "msg", "allowed"),
    [
        (dict(python=["3.11"]), "--python", "'3.11' matches no target", "3.12"),
        (dict(torch=["2.9"]), "--torch", "matches no target", "2.7.0, 2.8.0, 2.11.0"),
        (dict(cuda=["12.6"]), "--cuda", "matches no target", "12.8.1, 12.9.1, 13.0.2"),
        (dict(platform=["macos"]), "--platform", "matches no target", "linux, windows"),
        (dict(platform=["windows"], torch=["2.11"]), None, "select no target", None),
        (dict(names=["linux-pytorch29-cu128-python312"]), "NAMES", "unknown target", "did you mean"),
    ],
)
def test_select_errors(project, kwargs, field, msg, allowed):
    with pytest.raises(SagebuildError) as info:
        select(project, **kwargs)
    err = info.value
    assert err.exit_code == EXIT_USAGE
    assert err.field == field
    assert msg in err.message
    if allowed:
        assert allowed in err.allowed


def test_platform_name_reserved(matrix_text, write_matrix):
    err = _error(write_matrix, matrix_text.replace("  windows:\n", "  cu128:\n", 1)
                 .replace("platforms: [linux, windows]", "platforms: [linux, cu128]"))
    assert err.field == "platforms.cu128" and "built-in group" in err.message


@pytest.mark.parametrize(
    "name", ["test-windows-pytorch28-cu129-python312", "test-windows", "test-pytorch27"]
)
def test_select_test_name_without_bake_target(project, repo, name):
    """Only the test targets and groups docker-bake.hcl defines are names (windows: test: false)."""
    with pytest.raises(SagebuildError) as info:
        select(project, names=[name])
    err = info.value
    assert (err.exit_code, err.field) == (EXIT_USAGE, "NAMES")
    assert f"unknown test target or group {name!r}" in err.message
    bake = (repo / "docker-bake.hcl").read_text()
    listed = err.allowed.split("? ")[-1].split(", ")  # after "did you mean ...? "
    assert set(listed) == set(re.findall(r'^(?:target|group) "(test-[^"]+)"', bake, re.M))
