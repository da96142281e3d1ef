"""``sagebuild build`` and ``sagebuild test`` (registered on :data:`buildtool.cli.app`).

build:  names -> targets -> :class:`BuildPlan` (pure: bake --set overrides, job sizing, the exact
        plain bake command) -> ``docker buildx bake`` into per-run staging directories ->
        :func:`buildtool.wheels.collect` (rename, atomic move into ./builder/, manifest, index).
test:   for each target's collected wheel in ./builder/: static checks of the file (name,
        metadata, RECORD, GPU code for the arch list), then the ``test-*`` bake target with
        WHEEL_DIR pointing at a directory holding ONLY that collected wheel (the test stage
        installs it into a clean Python + torch, imports it and runs the CPU test suite), loaded
        as an image, in which :mod:`buildtool.installed` checks the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, NoReturn, Optional

import typer
from rich.markup import escape

from . import bake, compat, gpucode, installed, resources, wheels
from .cli import MatrixOption, NamesArg, app, checked, console, err_console, fail, load, selected
from .errors import EXIT_FAILURE, SagebuildError
from .matrix import Target

BAKE_FILE = "docker-bake.hcl"
BUILDER = "builder"
TEST_IMAGE = "sagebuild-test"


class Progress(str, Enum):
    auto = "auto"
    tty = "tty"
    plain = "plain"


# ---------------------------------------------------------------------------------------------
# plans (pure)


@dataclass(frozen=True)
class BuildOptions:
    base_image: str | None = None
    arch_list: str | None = None
    jobs: str = "auto"
    sets: tuple[tuple[str, str], ...] = ()
    progress: str = "auto"


@dataclass
class BuildPlan:
    targets: list[Target]
    jobs: resources.Jobs
    sets: dict[str, str]
    staging: dict[str, Path]
    command: list[str]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{len(self.targets)} target(s); {self.jobs.reason}"]
        for t in self.targets:
            arch = self.sets.get("*.args.TORCH_CUDA_ARCH_LIST", t.arch_list)
            lines.append(
                f"  {t.name}: python {t.python or 'abi3'}, torch {t.torch} ({t.torch_cuda}), "
                f"CUDA {t.cuda} from {t.cuda_source}, arch {arch}; matrix.yaml names its wheel "
                f"{t.wheel_filename} (collection keeps the version and tags the wheel really has)"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan_build(
    targets: list[Target],
    options: BuildOptions,
    builder: Path,
    cpus: int,
    mem_bytes: int,
    staging: dict[str, Path] | None = None,
) -> BuildPlan:
    """Everything ``sagebuild build`` will do, computed without side effects.
    ``staging``: the export directory per target (default: ``builder/.staging/<target>``)."""
    if options.arch_list is not None:
        for t in targets:
            problem = compat.check_arch_list(options.arch_list, t.cuda)
            if problem:
                raise SagebuildError(problem, field="--arch-list",
                                     allowed=", ".join(compat.ARCH_MIN_CUDA) + " (optionally +PTX), ';'-separated")
    jobs = resources.parse_jobs(options.jobs, cpus, mem_bytes, max(1, len(targets)))
    sets: dict[str, str] = {}
    if options.base_image:
        sets["*.args.BASE_IMAGE"] = options.base_image
    if options.arch_list:
        sets["*.args.TORCH_CUDA_ARCH_LIST"] = options.arch_list
    sets["*.args.MAX_JOBS"] = str(jobs.max_jobs)
    sets["*.args.NVCC_THREADS"] = str(jobs.nvcc_threads)
    staging = dict(staging or {t.name: builder / wheels.STAGING / t.name for t in targets})
    for t in targets:
        sets[f"{t.name}.output"] = f"type=local,dest={staging[t.name]}"
    notes = []
    user = dict(options.sets)
    for key in user:
        if key.endswith(".output"):
            notes.append(f"--set {key} replaces sagebuild's staging export: nothing is collected for it")
    sets.update(user)
    command = bake.bake_command(BAKE_FILE, [t.name for t in targets], sets, progress="plain")
    return BuildPlan(targets, jobs, sets, staging, command, notes)


def container_os(target: Target) -> str:
    """The Docker daemon OS a target's image needs: Windows containers for ``win*`` wheels."""
    return "windows" if target.platform_tag.startswith("win") else "linux"


def daemon_mismatch(targets: list[Target], daemon_os: str) -> SagebuildError | None:
    """The error for targets a daemon running ``daemon_os`` containers cannot build, if any."""
    wrong = [t for t in targets if container_os(t) != daemon_os]
    if not wrong:
        return None
    need = sorted({container_os(t) for t in wrong})
    fits = sorted({t.platform for t in targets if t not in wrong})
    return SagebuildError(
        f"this Docker daemon runs {daemon_os} containers, and these targets need "
        f"{' or '.join(need)} containers: {', '.join(t.name for t in wrong)}", field="NAMES",
        allowed=(f"targets of this daemon's platform (`sagebuild build {' '.join(fits)}`); " if fits else "")
        + "Windows wheels build on a Windows host with Docker in Windows-containers mode (README, Windows)")


def test_sets(
    targets: list[Target], wheel_dirs: dict[str, str], base_image: str | None,
    user_sets: dict[str, str],
) -> dict[str, str]:
    """bake overrides of ``sagebuild test``: each test target installs from its own directory
    (the collected wheel only) and is loaded as the image ``sagebuild-test:<target>``."""
    sets: dict[str, str] = {}
    if base_image:
        sets["*.args.TEST_BASE_IMAGE"] = base_image
    for t in targets:
        sets[f"{t.test_name}.args.WHEEL_DIR"] = wheel_dirs[t.name]
        sets[f"{t.test_name}.output"] = f"type=docker,name={TEST_IMAGE}:{t.name}"
    sets.update(user_sets)
    return sets


# ---------------------------------------------------------------------------------------------
# helpers with side effects


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _build_machine(jobs: str, info) -> tuple[int, int]:
    """CPUs and memory of the machine the Docker daemon (``info``: bake.daemon_info) builds on
    (see resources.machine); without a daemon (yet), --dry-run and the error path use this one."""
    local = resources.cpu_count(), resources.available_memory()
    if jobs.strip().lower() != "auto" or info is None:
        return local
    host = os.environ.get("DOCKER_HOST", "")
    is_local = (not host or host.startswith("unix://")) and info.operating_system != "Docker Desktop"
    return resources.machine(*local, info.n_cpu, info.mem_total, is_local)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _report(failures: list[str], hint: str | None = None) -> NoReturn:
    for f in failures:
        err_console.print(f"[bold red]error:[/] {escape(f)}", highlight=False)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False)
    raise typer.Exit(EXIT_FAILURE)


def _print_failure(result: bake.BakeResult, log_path: Path) -> None:
    report = result.tracker.failure_report()
    err_console.print(f"[bold red]error:[/] docker buildx bake failed (exit {result.returncode})",
                      highlight=False)
    if report:
        err_console.print(escape(report), highlight=False)
    for hint in result.tracker.hints():
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False)
    err_console.print(f"full log: {log_path}", highlight=False)


ProgressOpt = Annotated[
    Progress, typer.Option("--progress", help="auto (live table on a terminal), tty, or plain "
                           "(BuildKit's log, for CI)")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="TARGET.KEY=VALUE", help="override passed to `docker buildx bake "
                 "--set`, e.g. '*.args.PYTHON=/usr/bin/python3' (build), '*.args.TEST_PYTHON=python3' "
                 "(test); repeatable"),
]


# ---------------------------------------------------------------------------------------------
# build


@app.command("build")
def build_cmd(
    names: NamesArg = None,
    base_image: Annotated[Optional[str], typer.Option(
        "--base-image", metavar="IMAGE", help="build base image for every selected target (e.g. an image built "
        "from tests/docker/debian-python.Dockerfile on a network without registries)")] = None,
    arch_list: Annotated[Optional[str], typer.Option(
        "--arch-list", metavar="ARCHS", help="TORCH_CUDA_ARCH_LIST for every selected target, e.g. '8.0;9.0a'")] = None,
    jobs: Annotated[str, typer.Option(
        "--jobs", metavar="auto|N|NxT", help="auto (from CPUs and memory), N (MAX_JOBS) or NxT (MAX_JOBS x NVCC_THREADS)")] = "auto",
    sets: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="print the plan and the exact `docker buildx bake` command; run nothing")] = False,
    progress: ProgressOpt = Progress.auto,
    matrix: MatrixOption = None,
) -> None:
    """Build wheels with `docker buildx bake` and collect them into ./builder/.

    NAMES are targets, test targets or groups; without any, the `default` group is built.
    """
    project = load(matrix)
    targets = selected(project, names or ["default"])
    builder = project.root / BUILDER
    options = BuildOptions(base_image, arch_list, jobs, tuple(checked(bake.parse_sets, sets or []).items()),
                           progress.value)
    info = bake.daemon_info()  # one `docker info` for the job count and the container OS
    plan = checked(plan_build, targets, options, builder, *_build_machine(jobs, info))
    mismatch = daemon_mismatch(targets, info.os_type) if info else None
    if dry_run:
        console.print(plan.describe(), highlight=False)
        if mismatch:
            console.print(f"note: {mismatch.message}", highlight=False)
        console.print(f"(cd {project.root} && {bake.format_command(plan.command)})", highlight=False,
                      soft_wrap=True)
        return
    checked(bake.check_docker)
    if mismatch:
        raise fail(mismatch)
    checked(wheels.load_manifest, builder)  # an unreadable one fails now, not after the build
    for path in plan.staging.values():  # a fresh export directory per run
        wheels.remove_tree(path)
        path.mkdir(parents=True)
    log_path = builder / "logs" / f"build-{time.strftime('%Y%m%dT%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    err_console.print(plan.describe(), highlight=False)
    err_console.print("+ " + bake.format_command(plan.command), highlight=False, soft_wrap=True)
    with _cwd(project.root):
        result = bake.run_bake(BAKE_FILE, [t.name for t in targets], plan.sets,
                               progress=progress.value, console=err_console, log_path=str(log_path))
    collected, problems = [], []
    for t in targets:
        state = result.tracker.targets[t.name]
        staging = plan.staging[t.name]
        if state.state == bake.FAILED or not any(staging.glob("*.whl")):
            if result.ok:
                problems.append(f"{t.name}: bake succeeded but exported no wheel into {staging}")
            continue
        try:
            c = wheels.collect(t, staging, builder, state.elapsed(time.monotonic()) or result.seconds)
        except SagebuildError as err:
            problems.append(err.format())
            continue
        finally:
            wheels.remove_tree(staging)
        collected.append(c)
        for w in c.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        console.print(
            f"{t.name}: builder/{c.path.name} ({c.entry['size'] / 1e6:.1f} MB, "
            f"{bake.fmt_seconds(c.entry['build_seconds'] or 0)}, {c.entry['nvcc'] or 'nvcc ?'})"
            + (f", replaced {', '.join(c.replaced)}" if c.replaced else ""),
            highlight=False,
        )
    for t in targets:
        wheels.remove_tree(plan.staging[t.name])
    _rmdir_if_empty(builder / wheels.STAGING)
    if not result.ok:
        _print_failure(result, log_path)
    for p in problems:
        err_console.print(f"[bold red]error:[/] {escape(p)}", highlight=False)
    if not result.ok or problems:
        raise typer.Exit(EXIT_FAILURE)
    console.print(f"{len(collected)} wheel(s) in {builder}; index: "
                  f"pip install --index-url file://{builder}/simple {project.matrix.package}",
                  highlight=False)


# ---------------------------------------------------------------------------------------------
# test


def expectations(target: Target, entry: dict) -> dict:
    """What the installed wheel of ``target`` must report (see :mod:`buildtool.installed`)."""
    return {
        "package": target.package,
        "version": entry["version"],
        "torch": target.torch,
        "torch_cuda": target.torch_cuda,
        "torch_requirement": target.torch_requirement,
        "arch_list": entry.get("arch_list") or target.arch_list,
    }


def installed_check_source() -> str:
    """gpucode.py + installed.py: the script the test image runs with ``python -c``."""
    return Path(gpucode.__file__).read_text() + "\n\n" + Path(installed.__file__).read_text()


def static_check(builder: Path, target: Target, entry: dict) -> list[str]:
    path = builder / entry["file"]
    if not path.exists():
        return [f"{path} listed in manifest.json is missing"]
    problems = []
    if wheels.sha256_file(path) != entry["sha256"]:
        problems.append(f"{path.name}: sha256 differs from manifest.json")
    problems += wheels.check_wheel(
        path.name, wheels.read_wheel(path), package=target.package, version=entry["version"],
        torch_requirement=target.torch_requirement, arch_list=entry.get("arch_list") or target.arch_list,
    )
    return problems


@app.command("test")
def test_cmd(
    names: NamesArg = None,
    base_image: Annotated[Optional[str], typer.Option(
        "--base-image", metavar="IMAGE", help="clean Python image the test stage installs the wheel into "
        "(TEST_BASE_IMAGE)")] = None,
    python: Annotated[Optional[str], typer.Option(
        "--python-exe", metavar="PATH", help="interpreter inside the test image (TEST_PYTHON)")] = None,
    sets: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the bake command only")] = False,
    keep_image: Annotated[bool, typer.Option(
        "--keep-image", help="keep the test image sagebuild-test:<target> (for debugging)")] = False,
    progress: ProgressOpt = Progress.auto,
    matrix: MatrixOption = None,
) -> None:
    """Test collected wheels from ./builder/ with the `test-*` targets.

    Each wheel is installed into a clean Python + torch and imported; the check asserts that its
    extension loads and holds code for every arch, then the CPU tests run.
    """
    project = load(matrix)
    targets = [t for t in selected(project, names or ["default"]) if t.testable]
    if not targets:
        raise fail(SagebuildError("the selection has no testable target (test: false in matrix.yaml)",
                                  field="NAMES"))
    builder = project.root / BUILDER
    user = checked(bake.parse_sets, sets or [])
    if python:
        user.setdefault("*.args.TEST_PYTHON", python)
    wheel_dirs = {t.name: f"{BUILDER}/.test/{t.name}" for t in targets}
    tsets = test_sets(targets, wheel_dirs, base_image, user)
    command = bake.bake_command(BAKE_FILE, [t.test_name for t in targets], tsets, progress="plain")
    if dry_run:
        console.print(f"(cd {project.root} && {bake.format_command(command)})", highlight=False)
        return
    manifest = checked(wheels.load_manifest, builder)
    missing = [t.name for t in targets if t.name not in manifest["wheels"]]
    if missing:
        raise fail(SagebuildError(
            f"no collected wheel in {builder} for {', '.join(missing)}",
            field="NAMES", allowed=f"run `sagebuild build {' '.join(missing)}` first",
            exit_code=EXIT_FAILURE))
    failures: list[str] = []
    # 1. the file itself
    for t in targets:
        entry = manifest["wheels"][t.name]
        problems = static_check(builder, t, entry)
        for p in problems:
            failures.append(f"{t.name}: {p}")
        console.print(f"{t.name}: builder/{entry['file']}: "
                      + ("[green]file ok[/] (name, metadata, RECORD, GPU code)" if not problems
                         else f"[red]{len(problems)} problem(s)[/]"), highlight=False)
    if failures:  # testing a file that is missing or not what was collected proves nothing
        _report(failures, hint=f"rebuild: sagebuild build {' '.join(t.name for t in targets)}")
    # 2. the test stage installs exactly the collected wheel
    for t in targets:
        d = project.root / wheel_dirs[t.name]
        wheels.remove_tree(d)
        d.mkdir(parents=True)
        src = builder / manifest["wheels"][t.name]["file"]
        try:
            os.link(src, d / src.name)
        except OSError:
            shutil.copy2(src, d / src.name)
    checked(bake.check_docker)
    log_path = builder / "logs" / f"test-{time.strftime('%Y%m%dT%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    err_console.print("+ " + bake.format_command(command), highlight=False, soft_wrap=True)
    with _cwd(project.root):
        result = bake.run_bake(BAKE_FILE, [t.test_name for t in targets], tsets,
                               progress=progress.value, console=err_console, log_path=str(log_path))
    if not result.ok:
        _print_failure(result, log_path)
    # 3. checks inside the test image, on the installed package
    source = installed_check_source()
    test_python = user.get("*.args.TEST_PYTHON")
    for t in targets:
        state = result.tracker.targets[t.test_name]
        if state.state == bake.FAILED or not result.ok and state.state != bake.DONE:
            failures.append(f"{t.test_name}: the test stage failed (install, import or CPU tests)")
            continue
        exe = test_python or user.get(f"{t.test_name}.args.TEST_PYTHON") or t.test_python_exe
        expect = expectations(t, manifest["wheels"][t.name])
        proc = subprocess.run(
            ["docker", "run", "--rm", f"{TEST_IMAGE}:{t.name}", exe, "-c", source,
             "--json", json.dumps(expect)],
            capture_output=True, text=True,
        )
        report = None
        for line in proc.stdout.splitlines():
            if line.startswith("SAGEBUILD-REPORT "):
                report = json.loads(line.split(" ", 1)[1])
        if report is None:
            failures.append(f"{t.name}: the installed-package check did not run: "
                            + (proc.stderr.strip().splitlines() or ["?"])[-1])
            err_console.print(escape(proc.stdout + proc.stderr), highlight=False)
            continue
        for c in report["checks"]:
            mark = "[green]ok[/]  " if c["ok"] else "[bold red]FAIL[/]"
            console.print(f"  {mark} {escape(c['check'])}" + (f": {escape(c['detail'])}" if c["detail"] and
                          (not c["ok"] or len(c["detail"]) < 160) else ""), highlight=False)
            if not c["ok"]:
                failures.append(f"{t.name}: {c['check']}: {c['detail']}")
        console.print(f"{t.test_name}: python {report['python']}, torch {report.get('torch')} "
                      f"(CUDA {report.get('torch_cuda')}), GPU code {', '.join(report.get('gpu_code', []))}",
                      highlight=False)
    for t in targets:
        wheels.remove_tree(project.root / wheel_dirs[t.name])
        if not keep_image:
            subprocess.run(["docker", "image", "rm", "-f", f"{TEST_IMAGE}:{t.name}"], capture_output=True)
    _rmdir_if_empty(builder / ".test")
    if failures:
        _report(failures)
    console.print(f"{len(targets)} wheel(s) passed", highlight=False)
