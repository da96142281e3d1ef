"""Wheels: rename/retag, metadata, GPU-architecture inspection, collection into ``./builder/``.

Pure functions over wheel *contents* (``dict[str, bytes]``) do the work (:func:`retag`,
:func:`record_for`, :func:`fatbin_archs`, :func:`missing_archs`, :func:`simple_index`,
:func:`manifest_entry`); the I/O edges (:func:`read_wheel`, :func:`write_wheel`, :func:`collect`,
:func:`write_index`) only read and write files, always atomically (write a temporary file next
to the destination, then ``os.replace``), so a failed or interrupted build leaves every wheel
already in ``./builder/`` intact and rebuilding a target replaces only its own wheel.

The collected name is ``{dist}-{version}+{local}-{python}-{abi}-{platform}.whl`` where the local
version (``cu129torch2.8``) comes from the target and the tags are the ones the wheel really
has after ``auditwheel repair`` (a wheel is never re-tagged to a Python or platform it was not
built for: a cp311 build stays cp311 even when the target's name says python312).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
import struct
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Iterable

from filelock import FileLock
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from .errors import EXIT_FAILURE, SagebuildError
from .gpucode import GpuCode, missing_archs, so_archs

MANIFEST = "manifest.json"
SIMPLE = "simple"
STAGING = ".staging"
BUILD_INFO = "build-info.json"

Contents = dict[str, bytes]


# ---------------------------------------------------------------------------------------------
# names


def dist_name(package: str) -> str:
    """Wheel file-name form of a project name: ``sage-attention`` -> ``sage_attention``."""
    return canonicalize_name(package).replace("-", "_")


def compress_tags(tags: Iterable[Tag]) -> str:
    """``{cp312-cp312-manylinux_2_27_x86_64, cp312-cp312-manylinux_2_28_x86_64}`` ->
    ``cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64`` (PEP 425 compressed tag set).
    Fails when the tags are not a product of their interpreters x abis x platforms."""
    tags = set(tags)
    if not tags:
        raise ValueError("a wheel needs at least one tag")
    interps = sorted({t.interpreter for t in tags})
    abis = sorted({t.abi for t in tags})
    plats = sorted({t.platform for t in tags})
    product = {Tag(i, a, p) for i in interps for a in abis for p in plats}
    if product != tags:
        raise ValueError(f"tags are not a compressible product: {sorted(map(str, tags))}")
    return "-".join(".".join(x) for x in (interps, abis, plats))


def wheel_filename(package: str, version: str, tags: Iterable[Tag]) -> str:
    return f"{dist_name(package)}-{Version(version)}-{compress_tags(tags)}.whl"


def with_local(version: str, local: str) -> str:
    """``2.2.0`` + ``cu129torch2.8`` -> ``2.2.0+cu129torch2.8`` (an existing local label is
    replaced, so collecting twice is idempotent)."""
    public = Version(version).public
    return str(Version(f"{public}+{local}"))


# ---------------------------------------------------------------------------------------------
# RECORD


def record_hash(data: bytes) -> str:
    """``sha256=<urlsafe base64, no padding>`` as in a wheel's RECORD."""
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def record_for(contents: Contents, record_path: str) -> bytes:
    """The RECORD file for ``contents`` (every file hashed, RECORD itself without hash)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for name in sorted(contents):
        if name == record_path:
            continue
        data = contents[name]
        writer.writerow([name, record_hash(data), str(len(data))])
    writer.writerow([record_path, "", ""])
    return out.getvalue().encode("utf-8")


def dist_info_dir(contents: Contents) -> str:
    """The single top-level ``*.dist-info`` directory of a wheel."""
    dirs = {n.split("/", 1)[0] for n in contents if "/" in n and n.split("/", 1)[0].endswith(".dist-info")}
    if len(dirs) != 1:
        raise ValueError(f"a wheel must hold exactly one .dist-info directory, found {sorted(dirs)}")
    return dirs.pop()


def verify_record(contents: Contents) -> list[str]:
    """Problems with the wheel's RECORD (empty list: every file listed with the right hash)."""
    di = dist_info_dir(contents)
    record_path = f"{di}/RECORD"
    if record_path not in contents:
        return [f"{record_path} is missing"]
    problems = []
    listed: dict[str, tuple[str, str]] = {}
    for row in csv.reader(io.StringIO(contents[record_path].decode("utf-8"))):
        if row:
            listed[row[0]] = (row[1], row[2]) if len(row) >= 3 else ("", "")
    for name, data in contents.items():
        if name == record_path:
            continue
        if name not in listed:
            problems.append(f"{name} is not in RECORD")
            continue
        digest, size = listed[name]
        if digest != record_hash(data):
            problems.append(f"{name}: RECORD hash {digest or '(none)'} != {record_hash(data)}")
        if size and int(size) != len(data):
            problems.append(f"{name}: RECORD size {size} != {len(data)}")
    for name in listed:
        if name not in contents:
            problems.append(f"RECORD lists {name}, which the wheel does not hold")
    return problems


# ---------------------------------------------------------------------------------------------
# METADATA / WHEEL (RFC 822 style; edited line-wise so nothing else changes)


def _headers(text: str) -> tuple[list[str], str]:
    """Split a METADATA/WHEEL text into header lines (continuations joined) and the body."""
    head, sep, body = text.partition("\n\n")
    lines: list[str] = []
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += "\n" + line
        elif line:
            lines.append(line)
    return lines, (sep + body if sep else "")


def _key(line: str) -> str:
    return line.split(":", 1)[0].strip().lower()


def _value(line: str) -> str:
    return line.split(":", 1)[1].strip() if ":" in line else ""


def rewrite_metadata(text: str, version: str, requires: Iterable[str] = ()) -> str:
    """Set ``Version`` and make each requirement in ``requires`` the only requirement on its
    project (``torch==2.8.*`` replaces any other ``Requires-Dist: torch...``); keeps the rest."""
    reqs = [Requirement(r) for r in requires]
    names = {canonicalize_name(r.name) for r in reqs}
    lines, body = _headers(text)
    out: list[str] = []
    have_version = False
    last_req = None
    for line in lines:
        key = _key(line)
        if key == "version":
            out.append(f"Version: {version}")
            have_version = True
            continue
        if key == "requires-dist":
            try:
                req = Requirement(_value(line))
            except InvalidRequirement:
                req = None
            if req is not None and canonicalize_name(req.name) in names and req.marker is None:
                continue
        out.append(line)
        if key == "requires-dist":
            last_req = len(out)
    if not have_version:
        raise ValueError("METADATA has no Version field")
    insert = last_req if last_req is not None else len(out)
    out[insert:insert] = [f"Requires-Dist: {r}" for r in reqs]
    return "\n".join(out) + "\n" + (body if body else "")


def metadata_fields(text: str) -> dict[str, list[str]]:
    """``{"name": ["sageattention"], "requires-dist": [...], ...}`` (keys lower-case)."""
    msg = HeaderParser().parsestr(text)
    fields: dict[str, list[str]] = {}
    for k, v in msg.items():
        fields.setdefault(k.lower(), []).append(str(v).strip())
    return fields


def rewrite_wheel_file(text: str, tags: Iterable[Tag]) -> str:
    """Replace the ``Tag:`` lines of a WHEEL file (and keep every other line)."""
    lines, body = _headers(text)
    out = [line for line in lines if _key(line) != "tag"]
    out += [f"Tag: {t}" for t in sorted(set(tags), key=str)]
    return "\n".join(out) + "\n" + body.lstrip("\n")


def wheel_file_tags(text: str) -> set[Tag]:
    lines, _ = _headers(text)
    tags: set[Tag] = set()
    for line in lines:
        if _key(line) == "tag":
            interp, abi, plat = _value(line).split("-")
            tags.add(Tag(interp, abi, plat))
    return tags


@dataclass(frozen=True)
class WheelInfo:
    """What a wheel's contents say about it."""

    name: str
    version: str
    tags: frozenset[Tag]
    requires: tuple[str, ...]
    dist_info: str


def wheel_info(contents: Contents) -> WheelInfo:
    di = dist_info_dir(contents)
    meta = metadata_fields(contents[f"{di}/METADATA"].decode("utf-8"))
    return WheelInfo(
        name=meta["name"][0],
        version=meta["version"][0],
        tags=frozenset(wheel_file_tags(contents[f"{di}/WHEEL"].decode("utf-8"))),
        requires=tuple(meta.get("requires-dist", [])),
        dist_info=di,
    )


def retag(
    contents: Contents,
    *,
    version: str,
    tags: Iterable[Tag] | None = None,
    requires: Iterable[str] = (),
) -> tuple[str, Contents]:
    """Rewrite a wheel consistently: new version (dist-info directory renamed, METADATA
    ``Version``), ``requires`` added (replacing other requirements on the same projects), WHEEL
    ``Tag`` lines set to ``tags`` (default: keep), RECORD regenerated with fresh hashes.

    Returns ``(file name, new contents)``. Pure: the input is not modified.
    """
    info = wheel_info(contents)
    tags = set(tags) if tags is not None else set(info.tags)
    version = str(Version(version))
    new_di = f"{dist_name(info.name)}-{version}.dist-info"
    old_data = info.dist_info[: -len(".dist-info")] + ".data"
    new_data = new_di[: -len(".dist-info")] + ".data"
    out: Contents = {}
    for name, data in contents.items():
        if name.startswith(info.dist_info + "/"):
            name = new_di + name[len(info.dist_info):]
        elif name.startswith(old_data + "/"):  # scripts/headers/data of the wheel
            name = new_data + name[len(old_data):]
        out[name] = data
    meta_path = f"{new_di}/METADATA"
    out[meta_path] = rewrite_metadata(
        contents[f"{info.dist_info}/METADATA"].decode("utf-8"), version, requires
    ).encode("utf-8")
    wheel_path = f"{new_di}/WHEEL"
    out[wheel_path] = rewrite_wheel_file(
        contents[f"{info.dist_info}/WHEEL"].decode("utf-8"), tags
    ).encode("utf-8")
    record_path = f"{new_di}/RECORD"
    out.pop(record_path, None)
    for sig in ("RECORD.jws", "RECORD.p7s"):  # signatures of the old RECORD are now wrong
        out.pop(f"{new_di}/{sig}", None)
    out[record_path] = record_for(out, record_path)
    return wheel_filename(info.name, version, tags), out


# ---------------------------------------------------------------------------------------------
# a whole wheel: what the collected file must satisfy (used by collect, test and CI)


def check_wheel(
    filename: str,
    contents: Contents,
    *,
    package: str,
    version: str,
    torch_requirement: str | None = None,
    arch_list: str | None = None,
) -> list[str]:
    """Problems with a collected wheel (empty: name, metadata, tags, RECORD and GPU code agree).
    ``version`` is the full PEP 440 version (``2.2.0+cu129torch2.8``)."""
    problems: list[str] = []
    try:
        fname, fversion, _build, ftags = parse_wheel_filename(filename)
    except Exception as exc:  # packaging.utils.InvalidWheelFilename
        return [f"invalid wheel file name {filename!r}: {exc}"]
    info = wheel_info(contents)
    if canonicalize_name(info.name) != canonicalize_name(package):
        problems.append(f"METADATA Name {info.name!r} is not {package!r}")
    if fname != canonicalize_name(package):
        problems.append(f"file name project {fname!r} is not {package!r}")
    if str(fversion) != str(Version(version)):
        problems.append(f"file name version {fversion} is not {version}")
    if str(Version(info.version)) != str(Version(version)):
        problems.append(f"METADATA Version {info.version} is not {version}")
    if info.dist_info != f"{dist_name(package)}-{Version(version)}.dist-info":
        problems.append(f"dist-info directory {info.dist_info} does not match {version}")
    if set(ftags) != set(info.tags):
        problems.append(f"file name tags {sorted(map(str, ftags))} != WHEEL tags {sorted(map(str, info.tags))}")
    if any(t.platform.startswith("linux_") for t in info.tags):
        problems.append("platform tag linux_*: the wheel was not repaired by auditwheel")
    if torch_requirement is not None:
        torch_reqs = [r for r in info.requires if canonicalize_name(Requirement(r).name) == "torch"]
        if [str(Requirement(r).specifier) for r in torch_reqs] != [str(Requirement(torch_requirement).specifier)]:
            problems.append(f"Requires-Dist on torch is {torch_reqs}, expected [{torch_requirement!r}]")
    problems += verify_record(contents)
    if arch_list is not None:
        sos = [n for n in contents if n.endswith(".so") and "/_C" in "/" + n]
        if not sos:
            problems.append("no compiled extension (_C*.so) in the wheel")
        found: set[GpuCode] = set()
        for so in sos:
            try:
                found |= so_archs(contents[so])
            except (ValueError, struct.error) as exc:
                problems.append(f"{so}: cannot read its GPU code: {exc}")
        missing = missing_archs(found, arch_list)
        if missing:
            problems.append(
                f"no machine code for {', '.join(map(str, missing))} (arch list {arch_list!r}; "
                f"the wheel holds {', '.join(map(str, sorted(found))) or 'none'})"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# I/O edges: reading and writing wheels, atomically


def read_wheel(path: Path) -> Contents:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist() if not info.is_dir()}


def _zip_order(contents: Contents) -> list[str]:
    """Package files first, .dist-info last with RECORD at the very end (as wheel tools do)."""
    di = dist_info_dir(contents)

    def key(name: str) -> tuple[int, str]:
        if name == f"{di}/RECORD":
            return (2, name)
        return (1 if name.startswith(di + "/") else 0, name)

    return sorted(contents, key=key)


def wheel_bytes(contents: Contents, modes: dict[str, int] | None = None) -> bytes:
    """A deterministic zip of ``contents`` (fixed timestamps; ``modes``: unix permissions)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in _zip_order(contents):
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            mode = (modes or {}).get(name, 0o755 if name.endswith(".so") else 0o644)
            zi.external_attr = (0o100000 | mode) << 16
            zf.writestr(zi, contents[name])
    return buf.getvalue()


def zip_modes(path: Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: (i.external_attr >> 16) & 0o7777 for i in zf.infolist() if i.external_attr >> 16}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so that readers see the old file or the complete new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def locked(builder: Path) -> FileLock:
    """Serialise manifest/index updates of concurrent ``sagebuild`` runs on one ``builder/``
    (``with locked(builder): ...``; flock on POSIX, msvcrt locking on Windows)."""
    builder.mkdir(parents=True, exist_ok=True)
    return FileLock(builder / ".lock")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# manifest.json and the PEP 503 index


def manifest_entry(
    target: Any,
    filename: str,
    sha256: str,
    size: int,
    build_info: dict[str, Any],
    build_seconds: float | None,
    tags: Iterable[Tag],
    version: str | None = None,
) -> dict[str, Any]:
    """One ``manifest.json`` entry. ``target`` is a :class:`buildtool.matrix.Target`;
    ``build_info`` is the build-info.json the build stage wrote (what really happened)."""
    nvcc = build_info.get("nvcc") or []
    nvcc_release = next((line.strip() for line in nvcc if "release" in line.lower()), None)
    return {
        "target": target.name,
        "test_target": target.test_name if target.testable else None,
        "file": filename,
        "sha256": sha256,
        "size": size,
        "version": version or target.full_version,
        "tags": sorted(str(t) for t in tags),
        "python": build_info.get("python"),
        "target_python": target.python or "abi3",
        "abi3": bool(build_info.get("abi3", target.abi3)),
        "torch": build_info.get("torch", target.torch),
        "torch_cuda": build_info.get("torch_cuda"),
        "torch_requirement": target.torch_requirement,
        "cuda": target.cuda,
        "nvcc": nvcc_release,
        "arch_list": build_info.get("arch_list", target.arch_list),
        "max_jobs": build_info.get("max_jobs"),
        "nvcc_threads": build_info.get("nvcc_threads"),
        "build_seconds": None if build_seconds is None else round(build_seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def load_manifest(builder: Path) -> dict[str, Any]:
    path = builder / MANIFEST
    if not path.exists():
        return {"version": 1, "wheels": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(data, dict) and isinstance(data.get("wheels", {}), dict) else \
            'not a JSON object with a "wheels" object'
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"not valid JSON ({exc})"
    if problem:
        raise SagebuildError(f"unreadable manifest: {problem}", file=path, exit_code=EXIT_FAILURE,
                             allowed=f"the file sagebuild writes; move {path.name} away and rebuild "
                                     "the targets it listed")
    data.setdefault("wheels", {})
    return data


def simple_index(files: dict[str, str]) -> dict[str, str]:
    """PEP 503 pages for ``{wheel file name: sha256}``: ``{relative path: html}``. Wheels sit
    in ``builder/``, the index in ``builder/simple/`` (links are relative: ``../../x.whl``)."""
    projects: dict[str, list[tuple[str, str]]] = {}
    for fname, sha in files.items():
        name = canonicalize_name(parse_wheel_filename(fname)[0])
        projects.setdefault(name, []).append((fname, sha))
    pages = {}
    root = ['<!DOCTYPE html>', '<html><head><meta name="pypi:repository-version" content="1.0">'
            '<title>Simple index</title></head><body>']
    for name in sorted(projects):
        root.append(f'<a href="{html.escape(name)}/">{html.escape(name)}</a><br>')
        page = ['<!DOCTYPE html>', '<html><head><meta name="pypi:repository-version" content="1.0">'
                f'<title>Links for {html.escape(name)}</title></head><body>',
                f'<h1>Links for {html.escape(name)}</h1>']
        for fname, sha in sorted(projects[name]):
            page.append(f'<a href="../../{html.escape(fname)}#sha256={sha}">{html.escape(fname)}</a><br>')
        page.append("</body></html>")
        pages[f"{name}/index.html"] = "\n".join(page) + "\n"
    root.append("</body></html>")
    pages["index.html"] = "\n".join(root) + "\n"
    return pages


def write_index(builder: Path, manifest: dict[str, Any]) -> None:
    """(Re)write ``manifest.json`` and ``simple/`` from the manifest (under :func:`locked`)."""
    files = {e["file"]: e["sha256"] for e in manifest["wheels"].values() if (builder / e["file"]).exists()}
    pages = simple_index(files)
    simple = builder / SIMPLE
    for rel, text in pages.items():
        atomic_write(simple / rel, text.encode("utf-8"))
    # drop project pages of projects that no longer have wheels
    for page in simple.glob("*/index.html"):
        if f"{page.parent.name}/index.html" not in pages:
            page.unlink()
            with contextlib.suppress(OSError):
                page.parent.rmdir()
    atomic_write(builder / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# collection


@dataclass
class Collected:
    target: str
    path: Path
    entry: dict[str, Any]
    replaced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def toolchain_problems(target: Any, build_info: dict[str, Any]) -> list[str]:
    """The build must have used what the target's name says: the CUDA toolkit (``nvcc
    --version`` as recorded in build-info.json) and the torch release. Empty: consistent."""
    problems = []
    nvcc = " ".join(build_info.get("nvcc") or [])
    m = re.search(r"release (\d+)\.(\d+)", nvcc)
    want = ".".join(str(target.cuda).split(".")[:2])
    if not m:
        problems.append("build-info.json has no `nvcc --version` output")
    elif f"{m[1]}.{m[2]}" != want:
        problems.append(f"the wheel was compiled by nvcc {m[1]}.{m[2]}, the target {target.name} names CUDA {want}")
    torch = str(build_info.get("torch", "")).split("+")[0]
    if torch and Version(torch) != Version(target.torch):
        problems.append(f"the wheel was built against torch {torch}, the target names {target.torch}")
    return problems


def find_export(staging: Path) -> tuple[Path, dict[str, Any]]:
    """The one wheel + build-info.json that a build target exported into ``staging``."""
    wheels = sorted(staging.glob("*.whl"))
    if len(wheels) != 1:
        raise SagebuildError(
            f"expected exactly one wheel in the export of the build, found "
            f"{[w.name for w in wheels] or 'none'}",
            file=staging,
            exit_code=EXIT_FAILURE,
        )
    info_path = staging / BUILD_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    return wheels[0], info


def collect(
    target: Any,
    staging: Path,
    builder: Path,
    build_seconds: float | None = None,
) -> Collected:
    """Rename the wheel exported into ``staging`` for ``target`` and move it into ``builder``
    atomically, then update ``manifest.json`` and ``simple/``. The target's previous wheel is
    removed only after the new one is in place; other targets' wheels are never touched."""
    exported, info = find_export(staging)
    if info:
        problems = toolchain_problems(target, info)
        if problems:
            raise SagebuildError("; ".join(problems), file=staging / BUILD_INFO, exit_code=EXIT_FAILURE)
    contents = read_wheel(exported)
    built = wheel_info(contents)
    warnings: list[str] = []
    if canonicalize_name(built.name) != canonicalize_name(target.package):
        raise SagebuildError(
            f"the build produced {built.name!r}, expected {target.package!r}",
            file=exported, exit_code=EXIT_FAILURE,
        )
    if Version(built.version).public != Version(target.version).public:
        warnings.append(
            f"the wheel's version {built.version} differs from matrix.yaml's {target.version}; "
            "the collected wheel keeps the package's own public version"
        )
    version = with_local(built.version, target.local_version)
    expected_py = tuple(target.python_tag.split("-"))
    got_py = sorted({(t.interpreter, t.abi) for t in built.tags})
    if got_py != [expected_py]:
        warnings.append(
            f"{target.name}: the wheel is tagged {', '.join('-'.join(p) for p in got_py)}, the target "
            f"names {'-'.join(expected_py)} (a build Python override?); the real tags are kept"
        )
    if any(t.platform.startswith("linux_") for t in built.tags):
        warnings.append(f"{target.name}: platform tag is linux_* (not repaired by auditwheel)")
    filename, new = retag(contents, version=version, requires=[target.torch_requirement])
    data = wheel_bytes(new, zip_modes(exported))
    with locked(builder):
        dest = builder / filename
        atomic_write(dest, data)
        manifest = load_manifest(builder)
        old = manifest["wheels"].get(target.name)
        replaced = []
        if old and old.get("file") != filename:
            # another target may share the file name only if it is the very same wheel
            others = {e["file"] for k, e in manifest["wheels"].items() if k != target.name}
            if old["file"] not in others:
                with contextlib.suppress(FileNotFoundError):
                    (builder / old["file"]).unlink()
                replaced.append(old["file"])
        entry = manifest_entry(
            target, filename, hashlib.sha256(data).hexdigest(), len(data), info,
            build_seconds, wheel_info(new).tags, version,
        )
        manifest["wheels"][target.name] = entry
        write_index(builder, manifest)
    return Collected(target.name, dest, entry, replaced, warnings)


def new_staging(builder: Path, target: str) -> Path:
    """A fresh, empty export directory for one build of ``target`` (never inside the wheels'
    own namespace, so an interrupted export cannot be mistaken for a collected wheel)."""
    root = builder / STAGING
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{target}.", dir=root))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
