"""``matrix.yaml``: pydantic models, loading with precise errors, expansion into targets.

Validation happens once, here, at the boundary. Everything downstream (naming, rendering,
the build/test commands) works with the immutable :class:`Target` objects this module returns.

Errors are :class:`~buildtool.errors.SagebuildError` naming the file, the line (looked up in
the YAML node tree), the field and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import compat, naming
from .errors import SagebuildError

MATRIX_FILE = "matrix.yaml"
ENV_MATRIX = "SAGEBUILD_MATRIX"

# --------------------------------------------------------------------------------------------
# models


class _Model(BaseModel):
    # strict: `python: 3.12` (a YAML float) is an error, not silently "3.12" (or 3.10 -> "3.1").
    # A field's Field(examples=...) is what an error about its type shows under "allowed:".
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


ImageRef = Annotated[str, Field(min_length=1, pattern=r"^\S+$")]


class PlatformConfig(_Model):
    """One OS/architecture the wheels are built for."""

    wheel_tag: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    """platform tag of the repaired wheel, e.g. ``manylinux_2_28_x86_64``, ``win_amd64``"""
    dockerfile: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    """``templates/{dockerfile}.Dockerfile.j2`` is rendered to ``docker/{dockerfile}.Dockerfile``"""
    python_exe: str
    """the build interpreter inside the base image; ``{python}``/``{python_nodot}`` placeholders"""
    runner: str = "ubuntu-latest"
    """GitHub Actions ``runs-on`` label for this platform's jobs"""
    test: bool = True
    """whether ``test-*`` targets exist for this platform"""
    test_base_image: ImageRef | None = None
    """clean image the test stage installs the wheel into; ``{python}`` placeholder"""
    test_python_exe: str = "python3"


class CudaConfig(_Model):
    """One CUDA toolkit (key: full version ``12.8.1``)."""

    arch_list: str
    """``TORCH_CUDA_ARCH_LIST`` for targets compiled with this toolkit (``;`` separated)"""
    source: Literal["image", "pypi"]
    """where nvcc comes from: the base image (``/usr/local/cuda-X.Y``) or PyPI wheels"""
    base_images: Annotated[
        dict[str, ImageRef], Field(examples=[{"linux": "pytorch/manylinux2_28-builder:cuda12.8"}])
    ]
    """platform -> base image that provides (``image``) or can receive (``pypi``) the toolkit"""


class TorchConfig(_Model):
    """One PyTorch release (key: full version ``2.8.0``)."""

    cuda: Annotated[list[str], Field(min_length=1)]
    """the CUDA toolkits (keys of ``cuda:``) we build against this torch's matching CUDA build"""
    index_url: str | None = None
    """index torch is installed from; default: top-level ``torch_index_url``"""


class BuildBlock(_Model):
    """A product of axes to build. Omitted axes mean "all" (for ``cuda``: each torch's list)."""

    platforms: list[str] | None = None
    pythons: list[str] | None = None
    torch: list[str] | None = None
    cuda: list[str] | None = None
    torch_cuda: str | None = None
    """compile against this CUDA build of torch (``12.8``) when the toolkit differs from it"""
    abi3: bool = False
    """one ``cp39-abi3`` wheel per torch x CUDA instead of one per Python"""
    arch_list: str | None = None
    base_image: ImageRef | None = None


class ExcludeRule(_Model):
    platform: str | None = None
    python: str | None = None
    torch: str | None = None
    cuda: str | None = None


class Matrix(_Model):
    """The whole ``matrix.yaml``."""

    package: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    version: str
    torch_index_url: str = "https://download.pytorch.org/whl/{cuda_short}"
    platforms: Annotated[dict[str, PlatformConfig], Field(min_length=1)]
    pythons: Annotated[list[str], Field(min_length=1, examples=[["3.11", "3.12"]])]
    cuda: Annotated[dict[str, CudaConfig], Field(min_length=1)]
    torch: Annotated[
        dict[str, TorchConfig], Field(min_length=1, examples=[{"2.8.0": {"cuda": ["12.8.1"]}}])
    ]
    build: Annotated[
        list[BuildBlock],
        Field(min_length=1, examples=[[{"platforms": ["linux"], "pythons": ["3.12"],
                                        "torch": ["2.8.0"]}]]),
    ]
    exclude: Annotated[
        list[ExcludeRule], Field(examples=[[{"platform": "windows", "torch": "2.7"}]])
    ] = []
    groups: Annotated[
        dict[str, list[str]],
        Field(examples=[{"release": ["linux", "windows-pytorch28-cu129-python312"]}]),
    ] = {}
    """extra groups (target or group names); ``default`` here replaces the automatic default"""


# --------------------------------------------------------------------------------------------
# targets


@dataclass(frozen=True)
class Target:
    """One wheel to build (a bake target), fully resolved."""

    name: str
    platform: str
    platform_tag: str
    dockerfile: str
    python: str | None  # None for abi3
    build_python: str  # the interpreter version used to build (== python unless abi3)
    torch: str
    cuda: str
    torch_cuda: str  # the CUDA build of torch this links against ("12.8")
    arch_list: str
    cuda_source: str
    base_image: str
    python_exe: str
    index_url: str
    package: str
    version: str
    testable: bool
    test_base_image: str | None
    test_python_exe: str
    runner: str

    @property
    def abi3(self) -> bool:
        return self.python is None

    @property
    def test_name(self) -> str:
        return naming.test_target_name(self.name)

    @property
    def cuda_short(self) -> str:
        return naming.cuda_short(self.cuda)

    @property
    def cuda_major(self) -> str:
        return str(Version(self.cuda).major)

    @property
    def cuda_major_minor(self) -> str:
        return compat.major_minor(self.cuda)

    @property
    def torch_short(self) -> str:
        return naming.torch_short(self.torch)

    @property
    def python_short(self) -> str:
        return naming.python_short(self.python)

    @property
    def local_version(self) -> str:
        return naming.local_version(self.cuda, self.torch)

    @property
    def full_version(self) -> str:
        return naming.full_version(self.version, self.cuda, self.torch)

    @property
    def wheel_filename(self) -> str:
        return naming.wheel_filename(
            self.package, self.version, self.cuda, self.torch, self.python, self.platform_tag
        )

    @property
    def torch_requirement(self) -> str:
        return naming.torch_requirement(self.torch)

    @property
    def python_tag(self) -> str:
        return "-".join(naming.python_tags(self.python))

    @property
    def auditwheel_excludes(self) -> list[str]:
        return compat.auditwheel_excludes(self.cuda)

    @property
    def output_dir(self) -> str:
        return f"./builder/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """Everything a consumer (JSON, GitHub matrix, the build command) needs."""
        return {
            "target": self.name,
            "test_target": self.test_name if self.testable else None,
            "platform": self.platform,
            "platform_tag": self.platform_tag,
            "python": self.python or "abi3",
            "build_python": self.build_python,
            "abi3": self.abi3,
            "torch": self.torch,
            "cuda": self.cuda,
            "cuda_short": self.cuda_short,
            "torch_cuda": self.torch_cuda,
            "arch_list": self.arch_list,
            "cuda_source": self.cuda_source,
            "base_image": self.base_image,
            "index_url": self.index_url,
            "version": self.full_version,
            "wheel": self.wheel_filename,
            "torch_requirement": self.torch_requirement,
            "dockerfile": f"docker/{self.dockerfile}.Dockerfile",
            "output": self.output_dir,
            "runner": self.runner,
        }


@dataclass
class Project:
    """A loaded, validated matrix plus where it lives."""

    root: Path
    matrix_path: Path
    matrix: Matrix
    targets: list[Target]
    groups: dict[str, list[str]]  # group name -> bake target names (build or test targets)
    _by_name: dict[str, Target] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.targets}

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    def target(self, name: str) -> Target:
        return self._by_name[name]

    @property
    def test_targets(self) -> list[Target]:
        return [t for t in self.targets if t.testable]


# --------------------------------------------------------------------------------------------
# YAML with line numbers


class _Lines:
    """Maps a field path (``("torch", "2.7.0", "cuda", 1)``) to a line in the YAML text."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root
        self._keys = yaml.constructor.SafeConstructor()

    def _key(self, node: yaml.Node) -> str | None:
        """A mapping key as the loaded data (and a path) has it: ``12.10`` -> ``"12.1"``."""
        if not isinstance(node, yaml.ScalarNode):
            return None
        # the merge key << has no constructor of its own (the loader resolves it in the mapping)
        if node.tag not in self._keys.yaml_constructors:
            return node.value
        return str(self._keys.construct_object(node))

    def _walk(self, path: tuple[Any, ...]) -> tuple[list[yaml.Node], yaml.Node | None]:
        """The nodes that name the steps of ``path`` found (a key, a list item), and the node
        ``path`` leads to (None where a step is not found)."""
        steps: list[yaml.Node] = []
        node = self.root
        for elem in path:
            if elem == "[key]" and steps:  # pydantic's location of a mapping key itself
                node = steps[-1]
                continue
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if self._key(k) == str(elem)), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(elem, int) \
                    and 0 <= elem < len(node.value):
                pair = (node.value[elem], node.value[elem])
            else:
                pair = None
            if pair is None:
                return steps, None
            steps.append(pair[0])
            node = pair[1]
        return steps, node

    def line(self, path: tuple[Any, ...]) -> int | None:
        """The line of ``path``, or of the deepest part of it that is in the file."""
        if self.root is None:
            return None
        steps, _ = self._walk(path)
        return (steps[-1] if steps else self.root).start_mark.line + 1

    def scalar(self, path: tuple[Any, ...]) -> str | None:
        """The scalar exactly as written in the file (``3.10``, not the float 3.1)."""
        _, node = self._walk(path)
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def duplicate_key(self) -> tuple[int, str, tuple[Any, ...]] | None:
        """First mapping key that appears twice (PyYAML would silently keep the last one)."""

        def walk(node: yaml.Node, path: tuple[Any, ...]):
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for key, value in node.value:
                    k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
                    if k in seen:
                        return key.start_mark.line + 1, k, path
                    seen.add(k)
                    found = walk(value, path + (k,))
                    if found:
                        return found
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    found = walk(item, path + (i,))
                    if found:
                        return found
            return None

        return walk(self.root, ()) if self.root is not None else None


def field_path(path: tuple[Any, ...]) -> str:
    """``("torch", "2.7.0", "cuda", 1)`` -> ``torch."2.7.0".cuda[1]``."""
    out = ""
    for elem in path:
        if isinstance(elem, int):
            out += f"[{elem}]"
        else:
            s = str(elem)
            if not s.replace("_", "").replace("-", "").isalnum():
                s = f'"{s}"'
            out += ("." if out else "") + s
    return out or "(top level)"


# --------------------------------------------------------------------------------------------
# finding and loading


def find_matrix(explicit: Path | str | None = None, cwd: Path | None = None) -> Path:
    """``--matrix PATH`` (a file, or a directory holding matrix.yaml), else ``$SAGEBUILD_MATRIX``,
    else the first ``matrix.yaml`` in the current directory or one of its parents."""
    for source, value in (("--matrix", explicit), (ENV_MATRIX, os.environ.get(ENV_MATRIX))):
        if value:
            p = Path(value).expanduser()
            if p.is_dir():
                p = p / MATRIX_FILE
            if not p.is_file():
                raise SagebuildError(
                    "matrix file not found",
                    file=p,
                    field=source,
                    allowed=f"a path to {MATRIX_FILE} or to the directory that holds it",
                )
            return p.resolve()
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / MATRIX_FILE).is_file():
            return d / MATRIX_FILE
    raise SagebuildError(
        f"no {MATRIX_FILE} in {here} or any parent directory",
        file=here / MATRIX_FILE,
        allowed=f"run inside the repository, pass --matrix PATH, or set {ENV_MATRIX}",
    )


def load_project(explicit: Path | str | None = None, cwd: Path | None = None) -> Project:
    """Find, parse, validate and expand ``matrix.yaml``. Raises :class:`SagebuildError`."""
    path = find_matrix(explicit, cwd)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SagebuildError(f"cannot read the matrix file: {exc.strerror}", file=path) from exc
    except UnicodeDecodeError as exc:
        raise SagebuildError(
            f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}",
            file=_display(path),
            line=exc.object.count(b"\n", 0, exc.start) + 1,
            allowed="a UTF-8 encoded file (save it as UTF-8 in your editor)",
        ) from None
    return load_text(text, path)


def load_text(text: str, path: Path) -> Project:
    rel = _display(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        raise SagebuildError(
            msg, file=rel, line=mark.line + 1 if mark else None, allowed=None
        ) from exc
    lines = _Lines(root)
    dup = lines.duplicate_key()
    if dup:
        line, key, at = dup
        raise SagebuildError(
            f"duplicate key {key!r} (YAML would silently keep only the last one)",
            file=rel,
            line=line,
            field=field_path(at + (key,)),
            allowed="each key once per mapping",
        )
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise SagebuildError(
            "the matrix file must be a mapping",
            file=rel,
            line=1,
            allowed="keys " + ", ".join(Matrix.model_fields),
        )
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc, rel, lines) from None
    v = _Validator(matrix, rel, lines)
    targets = v.expand()
    groups = v.groups(targets)
    return Project(
        root=path.parent, matrix_path=path, matrix=matrix, targets=targets, groups=groups
    )


def _display(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated/Optional to the underlying type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_at(loc: tuple[Any, ...]) -> tuple[Any, Any]:
    """The type at ``loc`` inside :class:`Matrix` and an example value of it (None if none):
    the field's ``examples``, or the part at ``loc`` of an enclosing field's example."""
    tp: Any = Matrix
    example: Any = None
    for elem in loc:
        if _is_model(tp):
            if elem not in tp.model_fields:
                return None, None
            info = tp.model_fields[elem]
            tp = info.annotation
            if info.examples:
                example = info.examples[0]
            else:
                example = example.get(elem) if isinstance(example, dict) else None
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
            # every entry has the shape of the example's first one
            entries = list(example.values()) if isinstance(example, dict) else example
            example = entries[0] if isinstance(entries, list) and entries else None
        else:
            return None, None
        tp = _unwrap(tp)
    return tp, example


def _words(tp: Any) -> str | None:
    """What a YAML value of type ``tp`` looks like, in plain words."""
    origin = typing.get_origin(tp)
    item = _unwrap(typing.get_args(tp)[-1]) if origin in (dict, list) else None
    if _is_model(tp):
        return "a mapping with keys " + ", ".join(tp.model_fields)
    if _is_model(item):
        of = "mappings with keys " + ", ".join(item.model_fields)
        return f"a list of {of}" if origin is list else f"a mapping whose values are {of}"
    return {list: "a list", dict: "a mapping", bool: "true or false", str: "a string"}.get(
        origin or tp
    )


def _got(value: Any, written: str) -> str:
    """The value of a type error, as the file has it."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {written}"
    if isinstance(value, (int, float)):
        return f"the number {written}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    return "a mapping" if isinstance(value, dict) else "a list"


# pydantic's type errors -> what was expected, in the words of matrix.yaml
_EXPECTED = {
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "bool_type": "a boolean",
    "string_type": "a string",
}


def _from_validation_error(exc: ValidationError, file: Path, lines: _Lines) -> SagebuildError:
    # a misspelt key shows up as "unknown key" AND "missing key": the unknown one is the cause
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(err["loc"])
    more = f" (and {len(errors) - 1} more problem(s); fix this one first)" if len(errors) > 1 else ""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx", {})
    written = lines.scalar(loc) or str(value)
    tp, example = _field_at(loc)
    allowed = _words(tp)
    msg = err["msg"]
    if kind == "extra_forbidden":
        parent, _ = _field_at(loc[:-1])
        keys = list(parent.model_fields) if _is_model(parent) else []
        msg = f"unknown key {loc[-1]!r}"
        allowed, example = (_suggest(str(loc[-1]), keys) if keys else None), None
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "string_type" and isinstance(value, (int, float)):  # bool too: yes, no, on
        what = "a string key" if loc[-1:] == ("[key]",) else "a string"
        reads = f" (YAML reads it as {value!r})" if str(value) != written else ""
        msg = f"expected {what}, got {_got(value, written)}{reads}"
        allowed, example = f'a quoted string: "{written}"', None
        if "." in written:
            allowed += " (unquoted, YAML reads 3.10 as the number 3.1)"
    elif kind in _EXPECTED:
        msg = f"expected {_EXPECTED[kind]}, got {_got(value, written)}"
    elif kind == "too_short":
        container = "list" if ctx.get("field_type") == "List" else "mapping"
        msg = f"empty {container}: at least {ctx['min_length']} entry is needed"
    elif kind == "string_too_short":
        msg = "empty string"
    elif kind == "string_pattern_mismatch":
        msg = f"{value!r} does not match the pattern {ctx['pattern']}"
        allowed = f"a string matching {ctx['pattern']}"
    elif kind == "literal_error":
        allowed = str(ctx.get("expected", ""))
    if example is not None and allowed:
        allowed += f", e.g. {json.dumps(example)}"
    # a mapping key: name it as written (12.10), not as loaded (12.1) plus pydantic's "[key]"
    path = loc[:-2] + (written,) if loc[-1:] == ("[key]",) else loc
    return SagebuildError(
        msg + more, file=file, line=lines.line(loc), field=field_path(path), allowed=allowed
    )


# --------------------------------------------------------------------------------------------
# semantic validation and expansion


class _Validator:
    def __init__(self, matrix: Matrix, file: Path, lines: _Lines) -> None:
        self.m = matrix
        self.file = file
        self.lines = lines

    def fail(self, path: tuple[Any, ...], message: str, allowed: str | None = None):
        raise SagebuildError(
            message,
            file=self.file,
            line=self.lines.line(path),
            field=field_path(path),
            allowed=allowed,
        )

    # ---- scalar checks -------------------------------------------------------------------
    def check_version(self, path, value: str, parts: int) -> Version:
        try:
            v = Version(value)
        except InvalidVersion:
            v = None
        if v is None or len(v.release) != parts or v.local or v.pre or v.dev:
            example = {2: '"3.12"', 3: '"2.8.0"'}[parts]
            self.fail(path, f"{value!r} is not a version of the form {example}")
        return v

    def check_python(self, path, value: str) -> None:
        self.check_version(path, value, 2)
        if value not in compat.KNOWN_PYTHONS:
            self.fail(path, f"unsupported Python {value}", ", ".join(compat.KNOWN_PYTHONS))

    def check_template(self, path, value: str, keys: set[str]) -> None:
        allowed = ["{" + k + "}" for k in sorted(keys)]
        try:
            fields = list(string.Formatter().parse(value))
        except ValueError as exc:  # a lone { or }: str.format() would raise it later, unhandled
            self.fail(path, f"unbalanced braces: {exc}",
                      ", ".join(allowed) + " ({{ and }} for literal braces)")
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            # compared as written: {python:d} or {python!x} parse, but str.format() rejects them
            written = "{" + name + (f"!{conversion}" if conversion else "") \
                + (f":{spec}" if spec else "") + "}"
            if written not in allowed:
                self.fail(path, f"unknown placeholder {written}", ", ".join(allowed))

    def check_arch(self, path, arch_list: str, cuda: str) -> None:
        problem = compat.check_arch_list(arch_list, cuda)
        if problem:
            self.fail(
                path,
                problem,
                "a ';'-separated list of " + ", ".join(compat.ARCH_MIN_CUDA) + " (+PTX allowed)",
            )

    # ---- top-level sections --------------------------------------------------------------
    def check_sections(self) -> None:
        m = self.m
        self.check_version(("version",), m.version, 3)
        self.check_template(("torch_index_url",), m.torch_index_url, {"cuda_short"})
        for name, p in m.platforms.items():
            if not naming.NAME_RE.match(name) or "-" in name:
                self.fail(("platforms", name), f"invalid platform name {name!r}", "[a-z0-9_]+")
            if name in ("all", "default", "abi3") or re.fullmatch(r"(pytorch|cu|python)\d+", name):
                self.fail(("platforms", name), f"platform name {name!r} is a built-in group name",
                          "a name such as linux, windows, linux_aarch64")
            self.check_template(
                ("platforms", name, "python_exe"), p.python_exe, {"python", "python_nodot"}
            )
            if p.test_base_image:
                self.check_template(
                    ("platforms", name, "test_base_image"), p.test_base_image, {"python"}
                )
            if p.test and not p.test_base_image:
                self.fail(("platforms", name, "test_base_image"), "required when test is true")
        if len(set(m.pythons)) != len(m.pythons):
            dup = next(p for p in m.pythons if m.pythons.count(p) > 1)
            self.fail(("pythons", len(m.pythons) - 1 - m.pythons[::-1].index(dup)),
                      f"duplicate entry {dup!r}", "each Python once")
        for i, py in enumerate(m.pythons):
            self.check_python(("pythons", i), py)
        for cu, cfg in m.cuda.items():
            self.check_version(("cuda", cu), cu, 3)
            if compat.major_minor(cu) not in compat.KNOWN_CUDA:
                self.fail(("cuda", cu), f"unsupported CUDA {cu}",
                          "CUDA " + ", ".join(f"{c}.x" for c in compat.KNOWN_CUDA))
            self.check_arch(("cuda", cu, "arch_list"), cfg.arch_list, cu)
            for plat in cfg.base_images:
                if plat not in m.platforms:
                    self.fail(("cuda", cu, "base_images", plat), f"unknown platform {plat!r}",
                              ", ".join(m.platforms))
        shorts: dict[str, str] = {}
        for cu in m.cuda:
            s = naming.cuda_short(cu)
            if s in shorts:
                self.fail(("cuda", cu), f"CUDA {cu} and {shorts[s]} both name targets {s}",
                          "one toolkit per CUDA major.minor")
            shorts[s] = cu
        tshorts: dict[str, str] = {}
        for tv, cfg in m.torch.items():
            self.check_version(("torch", tv), tv, 3)
            mm = compat.major_minor(tv)
            if mm not in compat.TORCH_CUDA_BUILDS:
                self.fail(("torch", tv), f"unsupported PyTorch {tv} (its CUDA builds are not "
                          "recorded in buildtool/compat.py)",
                          "PyTorch " + ", ".join(f"{t}.x" for t in compat.TORCH_CUDA_BUILDS))
            s = naming.torch_short(tv)
            if s in tshorts:
                self.fail(("torch", tv), f"PyTorch {tv} and {tshorts[s]} both name targets {s}",
                          "one release per PyTorch major.minor")
            tshorts[s] = tv
            if cfg.index_url:
                self.check_template(("torch", tv, "index_url"), cfg.index_url, {"cuda_short"})
            for i, cu in enumerate(cfg.cuda):
                path = ("torch", tv, "cuda", i)
                if cu not in m.cuda:
                    self.fail(path, f"CUDA {cu!r} is not declared under cuda:", ", ".join(m.cuda))
                if cfg.cuda.count(cu) > 1:
                    self.fail(path, f"duplicate entry {cu!r}", "each CUDA once")
                if not compat.torch_ships(tv, cu):
                    self.fail(path, f"PyTorch {mm} has no CUDA {compat.major_minor(cu)} build",
                              "CUDA " + ", ".join(compat.TORCH_CUDA_BUILDS[mm]) + f" for PyTorch {mm}")
        for g, members in m.groups.items():
            if not naming.NAME_RE.match(g):
                self.fail(("groups", g), f"invalid group name {g!r}", "[a-z0-9][a-z0-9_-]*")
        # a value no declared platform/version matches would only say "matches no target"
        declared = {"platform": list(m.platforms), "python": [*m.pythons, None],
                    "torch": list(m.torch), "cuda": list(m.cuda)}
        for i, rule in enumerate(m.exclude):
            for axis, value in rule.model_dump(exclude_none=True).items():
                what, match = _EXCLUDE_AXES[axis]
                if not any(match(value, d) for d in declared[axis]):
                    self.fail(("exclude", i, axis), f"unknown {what} {value!r}",
                              ", ".join(d or "abi3" for d in declared[axis]))

    # ---- expansion -----------------------------------------------------------------------
    def pick(self, path, values: list[str] | None, declared: list[str], what: str) -> list[str]:
        if values is None:
            return list(declared)
        if not values:
            self.fail(path, f"empty list of {what}", ", ".join(declared))
        for i, v in enumerate(values):
            if v not in declared:
                self.fail(path + (i,), f"unknown {what[:-1] if what.endswith('s') else what} {v!r}",
                          ", ".join(declared))
            if values.count(v) > 1:
                self.fail(path + (i,), f"duplicate entry {v!r}", f"each {what} once")
        return list(values)

    def expand(self) -> list[Target]:
        self.check_sections()
        m = self.m
        found: dict[str, tuple[Target, tuple[Any, ...]]] = {}
        excluded_used = [False] * len(m.exclude)
        for bi, block in enumerate(m.build):
            bp = ("build", bi)
            plats = self.pick(bp + ("platforms",), block.platforms, list(m.platforms), "platforms")
            pys = self.pick(bp + ("pythons",), block.pythons, list(m.pythons), "pythons")
            torches = self.pick(bp + ("torch",), block.torch, list(m.torch), "torch")
            if block.cuda is not None:
                self.pick(bp + ("cuda",), block.cuda, list(m.cuda), "cuda")
            if block.torch_cuda is not None:
                self.check_version(bp + ("torch_cuda",), block.torch_cuda, 2)
            for tv in torches:
                tcfg = m.torch[tv]
                cudas = tcfg.cuda if block.cuda is None else block.cuda
                for ci, cu in enumerate(cudas):
                    cpath = bp + ("cuda", ci) if block.cuda is not None else ("torch", tv, "cuda", ci)
                    torch_cuda = self.torch_cuda_for(bp, cpath, tv, cu, block.torch_cuda)
                    cfg = m.cuda[cu]
                    arch = block.arch_list or cfg.arch_list
                    if block.arch_list:
                        self.check_arch(bp + ("arch_list",), block.arch_list, cu)
                    py_axis: list[str | None]
                    if block.abi3:
                        ok = [p for p in pys if p in compat.TORCH_PYTHONS[compat.major_minor(tv)]]
                        if not ok:
                            self.fail(bp + ("pythons",), f"no Python of {pys} has PyTorch {tv} wheels",
                                      ", ".join(compat.TORCH_PYTHONS[compat.major_minor(tv)]))
                        py_axis = [None]
                        build_py = max(ok, key=Version)
                    else:
                        py_axis = list(pys)
                    for plat in plats:
                        pcfg = m.platforms[plat]
                        base = block.base_image or cfg.base_images.get(plat)
                        if base is None:
                            self.fail(("cuda", cu, "base_images"),
                                      f"no base image for platform {plat!r} (needed by build[{bi}])",
                                      f"a mapping with a {plat}: entry")
                        for py in py_axis:
                            bpy = build_py if py is None else py
                            supported = compat.TORCH_PYTHONS[compat.major_minor(tv)]
                            if bpy not in supported:
                                self.fail(bp + ("pythons",),
                                          f"PyTorch {tv} publishes no wheels for Python {bpy}",
                                          ", ".join(supported))
                            t = self.make_target(plat, pcfg, py, bpy, tv, cu, torch_cuda, arch,
                                                 cfg.source, base)
                            hit = self.excluded(t)
                            if hit is not None:
                                excluded_used[hit] = True
                                continue
                            if t.name in found:
                                self.fail(bp, f"duplicate entry: target {t.name} is also produced "
                                          f"by build[{found[t.name][1][1]}]",
                                          "each platform x Python x torch x CUDA once")
                            found[t.name] = (t, bp)
        for i, used in enumerate(excluded_used):
            if not used:
                self.fail(("exclude", i), "this exclude rule matches no target",
                          "rules that match at least one target of the build blocks")
        if not found:
            self.fail(("build",), "the matrix selects no target", "at least one target")
        order = {p: i for i, p in enumerate(m.platforms)}
        return sorted(
            (t for t, _ in found.values()),
            key=lambda t: (order[t.platform], Version(t.torch), Version(t.cuda),
                           Version(t.python or "0")),
        )

    def torch_cuda_for(self, bp, cpath, tv: str, cu: str, explicit: str | None) -> str:
        mm = compat.major_minor(tv)
        shipped = compat.TORCH_CUDA_BUILDS[mm]
        if explicit is None:
            if cu not in self.m.torch[tv].cuda and not compat.torch_ships(tv, cu):
                self.fail(cpath,
                          f"PyTorch {tv} has no CUDA {compat.major_minor(cu)} build; set "
                          "torch_cuda: to the torch CUDA build this entry compiles against",
                          "CUDA " + ", ".join(shipped) + f" for PyTorch {mm}")
            if cu not in self.m.torch[tv].cuda:
                self.fail(cpath, f"CUDA {cu} is not listed for PyTorch {tv} under torch:",
                          ", ".join(self.m.torch[tv].cuda))
            return compat.major_minor(cu)
        if explicit not in shipped:
            self.fail(bp + ("torch_cuda",), f"PyTorch {tv} has no CUDA {explicit} build",
                      ", ".join(shipped))
        if Version(explicit).major != Version(cu).major:
            self.fail(bp + ("torch_cuda",),
                      f"torch's CUDA {explicit} build and the CUDA {cu} toolkit differ in major "
                      "version", f"a CUDA {Version(cu).major}.x build of PyTorch {mm}")
        return explicit

    def make_target(self, plat, pcfg: PlatformConfig, py, bpy, tv, cu, torch_cuda, arch,
                    source, base) -> Target:
        m = self.m
        index = (m.torch[tv].index_url or m.torch_index_url).format(
            cuda_short=naming.cuda_short(torch_cuda)
        )
        fmt = {"python": bpy, "python_nodot": naming.nodot(bpy)}
        return Target(
            name=naming.target_name(plat, tv, cu, py),
            platform=plat,
            platform_tag=pcfg.wheel_tag,
            dockerfile=pcfg.dockerfile,
            python=py,
            build_python=bpy,
            torch=tv,
            cuda=cu,
            torch_cuda=torch_cuda,
            arch_list=";".join(compat.parse_arch_list(arch)),
            cuda_source=source,
            base_image=base,
            python_exe=pcfg.python_exe.format(**fmt),
            index_url=index,
            package=m.package,
            version=m.version,
            testable=pcfg.test,
            test_base_image=pcfg.test_base_image.format(python=bpy) if pcfg.test_base_image else None,
            test_python_exe=pcfg.test_python_exe,
            runner=pcfg.runner,
        )

    def excluded(self, t: Target) -> int | None:
        for i, rule in enumerate(self.m.exclude):
            given = rule.model_dump(exclude_none=True)
            if given and all(_EXCLUDE_AXES[k][1](v, getattr(t, k)) for k, v in given.items()):
                return i
        return None

    # ---- groups --------------------------------------------------------------------------
    def groups(self, targets: list[Target]) -> dict[str, list[str]]:
        names = [t.name for t in targets]
        tests = [t.test_name for t in targets if t.testable]
        g: dict[str, list[str]] = {"all": names, "default": [self.default(targets)]}
        g["test-all"] = tests
        for plat in self.m.platforms:
            members = [t.name for t in targets if t.platform == plat]
            if members:
                g[plat] = members
            tmembers = [t.test_name for t in targets if t.platform == plat and t.testable]
            if tmembers:
                g[naming.test_target_name(plat)] = tmembers
        for key in ("torch_short", "cuda_short", "python_short"):
            for t in targets:
                g.setdefault(getattr(t, key), [])
                if t.name not in g[getattr(t, key)]:
                    g[getattr(t, key)].append(t.name)
        for gname, members in self.m.groups.items():
            path = ("groups", gname)
            if gname in names or gname in tests:
                self.fail(path, f"group name {gname!r} is already a target name")
            if gname in g and gname != "default":
                self.fail(path, f"{gname!r} is a built-in group", "any other name, or default")
            if not members:
                self.fail(path, "empty group", "target or group names")
            resolved: list[str] = []
            for i, member in enumerate(members):
                if member in names or member in tests:
                    items = [member]
                elif member in g:
                    items = g[member]
                else:
                    self.fail(path + (i,), f"unknown target or group {member!r}",
                              _suggest(member, names + list(g)))
                resolved += [x for x in items if x not in resolved]
            g[gname] = resolved
        return g

    def default(self, targets: list[Target]) -> str:
        """The Linux wheel of the newest torch (then newest CUDA, newest Python)."""
        plats = [t for t in targets if t.platform == "linux"] or [
            t for t in targets if t.platform == next(iter(self.m.platforms))
        ]
        best = max(
            plats,
            key=lambda t: (Version(t.torch), Version(t.cuda), Version(t.python or "0")),
        )
        return best.name


# --------------------------------------------------------------------------------------------
# selection (the CLI's filters)


def _norm_version_token(value: str, prefix: str) -> str:
    v = value.strip().lower()
    for p in (prefix, "cp", "py", "python", "pytorch", "torch", "cu"):
        if v.startswith(p) and v[len(p):][:1].isdigit():
            v = v[len(p):]
            break
    return v


def _match_version(value: str, full: str, prefix: str) -> bool:
    """``"2.8"``, ``"2.8.0"``, ``"28"``, ``"pytorch28"`` match 2.8.0; ``"12.9"``, ``"cu129"``,
    ``"129"`` match 12.9.1."""
    v = _norm_version_token(value, prefix)
    fv = Version(full)
    if "." in v:
        parts = v.split(".")
        return list(map(str, fv.release[: len(parts)])) == parts
    return v == f"{fv.major}{fv.minor}"


def _match_python(value: str, python: str | None) -> bool:
    v = value.strip().lower()
    if v in ("abi3", "cp39-abi3"):
        return python is None
    if python is None:
        return False
    return _match_version(v, python, "python")


# exclude-rule key (= Target attribute) -> (what it names, does the rule's value match a value)
_EXCLUDE_AXES = {
    "platform": ("platform", lambda v, x: v == x),
    "python": ("Python", _match_python),
    "torch": ("PyTorch version", lambda v, x: _match_version(v, x, "pytorch")),
    "cuda": ("CUDA version", lambda v, x: _match_version(v, x, "cu")),
}


def _suggest(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.6)
    base = ", ".join(choices)
    return (f"did you mean {', '.join(close)}? " if close else "") + base


def resolve_names(project: Project, names: list[str]) -> list[Target]:
    """Target / test-target / group names -> build targets (order of the matrix).

    The names are exactly those of docker-bake.hcl: a test target or test group exists only
    where the platform has tests, so ``test-windows`` is unknown when windows has ``test: false``.
    """
    build_of = {t.name: t.name for t in project.targets}
    build_of |= {t.test_name: t.name for t in project.test_targets}
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip()
        if name not in build_of and name not in project.groups:
            test = name.startswith(naming.TEST_PREFIX)
            known = [n for n in [*build_of, *project.groups]
                     if n.startswith(naming.TEST_PREFIX) or not test]
            raise SagebuildError(
                f"unknown {'test ' if test else ''}target or group {raw!r}",
                file=_display(project.matrix_path),
                field="NAMES",
                allowed=_suggest(raw, known),
            )
        # groups hold target and test-target names only (_Validator.groups resolves nesting)
        wanted.update(build_of[m] for m in project.groups.get(name, [name]))
    return [t for t in project.targets if t.name in wanted]


def select(
    project: Project,
    names: list[str] | None = None,
    platform: list[str] | None = None,
    python: list[str] | None = None,
    torch: list[str] | None = None,
    cuda: list[str] | None = None,
) -> list[Target]:
    """Apply the CLI filters. A filter value that matches nothing in the matrix, or a
    combination that selects no target, is a :class:`SagebuildError` (exit 2)."""
    targets = resolve_names(project, names) if names else list(project.targets)
    file = _display(project.matrix_path)
    axes = [
        ("--platform", platform, lambda v, t: v == t.platform,
         sorted({t.platform for t in project.targets}, key=list(project.matrix.platforms).index)),
        ("--python", python, lambda v, t: _match_python(v, t.python),
         sorted({t.python or "abi3" for t in project.targets})),
        ("--torch", torch, lambda v, t: _match_version(v, t.torch, "pytorch"),
         sorted({t.torch for t in project.targets}, key=Version)),
        ("--cuda", cuda, lambda v, t: _match_version(v, t.cuda, "cu"),
         sorted({t.cuda for t in project.targets}, key=Version)),
    ]
    for opt, values, fn, allowed in axes:
        if not values:
            continue
        for v in values:
            if not any(fn(v, t) for t in project.targets):
                raise SagebuildError(
                    f"{v!r} matches no target of the matrix",
                    file=file,
                    field=opt,
                    allowed=", ".join(allowed),
                )
        targets = [t for t in targets if any(fn(v, t) for v in values)]
    if not targets:
        given = " ".join(
            [*(names or [])]
            + [f"{opt} {v}" for opt, values, _, _ in axes for v in (values or [])]
        )
        raise SagebuildError(
            f"the filters select no target: {given}",
            file=file,
            allowed="combinations listed by `sagebuild matrix` (no filters)",
        )
    return targets

