#!/usr/bin/env python3
"""The kernels of one sageattention call on a timeline: when each starts and ends on the GPU
(CUPTI, through torch.profiler), in µs from the call's first kernel.

    python bench/call_timeline.py --n 4096 --hd 64 --causal true --paths sm90_fp8 --out timeline.json

CUDA events time a call as a whole; they cannot show whether two of its kernels overlap
(kv_stream_kernel beside the Hopper e4m3 kernel), which one waits for the other, or the gaps
between launches. For each shape and path this runs ``--warmup`` calls, then ``--calls`` calls back
to back under the profiler, and reports the last of those: the calls before it fill the
pipeline, so that its first kernel meets the previous call's end as it does in a loop. The call
before it is shown too (negative times), for the gap between one call's last kernel and the
next call's. Paths are
bench_attention.py's end-to-end ones (``sage_<path>``: the public pipeline with that kernel).
Prints the timelines and writes JSON (``--out``) with the GPU, shapes, dtype and commit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as bench  # noqa: E402  (also puts an in-place build first on sys.path)
import bench_cli  # noqa: E402
import torch  # noqa: E402


def last_call(kernels: list[tuple[str, float, float]], calls: int) -> tuple[list[dict], list[dict]]:
    """The last of ``calls`` calls that launched the same kernels each, from (name, start, end)
    in µs in any order: its kernels by start, times from its first kernel's start; and the call
    before it on the same clock (negative times; empty for one call), where the last call's
    first kernels meet the previous call's end."""
    kernels = sorted(kernels, key=lambda k: k[1])
    if calls < 1 or not kernels or len(kernels) % calls:
        raise ValueError(f"{len(kernels)} kernels do not split into {calls} calls of the same kernels")
    per_call = len(kernels) // calls
    last, previous = kernels[-per_call:], kernels[-2 * per_call:-per_call] if calls > 1 else []
    names = [name for name, _, _ in last]
    if [name for name, _, _ in kernels[:per_call]] != names:
        raise ValueError("the calls launched different kernels: " + ", ".join(names))
    t0 = last[0][1]
    return tuple([{"name": name, "start_us": start - t0, "end_us": end - t0} for name, start, end in call]
                 for call in (last, previous))


def profile_kernels(fn, calls: int) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every CUDA kernel ``calls`` back-to-back calls of fn launch."""
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA]


def print_timeline(row: dict) -> None:
    mask = "causal" if row["causal"] else "full"
    print(f"== {row['path']}  B={row['B']} H={row['H']} N={row['N']} D={row['D']} {mask}")
    for tag, kernels in (("(previous call) ", row["previous_call"]), ("", row["kernels"])):
        for k in kernels:
            name = tag + k["name"]
            print(f"  {k['start_us']:9.1f} .. {k['end_us']:9.1f}  ({k['end_us'] - k['start_us']:8.1f} us)  {name[:100]}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_shape_arguments(p, n=[4096])
    p.add_argument("--paths", nargs="+", default=["sm90_fp8"], choices=bench.KERNELS, metavar="PATH",
                   help=f"kernel paths, end to end (of {', '.join(bench.KERNELS)}; default sm90_fp8)")
    p.add_argument("--warmup", type=bench_cli.nonnegative_int, default=3)
    p.add_argument("--calls", type=bench_cli.positive_int, default=3, help="calls under the profiler; the last is shown")
    p.add_argument("--out", type=bench_cli.output_path, default="call_timeline.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if missing := bench.missing_gpu():
        print(f"call_timeline: {missing}", file=sys.stderr)
        return 2
    unavailable = sorted(set(args.paths) - set(bench.available_kernels()))
    if unavailable:
        print(f"call_timeline: this GPU/build does not run {', '.join(unavailable)}", file=sys.stderr)
        return 2
    timing = f"CUPTI kernel records (torch.profiler): the last of {args.calls} back-to-back calls after {args.warmup} warmup calls"
    env = bench.environment(args.dtype, timing, qk_quant_gran=args.gran)
    print(json.dumps(env), flush=True)
    rows = []
    for d, n, causal in bench.shapes(args):
        q, k, v = bench.random_qkv(args.batch, args.heads, n, d, bench.DTYPES[args.dtype])
        for path in args.paths:
            fn = bench.sage_path(path, bench.kernel_gran(args.gran), causal)
            call = lambda: fn(q, k, v)  # noqa: E731
            for _ in range(args.warmup):
                call()
            torch.cuda.synchronize()
            kernels, previous = last_call(profile_kernels(call, args.calls), args.calls)
            row = {"path": path, "B": args.batch, "H": args.heads, "N": n, "D": d, "causal": causal,
                   "kernels": kernels, "previous_call": previous}
            rows.append(row)
            print_timeline(row)
            bench_cli.write_json(args.out, {"env": env, "rows": rows})  # after every row
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
