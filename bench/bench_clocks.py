#!/usr/bin/env python3
"""How a path's time depends on the clock its own power draw sets.

bench_attention times a shape's paths in turns; unsettled (``--settle-ms 0``), a sample starts
at the clock its predecessor's draw left. Against timing the paths one after another, that
moved cuDNN +2-15% and the fp8 path -3% to +9% on one H100 (README, "timing and the power
limit"). This script times each path alone: after ``--idle`` seconds of idle GPU, ``--seconds`` of calls
queued back to back, timed in windows of about ``--window-ms`` (CUDA events), while nvidia-smi
samples the SM clock and power every ``--trace-ms``. Per path it prints the first window's
time per call, the steady one (median of the last second) and the clock and power of both;
the JSON keeps every window with the GPU, shapes, dtype and commit.

    python bench/bench_clocks.py --n 4096 --hd 128 --paths sageattn sage_sm90_fp8 sdpa_cudnn --out clocks.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (paths, environment; puts an in-place build first)
import bench_cli  # noqa: E402


TRACE_FIELDS = "timestamp,clocks.sm,power.draw"
# Every label --paths can name (paths_for: those this GPU and build run).
PATH_LABELS = tuple(ba.end_to_end_labels(ba.KERNELS))


# ------------------------------------------------------------------------ pure parts
def parse_trace(lines) -> list:
    """nvidia-smi ``--query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader,nounits``
    lines -> [(epoch seconds, MHz, W)]; lines it cannot read (a header, a cut last line) are skipped."""
    points = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        try:
            stamp = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            points.append((stamp, float(parts[1]), float(parts[2])))
        except (IndexError, ValueError):
            continue
    return points


def window_clock(trace, start: float, end: float):
    """Median SM clock and power of the trace points inside [start, end] (None, None if none)."""
    inside = [(mhz, watts) for t, mhz, watts in trace if start <= t <= end]
    if not inside:
        return None, None
    return statistics.median(m for m, _ in inside), statistics.median(w for _, w in inside)


def summarize(windows, steady_s: float = 1.0) -> dict:
    """windows: [{"t": seconds from the path's start, "ms": per call, "mhz", "watts"}] in time
    order -> the first window against the median of those in the last ``steady_s`` seconds."""
    last = windows[-1]["t"]
    steady = [w for w in windows if w["t"] >= last - steady_s]

    def median(key, ws):
        values = [w[key] for w in ws if w[key] is not None]
        return statistics.median(values) if values else None

    first = windows[0]
    out = {"first_ms": first["ms"], "steady_ms": median("ms", steady), "first_mhz": first["mhz"],
           "steady_mhz": median("mhz", steady), "first_watts": first["watts"],
           "steady_watts": median("watts", steady)}
    out["slowdown"] = out["steady_ms"] / out["first_ms"]
    return out


# --------------------------------------------------------------------------- GPU side
def run_alone(fn, seconds: float, calls: int) -> list:
    """[{"t", "wall", "calls", "ms"}]: back-to-back calls of ``fn`` for ``seconds``, timed in
    windows of ``calls`` calls (counted in calls, not in the host's time: the host queues calls
    far faster than the GPU runs them)."""
    windows, t0 = [], time.time()
    while time.time() - t0 < seconds:
        begin = time.time()
        ms = ba.sample_ms(fn, calls)
        windows.append({"t": begin - t0, "wall": [begin, time.time()], "calls": calls, "ms": ms})
    return windows


def paths_for(labels, causal: bool, gran: str) -> dict:
    known = ba.end_to_end_paths(causal, gran, ba.available_kernels())
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise SystemExit(f"bench_clocks: unknown path(s) {unknown}; this GPU and build offer {sorted(known)}")
    return {label: known[label] for label in labels}


def measure(args) -> list:
    """One row a (shape, path): the path alone, after args.idle seconds idle, in windows."""
    rows = []
    for d, n, causal in ba.shapes(args):
        q, k, v = ba.random_qkv(args.batch, args.heads, n, d, ba.DTYPES[args.dtype])
        for label, fn in paths_for(args.paths, causal, args.gran).items():
            call = lambda fn=fn: fn(q, k, v)  # noqa: E731
            calls = ba.calls_per_sample(call, 3, args.window_ms)  # (warmed up before the idle)
            time.sleep(args.idle)
            windows = run_alone(call, args.seconds, calls)
            rows.append({"B": args.batch, "H": args.heads, "N": n, "D": d, "causal": causal,
                         "path": label, "windows": windows})
    return rows


def traced(measure_rows, trace_file: Path, period_ms: int):
    """measure_rows() while nvidia-smi writes its samples to trace_file -> (rows, trace points)."""
    with trace_file.open("w") as sink:
        try:
            smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={TRACE_FIELDS}", "--format=csv,noheader,nounits",
                                    "-lms", str(period_ms)], stdout=sink, stderr=subprocess.DEVNULL)
        except OSError:  # no nvidia-smi: times only
            smi = None
        try:
            rows = measure_rows()
        finally:
            if smi is not None:
                time.sleep(0.2)  # the trace's last points
                smi.terminate()
                smi.wait()
    return rows, parse_trace(trace_file.read_text().splitlines())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ba.add_shape_arguments(p, n=[4096], hd=[128, 64])
    p.add_argument("--paths", nargs="+", default=["sageattn", "sage_sm90_fp8", "sdpa_cudnn"], choices=PATH_LABELS,
                   metavar="PATH", help="the paths to time, of: %(choices)s (default: %(default)s)")
    p.add_argument("--seconds", type=bench_cli.positive_duration, default=3.0,
                   help="back-to-back calls of each path this long")
    p.add_argument("--idle", type=bench_cli.duration, default=1.5, help="idle GPU this long before each path")
    p.add_argument("--window-ms", type=bench_cli.positive_duration, default=50.0)
    p.add_argument("--trace-ms", type=bench_cli.positive_int, default=20, help="nvidia-smi's sampling period")
    p.add_argument("--out", type=bench_cli.output_path, default="bench_clocks.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if missing := ba.missing_gpu():
        print(f"bench_clocks: {missing}", file=sys.stderr)
        return 2
    timing = (f"each path alone after {args.idle:g} s idle: {args.seconds:g} s of back-to-back calls in "
              f"{args.window_ms:g} ms windows (CUDA events); nvidia-smi every {args.trace_ms} ms")
    env = ba.environment(args.dtype, timing, qk_quant_gran=args.gran)
    trace_file = args.out.with_suffix(".smi.csv")
    rows, trace = traced(lambda: measure(args), trace_file, args.trace_ms)
    if not trace:
        print(f"bench_clocks: no clock trace in {trace_file} (nvidia-smi missing?); times only", file=sys.stderr)
    for row in rows:
        for w in row["windows"]:
            w["mhz"], w["watts"] = window_clock(trace, *w["wall"])
        row["summary"] = s = summarize(row["windows"])
        clock = (f"  clock {s['first_mhz']:.0f} -> {s['steady_mhz']:.0f} MHz at {s['steady_watts']:.0f} W"
                 if s["first_mhz"] is not None and s["steady_mhz"] is not None else "")
        print(f"N={row['N']:>5} D={row['D']:>3} {'causal' if row['causal'] else 'full  '} {row['path']:16s} "
              f"first {s['first_ms']:.4f} ms  steady {s['steady_ms']:.4f} ms  x{s['slowdown']:.3f}{clock}")
    bench_cli.write_json(args.out, {"env": env, "rows": rows})
    print(f"wrote {args.out} and {trace_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
