"""--jobs auto: MAX_JOBS x NVCC_THREADS from CPUs, memory and parallel targets."""

from __future__ import annotations

import itertools

import pytest

from buildtool import resources
from buildtool.errors import SagebuildError
from buildtool.resources import GiB, MEM_PER_NVCC_THREAD, MEM_RESERVED, plan


@pytest.mark.parametrize(
    "cpus, mem, n", list(itertools.product([1, 2, 4, 16, 64], [1 * GiB, 8 * GiB, 24 * GiB, 512 * GiB], [1, 2, 3, 8]))
)
def test_plan_never_oversubscribes(cpus, mem, n):
    j = plan(cpus, mem, n)
    assert j.max_jobs >= 1 and j.nvcc_threads >= 1
    assert j.nvcc_threads <= resources.MAX_NVCC_THREADS
    procs = j.max_jobs * j.nvcc_threads
    # never more compile processes than this target's CPU share ...
    assert procs <= max(1, cpus // n)
    # ... nor than its memory share holds (except the 1x1 floor that any build needs)
    if procs > 1:
        assert procs * MEM_PER_NVCC_THREAD <= (mem - MEM_RESERVED) / n


def test_this_machine_shape_uses_both_cores():
    j = plan(2, 22 * GiB, 1)
    assert (j.max_jobs, j.nvcc_threads) == (2, 1)
    assert "bound by CPUs" in j.reason


def test_memory_bound_machine():
    j = plan(32, 8 * GiB, 1)  # 6 GiB usable -> 2 nvcc passes at 2.5 GiB
    assert j.processes == 2
    assert "bound by memory" in j.reason


def test_parallel_targets_share_the_machine():
    one, four = plan(16, 128 * GiB, 1), plan(16, 128 * GiB, 4)
    assert one.processes == 16 and one.nvcc_threads > 1
    assert four.processes == 4
    assert four.processes * 4 <= 16


def test_plan_rejects_nonsense():
    with pytest.raises(ValueError):
        plan(0, GiB, 1)
    with pytest.raises(ValueError):
        plan(2, GiB, 0)


@pytest.mark.parametrize("value, expected", [("4", (4, 1)), ("3x2", (3, 2)), (" 1 ", (1, 1))])
def test_parse_jobs_explicit(value, expected):
    j = resources.parse_jobs(value, 2, 8 * GiB)
    assert (j.max_jobs, j.nvcc_threads) == expected


def test_parse_jobs_auto_is_plan():
    assert resources.parse_jobs("auto", 8, 64 * GiB, 2) == plan(8, 64 * GiB, 2)


@pytest.mark.parametrize("value", ["0", "-1", "many", "2x0", "x2", ""])
def test_parse_jobs_errors_name_the_option(value):
    with pytest.raises(SagebuildError) as err:
        resources.parse_jobs(value, 2, GiB)
    assert err.value.field == "--jobs" and err.value.exit_code == 2


def test_detect_reads_this_machine():
    assert resources.cpu_count() >= 1
    assert resources.available_memory() > 0
    assert resources.detect(1).max_jobs >= 1


def test_sdist_build_requirements_name_torch():
    """Item 5: `pip install sageattention-X.tar.gz` under build isolation gets a torch (users'
    frequent `No module named 'torch'`), and setup.py says what to do when torch is missing."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    requires = [Requirement(r).name for r in pyproject["build-system"]["requires"]]
    assert "torch" in requires
    setup = (root / "setup.py").read_text()
    assert "--no-build-isolation" in setup and "SAGEATTENTION_SKIP_CUDA" in setup


def test_machine_is_where_the_daemon_builds():
    # local daemon: this machine's quota-aware numbers, capped by what the daemon reports
    assert resources.machine(8, 30 * GiB, 4, 16 * GiB, True) == (4, 16 * GiB)
    assert resources.machine(2, 20 * GiB, 2, 24 * GiB, True) == (2, 20 * GiB)
    # remote daemon: its own CPUs and 3/4 of its memory
    assert resources.machine(2, 8 * GiB, 64, 256 * GiB, False) == (64, 192 * GiB)
    # daemon unknown: this machine
    assert resources.machine(2, 8 * GiB, None, None, False) == (2, 8 * GiB)
