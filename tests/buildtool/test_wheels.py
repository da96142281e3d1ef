"""Wheel renaming, RECORD, metadata, manifest, PEP 503 index and atomic collection."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.tags import Tag
from packaging.utils import parse_wheel_filename

from buildtool import wheels
from buildtool.matrix import load_project

REPO = Path(__file__).resolve().parents[2]

METADATA = """Metadata-Version: 2.1
Name: sageattention
Version: 0.1.0
Summary: quantized attention
Requires-Python: >=3.9
Requires-Dist: torch>=2.0
Requires-Dist: numpy; extra == "bench"

Long description.
"""
WHEEL = """Wheel-Version: 1.0
Generator: bdist_wheel (0.45.1)
Root-Is-Purelib: false
Tag: cp311-cp311-linux_x86_64
"""


def make_contents(version: str = "0.1.0", tag: str = "cp311-cp311-manylinux_2_34_x86_64",
                  so: bytes = b"\x7fELF not really") -> dict[str, bytes]:
    di = f"sageattention-{version}.dist-info"
    contents = {
        "sageattention/__init__.py": b"VERSION = 1\n",
        "sageattention/_C.cpython-311-x86_64-linux-gnu.so": so,
        f"{di}/METADATA": METADATA.replace("Version: 0.1.0", f"Version: {version}").encode(),
        f"{di}/WHEEL": WHEEL.replace("cp311-cp311-linux_x86_64", tag).encode(),
        f"{di}/top_level.txt": b"sageattention\n",
    }
    contents[f"{di}/RECORD"] = wheels.record_for(contents, f"{di}/RECORD")
    return contents


def write_wheel(path: Path, contents: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wheels.wheel_bytes(contents))
    return path


@pytest.fixture(scope="module")
def project():
    return load_project(REPO / "matrix.yaml")


@pytest.fixture
def target(project):
    return next(t for t in project.targets if t.platform == "linux" and t.torch.startswith("2.8")
                and t.cuda.startswith("12.9"))


# ---- pure functions -------------------------------------------------------------------------


def test_record_hash_matches_pip_format():
    # sha256 of b"" in urlsafe base64 without padding
    assert wheels.record_hash(b"") == "sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def test_retag_rewrites_every_part_consistently():
    src = make_contents()
    name, out = wheels.retag(src, version="0.1.0+cu129torch2.8", requires=["torch==2.8.*"])
    assert name == "sageattention-0.1.0+cu129torch2.8-cp311-cp311-manylinux_2_34_x86_64.whl"
    di = "sageattention-0.1.0+cu129torch2.8.dist-info"
    assert {n.split("/")[0] for n in out} == {"sageattention", di}
    meta = out[f"{di}/METADATA"].decode()
    fields = wheels.metadata_fields(meta)
    assert fields["version"] == ["0.1.0+cu129torch2.8"]
    # the old torch requirement is replaced, a conditional one on another project kept
    assert fields["requires-dist"] == ['numpy; extra == "bench"', "torch==2.8.*"] or sorted(
        fields["requires-dist"]) == sorted(['numpy; extra == "bench"', "torch==2.8.*"])
    assert "torch>=2.0" not in meta
    assert meta.rstrip().endswith("Long description.")
    assert wheels.verify_record(out) == []
    # package files are untouched, the input dict too
    assert out["sageattention/_C.cpython-311-x86_64-linux-gnu.so"] == src[
        "sageattention/_C.cpython-311-x86_64-linux-gnu.so"]
    assert "sageattention-0.1.0.dist-info/METADATA" in src
    info = wheels.wheel_info(out)
    assert info.version == "0.1.0+cu129torch2.8"
    assert info.tags == {Tag("cp311", "cp311", "manylinux_2_34_x86_64")}


def test_retag_can_change_tags_and_filename_agrees():
    tags = {Tag("cp39", "abi3", "manylinux_2_27_x86_64"), Tag("cp39", "abi3", "manylinux_2_28_x86_64")}
    name, out = wheels.retag(make_contents(), version="0.1.0+cu130torch2.11", tags=tags)
    assert name == "sageattention-0.1.0+cu130torch2.11-cp39-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    _, version, _, ftags = parse_wheel_filename(name)
    assert set(ftags) == tags == wheels.wheel_info(out).tags
    wheel_text = out["sageattention-0.1.0+cu130torch2.11.dist-info/WHEEL"].decode()
    assert "linux_x86_64" not in wheel_text.replace("manylinux_2_2", "")
    assert wheel_text.startswith("Wheel-Version: 1.0\n")


def test_retag_is_idempotent_and_replaces_a_local_label():
    name1, out1 = wheels.retag(make_contents(), version=wheels.with_local("0.1.0", "cu128torch2.7"))
    name2, out2 = wheels.retag(out1, version=wheels.with_local("0.1.0+cu128torch2.7", "cu129torch2.8"))
    assert "cu128" not in name2 and "+cu129torch2.8-" in name2
    assert not any("cu128" in n for n in out2)


def test_verify_record_detects_tampering():
    _, out = wheels.retag(make_contents(), version="0.1.0+cu129torch2.8")
    out = dict(out)
    out["sageattention/__init__.py"] = b"VERSION = 2\n"
    out["sageattention/extra.py"] = b""
    problems = wheels.verify_record(out)
    assert any("__init__.py: RECORD hash" in p for p in problems)
    assert any("extra.py is not in RECORD" in p for p in problems)


def test_compress_tags_rejects_non_products():
    with pytest.raises(ValueError):
        wheels.compress_tags({Tag("cp311", "cp311", "a"), Tag("cp312", "cp312", "b")})
    with pytest.raises(ValueError):
        wheels.compress_tags(set())


def test_check_wheel_reports_each_inconsistency():
    name, out = wheels.retag(make_contents(), version="0.1.0+cu129torch2.8", requires=["torch==2.8.*"])
    ok = wheels.check_wheel(name, out, package="sageattention", version="0.1.0+cu129torch2.8",
                            torch_requirement="torch==2.8.*")
    assert ok == []
    wrong = wheels.check_wheel(name.replace("cu129", "cu128"), out, package="sageattention",
                               version="0.1.0+cu128torch2.8", torch_requirement="torch==2.7.*")
    text = "\n".join(wrong)
    assert "METADATA Version" in text and "dist-info directory" in text and "Requires-Dist" in text
    # an unrepaired wheel and a wheel without GPU code are flagged
    name3, out3 = wheels.retag(make_contents(tag="cp311-cp311-linux_x86_64"), version="0.1.0+cu129torch2.8")
    problems = wheels.check_wheel(name3, out3, package="sageattention", version="0.1.0+cu129torch2.8",
                                  arch_list="8.0")
    assert any("auditwheel" in p for p in problems)
    assert any("cannot read its GPU code" in p for p in problems)
    assert any("no machine code for sm_80" in p for p in problems)


def test_simple_index_links_every_wheel_with_its_hash():
    pages = wheels.simple_index({"sageattention-0.1.0+cu129torch2.8-cp312-cp312-manylinux_2_28_x86_64.whl": "ab" * 32,
                                 "sageattention-0.1.0+cu128torch2.7-cp312-cp312-manylinux_2_28_x86_64.whl": "cd" * 32})
    assert set(pages) == {"index.html", "sageattention/index.html"}
    page = pages["sageattention/index.html"]
    assert page.count("<a href=") == 2
    assert 'href="../../sageattention-0.1.0+cu129torch2.8-cp312-cp312-manylinux_2_28_x86_64.whl#sha256=' + "ab" * 32 in page
    assert 'href="sageattention/"' in pages["index.html"]


def test_manifest_entry_records_what_happened(target):
    info = {"python": "3.12.7", "torch": "2.8.0+cu129", "torch_cuda": "12.9",
            "nvcc": ["nvcc: NVIDIA (R) Cuda compiler driver", "Cuda compilation tools, release 12.9, V12.9.86"],
            "arch_list": "8.0;9.0a", "max_jobs": "2", "nvcc_threads": "1", "abi3": False}
    e = wheels.manifest_entry(target, "x.whl", "00", 10, info, 12.34, [Tag("cp312", "cp312", "manylinux_2_28_x86_64")])
    assert e["target"] == target.name and e["file"] == "x.whl" and e["size"] == 10
    assert e["nvcc"] == "Cuda compilation tools, release 12.9, V12.9.86"
    assert e["arch_list"] == "8.0;9.0a" and e["torch"] == "2.8.0+cu129" and e["python"] == "3.12.7"
    assert e["build_seconds"] == 12.3 and e["cuda"] == target.cuda
    assert e["torch_requirement"] == "torch==2.8.*"


# ---- collection (files) ---------------------------------------------------------------------


def stage(tmp: Path, target: str, contents: dict[str, bytes], filename: str, info: dict | None = None) -> Path:
    staging = tmp / "staging" / target
    staging.mkdir(parents=True, exist_ok=True)
    write_wheel(staging / filename, contents)
    if info is not None:  # without build-info.json collect skips the toolchain check
        (staging / "build-info.json").write_text(json.dumps(info))
    return staging


def test_collect_renames_moves_and_indexes(tmp_path, target):
    builder = tmp_path / "builder"
    staging = stage(tmp_path, target.name, make_contents(tag="cp312-cp312-manylinux_2_28_x86_64"),
                    "sageattention-0.1.0-cp312-cp312-manylinux_2_28_x86_64.whl")
    c = wheels.collect(target, staging, builder, 3.0)
    assert c.path.name == target.wheel_filename  # tags as the target promises -> exactly its name
    assert c.warnings == []
    contents = wheels.read_wheel(c.path)
    assert wheels.check_wheel(c.path.name, contents, package="sageattention", version=target.full_version,
                              torch_requirement="torch==2.8.*") == []
    manifest = json.loads((builder / "manifest.json").read_text())
    entry = manifest["wheels"][target.name]
    assert entry["file"] == c.path.name and entry["sha256"] == wheels.sha256_file(c.path)
    assert entry["size"] == c.path.stat().st_size
    assert c.path.name in (builder / "simple" / "sageattention" / "index.html").read_text()
    assert not list(builder.glob(".*.tmp"))


def test_collect_keeps_real_tags_and_warns(tmp_path, target):
    staging = stage(tmp_path, target.name, make_contents(), "sageattention-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl")
    c = wheels.collect(target, staging, tmp_path / "builder")
    assert c.path.name == "sageattention-0.1.0+cu129torch2.8-cp311-cp311-manylinux_2_34_x86_64.whl"
    assert any("cp311" in w for w in c.warnings)


def test_rebuild_replaces_only_its_own_wheel(tmp_path, project, target):
    other = next(t for t in project.targets if t.platform == "linux" and t.name != target.name)
    builder = tmp_path / "builder"
    a1 = wheels.collect(target, stage(tmp_path, "a1", make_contents(), "sageattention-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl"), builder)
    b = wheels.collect(other, stage(tmp_path, "b", make_contents(), "sageattention-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl"), builder)
    b_bytes = b.path.read_bytes()
    # rebuilt with other tags -> other file name: the old one of THIS target goes, b stays
    a2 = wheels.collect(target, stage(tmp_path, "a2", make_contents(tag="cp311-cp311-manylinux_2_35_x86_64"),
                                      "sageattention-0.1.0-cp311-cp311-manylinux_2_35_x86_64.whl"), builder)
    assert a2.replaced == [a1.path.name]
    assert not a1.path.exists() and a2.path.exists()
    assert b.path.read_bytes() == b_bytes
    manifest = json.loads((builder / "manifest.json").read_text())
    assert set(manifest["wheels"]) == {target.name, other.name}
    index = (builder / "simple" / "sageattention" / "index.html").read_text()
    assert a2.path.name in index and b.path.name in index and a1.path.name not in index


def test_failed_collection_leaves_builder_intact(tmp_path, target):
    builder = tmp_path / "builder"
    first = wheels.collect(target, stage(tmp_path, "ok", make_contents(), "sageattention-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl"), builder)
    before = {p.name: p.read_bytes() for p in builder.iterdir() if p.is_file()}
    empty = tmp_path / "staging" / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(wheels.SagebuildError, match="exactly one wheel"):
        wheels.collect(target, empty, builder)
    broken = tmp_path / "staging" / "broken"
    broken.mkdir()
    (broken / "sageattention-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl").write_bytes(b"PK not a zip")
    with pytest.raises(zipfile.BadZipFile):
        wheels.collect(target, broken, builder)
    after = {p.name: p.read_bytes() for p in builder.iterdir() if p.is_file()}
    assert after == before and first.path.exists()


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "w.whl"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(wheels.os, "replace", boom)
    with pytest.raises(OSError):
        wheels.atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.whl"]


def test_pip_installs_from_the_simple_index(tmp_path, target):
    """The PEP 503 index works with pip: file:// URL, exact local version, --no-deps."""
    builder = tmp_path / "builder"
    pure = make_contents(tag="py3-none-any")
    del pure["sageattention/_C.cpython-311-x86_64-linux-gnu.so"]
    di = "sageattention-0.1.0.dist-info"
    pure[f"{di}/RECORD"] = wheels.record_for(pure, f"{di}/RECORD")
    c = wheels.collect(target, stage(tmp_path, "pure", pure, "sageattention-0.1.0-py3-none-any.whl"), builder)
    dest = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
         "--target", str(dest), "--index-url", f"file://{builder}/simple", f"sageattention=={target.full_version}"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (dest / "sageattention" / "__init__.py").exists()
    assert (dest / f"sageattention-{target.full_version}.dist-info" / "METADATA").exists()
    assert c.path.name in proc.stdout + proc.stderr or "Successfully installed" in proc.stdout


def test_collect_keeps_the_packages_own_version(tmp_path, target):
    """The package's version (pyproject.toml) is never replaced by matrix.yaml's; only the
    local label is added, and the manifest records the version the file really carries."""
    staging = stage(tmp_path, target.name, make_contents(version="0.0.9", tag="cp312-cp312-manylinux_2_28_x86_64"),
                    "sageattention-0.0.9-cp312-cp312-manylinux_2_28_x86_64.whl")
    c = wheels.collect(target, staging, tmp_path / "builder")
    local = target.full_version.split("+")[1]
    assert c.path.name == f"sageattention-0.0.9+{local}-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert c.entry["version"] == f"0.0.9+{local}"
    assert any("differs from matrix.yaml" in w for w in c.warnings)
    assert wheels.check_wheel(c.path.name, wheels.read_wheel(c.path), package="sageattention",
                              version=c.entry["version"], torch_requirement=target.torch_requirement) == []


def test_toolchain_must_match_the_target_name(tmp_path, target):
    """CUDA in the name == the nvcc that compiled it; torch too. A mismatch is not collected."""
    nvcc = ["nvcc: NVIDIA (R) Cuda compiler driver", "Cuda compilation tools, release 12.9, V12.9.86"]
    ok = {"nvcc": nvcc, "torch": "2.8.0+cu129"}
    assert wheels.toolchain_problems(target, ok) == []
    bad = {"nvcc": [nvcc[0], "Cuda compilation tools, release 13.0, V13.0.88"], "torch": "2.7.1+cu128"}
    problems = wheels.toolchain_problems(target, bad)
    assert any("nvcc 13.0" in p and "CUDA 12.9" in p for p in problems)
    assert any("torch 2.7.1" in p for p in problems)
    assert wheels.toolchain_problems(target, {"torch": "2.8.0"}) == ["build-info.json has no `nvcc --version` output"]
    builder = tmp_path / "builder"
    staging = stage(tmp_path, target.name, make_contents(), "sageattention-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl", bad)
    with pytest.raises(wheels.SagebuildError, match="compiled by nvcc 13.0"):
        wheels.collect(target, staging, builder)
    assert not list(builder.glob("*.whl"))


def test_retag_renames_the_data_directory_too():
    src = make_contents()
    src["sageattention-0.1.0.data/scripts/sage-bench"] = b"#!python\n"
    di = "sageattention-0.1.0.dist-info"
    src[f"{di}/RECORD"] = wheels.record_for(src, f"{di}/RECORD")
    _, out = wheels.retag(src, version="0.1.0+cu129torch2.8")
    assert "sageattention-0.1.0+cu129torch2.8.data/scripts/sage-bench" in out
    assert not any(n.startswith("sageattention-0.1.0.") for n in out)
    assert wheels.verify_record(out) == []
