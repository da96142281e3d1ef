"""``--jobs``: how many compile jobs (``MAX_JOBS``) and nvcc threads (``NVCC_THREADS``) a build
may use, from the CPUs and the memory available and the number of targets bake builds at once.

:func:`plan` is a pure function; :func:`detect` reads the machine (cgroup limits included, so a
container or CI runner with a CPU/memory quota is sized by its quota, not by the host).

The model: each compiler process (one ninja job = one nvcc, which runs ``NVCC_THREADS``
architectures at once) needs about :data:`MEM_PER_NVCC_THREAD` of memory for heavily templated
attention kernels; the targets built in parallel share CPUs and memory evenly. Threads inside
nvcc come first up to :data:`MAX_NVCC_THREADS` (they parallelise one file over its archs, which
helps when a package has few, large .cu files), the rest goes to ninja jobs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import SagebuildError

GiB = 1024**3
#: peak resident memory of one nvcc architecture pass on large templated kernels (measured
#: flash/sage-style kernels: 1.5-3 GiB); sized for the worse end
MEM_PER_NVCC_THREAD = int(2.5 * GiB)
#: memory kept free for the Docker engine, BuildKit and the host
MEM_RESERVED = 2 * GiB
MAX_NVCC_THREADS = 4


@dataclass(frozen=True)
class Jobs:
    max_jobs: int
    nvcc_threads: int
    reason: str

    @property
    def processes(self) -> int:
        return self.max_jobs * self.nvcc_threads


def plan(cpus: int, mem_bytes: int, n_parallel_targets: int = 1) -> Jobs:
    """``MAX_JOBS`` x ``NVCC_THREADS`` for one target when ``n_parallel_targets`` targets build
    at once on ``cpus`` CPUs with ``mem_bytes`` available. Never below 1 x 1."""
    if cpus < 1 or n_parallel_targets < 1:
        raise ValueError("cpus and n_parallel_targets must be >= 1")
    n = n_parallel_targets
    cpu_share = max(1, cpus // n)
    mem_share = max(0, mem_bytes - MEM_RESERVED) // n
    by_mem = max(1, mem_share // MEM_PER_NVCC_THREAD)
    budget = max(1, min(cpu_share, by_mem))  # concurrent nvcc arch passes for this target
    threads = max(1, min(MAX_NVCC_THREADS, budget // 2 if budget >= 4 else 1))
    jobs = max(1, budget // threads)
    limit = "memory" if by_mem < cpu_share else "CPUs"
    reason = (
        f"{cpus} CPUs, {mem_bytes / GiB:.1f} GiB available, {n} target(s) in parallel: "
        f"{jobs} job(s) x {threads} nvcc thread(s) per target (bound by {limit}; "
        f"~{MEM_PER_NVCC_THREAD / GiB:g} GiB per nvcc thread)"
    )
    return Jobs(jobs, threads, reason)


def parse_jobs(value: str, cpus: int, mem_bytes: int, n_parallel_targets: int = 1) -> Jobs:
    """``--jobs`` value: ``auto``, ``N`` (MAX_JOBS=N, 1 nvcc thread) or ``NxT`` (N jobs of T
    nvcc threads)."""
    v = value.strip().lower()
    if v == "auto":
        return plan(cpus, mem_bytes, n_parallel_targets)
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", v)
    if not m or int(m[1]) < 1 or (m[2] is not None and int(m[2]) < 1):
        raise SagebuildError(
            f"invalid value {value!r}",
            field="--jobs",
            allowed="auto, N (MAX_JOBS) or NxT (MAX_JOBS x NVCC_THREADS), N, T >= 1",
        )
    threads = int(m[2]) if m[2] else 1
    return Jobs(int(m[1]), threads, f"--jobs {value}")


# ---- the machine (side effects) ------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_count() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "max 100000" or "200000 100000"
    if quota and not quota.startswith("max"):
        q, period = quota.split()[:2]
        n = min(n, max(1, int(q) // int(period)))
    return max(1, n)


def available_memory() -> int:
    mem = None
    meminfo = _read("/proc/meminfo")
    if meminfo:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M)
        if m:
            mem = int(m[1]) * 1024
    if mem is None:
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            mem = 4 * GiB
    limit = _read("/sys/fs/cgroup/memory.max")
    if limit and limit.isdigit():
        used = _read("/sys/fs/cgroup/memory.current")
        mem = min(mem, int(limit) - (int(used) if used and used.isdigit() else 0))
    return max(0, mem)


def machine(local_cpus: int, local_mem: int, daemon_cpus: int | None, daemon_mem_total: int | None,
            daemon_is_local: bool) -> tuple[int, int]:
    """(CPUs, memory) the compilers will really get. The builds run where the Docker daemon
    runs: a remote daemon (DOCKER_HOST=ssh://..., a docker context) is sized by its own
    ``docker info`` (total memory, less a quarter for what else runs there); a local one by
    this machine's quota-aware numbers, capped by what the daemon reports (e.g. a Docker
    Desktop VM smaller than the host)."""
    if daemon_cpus is None or daemon_mem_total is None:
        return local_cpus, local_mem
    if daemon_is_local:
        return min(local_cpus, daemon_cpus), min(local_mem, daemon_mem_total)
    return max(1, daemon_cpus), daemon_mem_total * 3 // 4


def detect(n_parallel_targets: int = 1) -> Jobs:
    return plan(cpu_count(), available_memory(), n_parallel_targets)
