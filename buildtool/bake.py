"""Driving ``docker buildx bake`` (through python-on-whales) and following its progress.

* :func:`bake_command` -- the exact plain ``docker buildx bake`` command line of a plan (pure;
  ``--dry-run`` prints it, and it is what :func:`run_bake` executes).
* :class:`Tracker` -- a pure state machine over BuildKit's ``--progress plain`` lines: per
  target state, current step, elapsed time, and for a failed step its name and log tail.
* :func:`diagnose` -- turns the probes of the Docker CLI / Buildx / daemon into one clear error
  that says how to fix it (pure; :func:`check_docker` runs the probes).
* :func:`run_bake` -- runs bake, streaming lines into a :class:`Tracker` and either a rich live
  table (one line per target: state + elapsed) or the plain log (``--progress plain``, CI).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .errors import EXIT_FAILURE, SagebuildError

LOG_TAIL = 30

# ---------------------------------------------------------------------------------------------
# the command


def bake_command(
    bake_file: str,
    targets: Sequence[str],
    sets: dict[str, str],
    progress: str = "plain",
    docker: str = "docker",
) -> list[str]:
    """``docker buildx bake --file F --progress P --set k=v ... targets`` (what is run)."""
    cmd = [docker, "buildx", "bake", "--file", bake_file]
    if progress:
        cmd += ["--progress", progress]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd + list(targets)


def format_command(cmd: Sequence[str]) -> str:
    return shlex.join(cmd)


def parse_sets(values: Iterable[str]) -> dict[str, str]:
    """``--set`` values (``target.args.X=1``, ``*.platform=linux/amd64``) -> ordered dict."""
    out: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key or "." not in key:
            raise SagebuildError(
                f"invalid value {raw!r}",
                field="--set",
                allowed="TARGET.KEY=VALUE as for `docker buildx bake --set` "
                        "(e.g. '*.args.PYTHON=/usr/bin/python3', 'linux-x.platform=linux/amd64')",
            )
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# docker / buildx / daemon diagnostics


@dataclass(frozen=True)
class Probe:
    """What the three probes found (``None`` rc: the command could not be run at all)."""

    docker_path: str | None
    buildx_rc: int | None = None
    buildx_output: str = ""
    info_rc: int | None = None
    info_output: str = ""


def diagnose(probe: Probe) -> SagebuildError | None:
    """One actionable error for a broken Docker setup, or ``None`` when bake can run."""
    if probe.docker_path is None:
        return SagebuildError(
            "the `docker` command was not found on PATH",
            field="docker",
            allowed="install Docker Engine (https://docs.docker.com/engine/install/) and the Buildx "
                    "plugin (package docker-buildx-plugin); on this project's CI machines run "
                    "`bash ../shared/docker-engine.sh`",
            exit_code=EXIT_FAILURE,
        )
    if probe.buildx_rc != 0:
        return SagebuildError(
            "Docker Buildx is not installed (`docker buildx version` failed"
            + (f": {probe.buildx_output.strip().splitlines()[-1]}" if probe.buildx_output.strip() else "")
            + ")",
            field="docker buildx",
            allowed="install the Buildx plugin: `apt-get install docker-buildx-plugin` (Docker's "
                    "apt repository) or `docker-buildx` (Debian/Ubuntu), or put the binary from "
                    "https://github.com/docker/buildx/releases at ~/.docker/cli-plugins/docker-buildx",
            exit_code=EXIT_FAILURE,
        )
    if probe.info_rc != 0:
        text = probe.info_output.strip()
        last = text.splitlines()[-1] if text else "no answer"
        if "permission denied" in text.lower():
            how = ("your user may not use the Docker socket: `sudo usermod -aG docker $USER` "
                   "and log in again (or run with sudo)")
        else:
            how = ("start the daemon: `sudo systemctl start docker` (or `sudo dockerd &`; "
                   "Docker Desktop: start the app); check DOCKER_HOST / `docker context ls` "
                   "if it runs elsewhere")
        return SagebuildError(
            f"the Docker daemon is not reachable ({last})",
            field="docker daemon",
            allowed=how,
            exit_code=EXIT_FAILURE,
        )
    return None


def probe_docker(docker: str = "docker") -> Probe:
    path = shutil.which(docker)
    if path is None:
        return Probe(None)

    def run(*args: str) -> tuple[int | None, str]:
        try:
            p = subprocess.run([path, *args], capture_output=True, text=True, timeout=60)
            return p.returncode, p.stdout + p.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, str(exc)

    b_rc, b_out = run("buildx", "version")
    i_rc, i_out = run("info", "--format", "{{.ServerVersion}}")
    return Probe(path, b_rc, b_out, i_rc, i_out)


def daemon_info():
    """The Docker daemon's ``docker info`` (python-on-whales' SystemInfo), or None without a
    reachable daemon (check_docker says why)."""
    try:
        from python_on_whales import docker as pow_docker

        return pow_docker.info()
    except Exception:
        return None


def check_docker(docker: str = "docker") -> None:
    err = diagnose(probe_docker(docker))
    if err is not None:
        raise err


# ---------------------------------------------------------------------------------------------
# progress: BuildKit's plain output, as a state machine

_VERTEX = re.compile(r"^#(\d+) \[(.+?)\] ?(.*)$")
_STATUS = re.compile(r"^#(\d+) (DONE [\d.]+s|CACHED|ERROR:? ?.*|CANCELED.*)$")
_LOG = re.compile(r"^#(\d+) (\d+\.\d+ )?(.*)$")

QUEUED, BUILDING, DONE, FAILED, CANCELED = "queued", "building", "done", "failed", "canceled"


@dataclass
class Vertex:
    id: int
    name: str
    target: str | None
    log: list[str] = field(default_factory=list)
    short: str = ""  # the name without the target prefix
    status: str = "running"  # running | done | cached | error | canceled
    error: str = ""


@dataclass
class TargetState:
    name: str
    state: str = QUEUED
    step: str = ""
    started: float | None = None
    finished: float | None = None
    steps_done: int = 0
    steps_cached: int = 0
    failed_step: str = ""
    failed_log: list[str] = field(default_factory=list)
    error_lines: list[str] = field(default_factory=list)
    error: str = ""

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or now) - self.started


class Tracker:
    """Follows ``--progress plain`` lines of one bake run.

    With several targets BuildKit prefixes each step's name with the target
    (``[linux-... build 3/6] RUN ...``); with one target it does not, so every step is that
    target's. ``clock`` is injectable for tests."""

    def __init__(self, targets: Sequence[str], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.targets = {t: TargetState(t) for t in targets}
        self.vertices: dict[int, Vertex] = {}
        self.other: list[str] = []  # lines outside any vertex (bake's own errors)
        self.finished = False

    def _owner(self, name: str) -> tuple[str | None, str]:
        if len(self.targets) == 1:
            return next(iter(self.targets)), name
        first, _, rest = name.partition(" ")
        if first in self.targets:
            return first, rest
        return None, name

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        now = self.clock()
        m = _VERTEX.match(line)
        if m and (int(m[1]) not in self.vertices
                  or self.vertices[int(m[1])].name != f"[{m[2]}] {m[3]}".strip()):
            # a new step; BuildKit reuses an id for the same step of another target
            # ("#29 [target-a] exporting to client", later "#29 [target-b] exporting ...")
            vid, name = int(m[1]), m[2]
            target, step = self._owner(name)
            if name.startswith("internal") or name.startswith("auth"):
                target = None
            v = Vertex(vid, f"[{name}] {m[3]}".strip(), target, short=f"[{step}] {m[3]}".strip())
            self.vertices[vid] = v
            if target:
                t = self.targets[target]
                if t.started is None:
                    t.started = now
                if t.state == QUEUED:
                    t.state = BUILDING
                t.step = f"[{step}] {m[3]}".strip()
            return
        m = _STATUS.match(line)
        if m and int(m[1]) in self.vertices:
            v = self.vertices[int(m[1])]
            status = m[2]
            t = self.targets.get(v.target) if v.target else None
            if status.startswith("DONE"):
                v.status = "done"
                if t:
                    t.steps_done += 1
                    if v.short.split("] ", 1)[-1].startswith("exporting to") and t.state == BUILDING:
                        t.state, t.finished = DONE, now  # its export finished: the target is done
            elif status == "CACHED":
                v.status = "cached"
                if t:
                    t.steps_cached += 1
            elif status.startswith("ERROR"):
                v.status = "error"
                v.error = status.partition(":")[2].strip() or status
                if t and t.state != FAILED:
                    t.state, t.finished = FAILED, now
                    t.failed_step, t.failed_log, t.error = v.name, v.log[-LOG_TAIL:], v.error
                    t.error_lines = error_lines(v.log)
                    t.step = v.short
            elif status.startswith("CANCELED"):
                v.status = "canceled"
                if t and t.state == BUILDING:
                    t.state, t.finished = CANCELED, now
            return
        m = _LOG.match(line)
        if m and int(m[1]) in self.vertices:
            self.vertices[int(m[1])].log.append(m[3])
            return
        if not line.startswith("#"):
            self.other.append(line)

    def finish(self, ok: bool) -> None:
        """The bake process ended (``ok``: exit code 0)."""
        now = self.clock()
        self.finished = True
        for t in self.targets.values():
            if t.state in (QUEUED, BUILDING):
                if ok:
                    t.state = DONE
                    if t.started is None:
                        t.started = now
                    t.finished = now
                else:
                    t.state = CANCELED
                    t.finished = now if t.started is not None else None

    @property
    def failed(self) -> list[TargetState]:
        return [t for t in self.targets.values() if t.state == FAILED]

    def failure_report(self) -> str:
        """The failing step(s) with the tail of their log, and bake's own error lines."""
        parts = []
        for t in self.failed:
            parts.append(f"target {t.name} failed at step {t.failed_step}")
            if t.error:
                parts.append(f"  error: {t.error}")
            shown = [line for line in t.error_lines if line not in t.failed_log]
            if shown:
                parts.append("  error lines of the step:")
                parts += [f"    | {line}" for line in shown]
            if t.failed_log:
                parts.append(f"  last {len(t.failed_log)} log lines:")
                parts += [f"    | {line}" for line in t.failed_log]
        errors = [line for line in self.other if "error" in line.lower()]
        if errors:
            parts.append("bake: " + "\n      ".join(errors[-10:]))
        return "\n".join(parts)

    def hints(self) -> list[str]:
        """How to fix failures whose cause bake's own messages make clear."""
        text = "\n".join(self.other + [line for t in self.failed for line in t.failed_log + [t.error]])
        hints = []
        if re.search(r"failed to do request|pull access denied|lookup registry|failed to resolve source "
                     r"metadata|not found: manifest unknown|i/o timeout", text):
            hints.append(
                "a base image could not be pulled: on a network without that registry, build a "
                "local one and pass it, e.g. `docker build -t local/sagebuild-debian:bookworm -f "
                "tests/docker/debian-python.Dockerfile tests/docker` then `--base-image "
                "local/sagebuild-debian:bookworm` (test: `--base-image` = TEST_BASE_IMAGE); see "
                "README, Building wheels")
        if re.search(r"\bKilled\b|out of memory|signal: killed|exit code: 137", text):
            hints.append("a compiler was killed (out of memory): use fewer jobs, e.g. `--jobs 1`")
        if re.search(r"no space left on device", text):
            hints.append("the disk is full: `docker builder prune` frees the build cache")
        return hints

    def table(self) -> Table:
        now = self.clock()
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=True)
        width = max([len(n) for n in self.targets] + [6])
        table.add_column("target", no_wrap=True, min_width=width)
        table.add_column("state", no_wrap=True, min_width=8)
        table.add_column("elapsed", no_wrap=True, justify="right", min_width=7)
        table.add_column("step", overflow="ellipsis", no_wrap=True, ratio=1)
        colors = {QUEUED: "dim", BUILDING: "cyan", DONE: "green", FAILED: "bold red", CANCELED: "yellow"}
        for t in self.targets.values():
            state = t.state
            if t.state == DONE and t.steps_done == 0 and t.steps_cached:
                state = "done (cached)"
            step = t.step if t.state in (FAILED, BUILDING) else ""
            table.add_row(
                t.name, f"[{colors[t.state]}]{state}[/]", fmt_seconds(t.elapsed(now)),
                escape(step[:100]),
            )
        return table


_ERROR_LINE = re.compile(r"(\berror\b|\bFAILED:|fatal:|Killed|out of memory)", re.IGNORECASE)
_NOISE = re.compile(r"^\s*(File \"|Traceback|raise |\^)")


def error_lines(log: Sequence[str], limit: int = 15) -> list[str]:
    """The first lines of a step's log that look like the cause (compiler errors, ninja's
    FAILED:, the OOM killer), skipping Python traceback frames."""
    return [line for line in log if _ERROR_LINE.search(line) and not _NOISE.match(line)][:limit]


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class BakeResult:
    ok: bool
    tracker: Tracker
    seconds: float
    returncode: int


def run_bake(
    bake_file: str,
    targets: Sequence[str],
    sets: dict[str, str],
    *,
    progress: str = "auto",
    console: Console | None = None,
    log_path: str | None = None,
    stream: Callable[..., Iterable[str]] | None = None,
) -> BakeResult:
    """Run bake for ``targets``. ``progress``: ``auto`` (rich live table on a terminal, plain
    otherwise), ``tty`` (always the table) or ``plain`` (BuildKit's log, for CI). ``stream`` is
    injectable (tests); default: python-on-whales' ``docker.buildx.bake(stream_logs=True)``."""
    console = console or Console(stderr=True)
    tracker = Tracker(targets)
    live_mode = progress == "tty" or (progress == "auto" and console.is_terminal)
    if stream is None:
        from python_on_whales import docker as pow_docker

        def stream(**kw):  # noqa: ANN003
            return pow_docker.buildx.bake(**kw)

    start = time.monotonic()
    logfile = open(log_path, "w", encoding="utf-8") if log_path else None
    rc = 0
    try:
        lines = stream(targets=list(targets), files=[bake_file], set=sets,
                       progress="plain", stream_logs=True)
        if live_mode:
            with Live(tracker.table(), console=console, refresh_per_second=4, transient=False) as live:
                rc = _consume(lines, tracker, logfile, None, lambda: live.update(tracker.table()))
                tracker.finish(rc == 0)
                live.update(tracker.table())
        else:
            rc = _consume(lines, tracker, logfile, console, None)
            tracker.finish(rc == 0)
    finally:
        if logfile:
            logfile.close()
    return BakeResult(rc == 0, tracker, time.monotonic() - start, rc)


def _consume(lines, tracker: Tracker, logfile, echo: Console | None, refresh) -> int:
    from python_on_whales.exceptions import DockerException

    last = 0.0
    try:
        for chunk in lines:
            for line in chunk.splitlines():
                tracker.feed(line)
                if logfile:
                    logfile.write(line + "\n")
                if echo is not None:
                    echo.out(line, highlight=False)
            if refresh and time.monotonic() - last > 0.25:
                refresh()
                last = time.monotonic()
    except DockerException as exc:
        text = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        for line in text.splitlines():
            if not line.startswith("#") and line.strip() and line not in tracker.other:
                tracker.other.append(line)
        return exc.return_code or 1
    return 0
