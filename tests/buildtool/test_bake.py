"""bake.py: the command line, progress tracking over real BuildKit logs, Docker diagnostics."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from python_on_whales.exceptions import DockerException
from rich.console import Console

from buildtool import bake
from buildtool.errors import SagebuildError

DATA = Path(__file__).resolve().parent / "data"
T211 = "linux-pytorch211-cu130-python312"
T28 = "linux-pytorch28-cu129-python312"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def feed(tracker: bake.Tracker, name: str) -> None:
    for line in (DATA / name).read_text().splitlines():
        tracker.feed(line)


def test_bake_command_is_plain_and_ordered():
    cmd = bake.bake_command("docker-bake.hcl", ["a", "b"], {"*.args.X": "1 2", "a.output": "type=local,dest=/x"})
    assert cmd == ["docker", "buildx", "bake", "--file", "docker-bake.hcl", "--progress", "plain",
                   "--set", "*.args.X=1 2", "--set", "a.output=type=local,dest=/x", "a", "b"]
    assert bake.format_command(cmd).endswith("--set '*.args.X=1 2' --set a.output=type=local,dest=/x a b")


def test_parse_sets():
    assert bake.parse_sets(["*.args.A=1", "t.args.B=x=y"]) == {"*.args.A": "1", "t.args.B": "x=y"}
    for bad in ["novalue", "=1", "noDot=1"]:
        with pytest.raises(SagebuildError) as err:
            bake.parse_sets([bad])
        assert err.value.field == "--set"


def test_tracker_single_target_success():
    t = bake.Tracker([T211], clock=Clock())
    feed(t, "bake-ok.log")
    state = t.targets[T211]
    assert state.state == bake.BUILDING
    assert state.steps_done > 3
    assert "export" in state.step or "repair" in state.step
    t.finish(True)
    assert state.state == bake.DONE and state.elapsed(0) > 0
    assert t.failed == [] and t.failure_report() == ""


def test_tracker_single_target_compile_failure_shows_step_and_cause():
    t = bake.Tracker([T211], clock=Clock())
    feed(t, "bake-fail-compile.log")
    t.finish(False)
    [failed] = t.failed
    assert failed.name == T211
    assert failed.failed_step.startswith("[build 4/6] RUN")
    report = t.failure_report()
    assert "error: #error deliberately broken" in report  # the compiler's message, not just the traceback
    assert "FAILED: [code=1]" in report
    assert "last 30 log lines" in report
    assert "RuntimeError: Error compiling objects for extension" in report


def test_tracker_two_targets_assigns_steps_by_prefix():
    t = bake.Tracker([T211, T28], clock=Clock())
    feed(t, "bake-fail-two-targets.log")
    t.finish(False)
    assert t.targets[T28].state == bake.FAILED
    assert "toolchain-image" in t.targets[T28].failed_step
    assert "BASE_IMAGE must provide CUDA 12.9" in t.failure_report()
    # the other target was cancelled, not failed; its cached steps were counted
    assert t.targets[T211].state == bake.CANCELED
    assert t.targets[T211].steps_cached >= 3
    table = t.table()
    assert table.row_count == 2


def render(table) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200).print(table)
    return buf.getvalue()


def test_table_one_line_per_target_with_state_and_elapsed():
    t = bake.Tracker([T211, T28], clock=Clock())
    feed(t, "bake-fail-two-targets.log")
    t.finish(False)
    text = render(t.table())
    lines = [line for line in text.splitlines() if line.startswith("linux-")]
    assert len(lines) == 2
    assert "failed" in text and "canceled" in text
    assert any("s " in line or line.rstrip().endswith("s") for line in lines)


@pytest.mark.parametrize("probe, words", [
    (bake.Probe(None), ["`docker` command was not found", "docs.docker.com/engine/install", "docker-engine.sh"]),
    (bake.Probe("/usr/bin/docker", 1, "docker: 'buildx' is not a docker command.", 0, ""),
     ["Buildx is not installed", "'buildx' is not a docker command", "cli-plugins/docker-buildx"]),
    (bake.Probe("/usr/bin/docker", 0, "v0.13", 1,
                "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"),
     ["daemon is not reachable", "Is the docker daemon running?", "systemctl start docker", "DOCKER_HOST"]),
    (bake.Probe("/usr/bin/docker", 0, "v0.13", 1,
                "permission denied while trying to connect to the Docker daemon socket"),
     ["daemon is not reachable", "usermod -aG docker"]),
])
def test_diagnose_says_how_to_fix(probe, words):
    err = bake.diagnose(probe)
    assert err is not None and err.exit_code == 1
    text = err.format()
    for w in words:
        assert w in text


def test_diagnose_ok():
    assert bake.diagnose(bake.Probe("/usr/bin/docker", 0, "v0.13", 0, "28.2.2")) is None


def test_probe_without_docker_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SagebuildError, match="not found on PATH"):
        bake.check_docker()


def test_run_bake_plain_echoes_log_and_tracks(tmp_path):
    lines = (DATA / "bake-ok.log").read_text().splitlines(keepends=True)
    seen = {}

    def stream(**kw):
        seen.update(kw)
        return iter(lines)

    buf = io.StringIO()
    res = bake.run_bake("docker-bake.hcl", [T211], {"*.args.A": "1"}, progress="plain",
                        console=Console(file=buf, width=300), log_path=str(tmp_path / "log"), stream=stream)
    assert res.ok and res.returncode == 0
    assert seen["set"] == {"*.args.A": "1"} and seen["progress"] == "plain" and seen["stream_logs"] is True
    assert seen["files"] == ["docker-bake.hcl"] and seen["targets"] == [T211]
    assert "exporting to client" in buf.getvalue()
    assert (tmp_path / "log").read_text().count("\n") == len(lines)
    assert res.tracker.targets[T211].state == bake.DONE


def test_run_bake_failure_from_docker_exception(tmp_path):
    lines = (DATA / "bake-fail-compile.log").read_text().splitlines(keepends=True)

    def stream(**kw):
        def gen():
            yield from lines
            raise DockerException(["docker", "buildx", "bake"], 1, b"", b"ERROR: failed to solve: boom")
        return gen()

    res = bake.run_bake("docker-bake.hcl", [T211], {}, progress="tty",
                        console=Console(file=io.StringIO(), width=200), stream=stream)
    assert not res.ok and res.returncode == 1
    assert res.tracker.targets[T211].state == bake.FAILED
    assert "ERROR: failed to solve: boom" in res.tracker.failure_report()


def test_hints_for_unpullable_base_image_and_oom():
    t = bake.Tracker([T211])
    t.other.append('ERROR: failed to solve: failed to do request: Head "https://registry-1.docker.io/v2/x/manifests/1": '
                   "dial tcp: lookup registry-1.docker.io: no such host")
    assert any("--base-image" in h for h in t.hints())
    t2 = bake.Tracker([T211])
    feed(t2, "bake-fail-compile.log")
    assert t2.hints() == []  # a compile error is not a pull problem
    t2.other.append("ERROR: process did not complete successfully: exit code: 137")
    assert any("--jobs 1" in h for h in t2.hints())


def test_tracker_two_targets_each_done_at_its_own_export():
    """Real log of two targets built in parallel: each is done when ITS export finishes (the
    exporter's step id is reused for the second target), so each gets its own elapsed time."""
    a, b = "linux-pytorch211-cu130-python312", "linux-pytorch211-cu130-abi3"
    t = bake.Tracker([a, b], clock=Clock())
    feed(t, "bake-ok-two-targets.log")
    assert t.targets[a].state == bake.DONE and t.targets[b].state == bake.DONE
    assert t.targets[a].finished < t.targets[b].finished  # python312 exported first in this log
    t.finish(True)
    assert t.targets[a].elapsed(0) < t.targets[b].elapsed(0)
    assert t.failed == []
