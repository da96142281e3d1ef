"""Times sageattention's quantization ops alone on the GPU, as ``sageattn`` calls them:
K smoothing + INT8 (``quant_int8_smooth``, per_thread groups) and V to e4m3
(``quant_v_fp8``). Prints microseconds per call and the bandwidth that implies for the
bytes an op must move at least (read 2 bytes, write 1 byte an element), and saves both
with the GPU, shapes, dtype and commit as JSON.

    python bench/bench_quant.py --n 1024 4096 --hd 128 --out bench_quant.json

``--sample-missed`` zeroes the tokens of each head's sample (``reference.sample_tokens``):
V's sampled maxima are then 0, so every channel of every head overflows its limit and takes
``quant_v_fp8``'s repair path, the op's worst case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (timing, environment; puts an in-place build first)
import bench_cli  # noqa: E402

from sageattention import quant, reference  # noqa: E402

OPS = ("quant_int8_smooth", "quant_v_fp8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=bench_cli.positive_int, default=4)
    p.add_argument("--heads", type=bench_cli.positive_int, default=32)
    p.add_argument("--n", type=bench_cli.positive_int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--hd", type=int, nargs="+", default=[128, 64], choices=[64, 128])
    p.add_argument("--dtype", choices=sorted(ba.DTYPES), default="fp16")
    p.add_argument("--warmup", type=bench_cli.nonnegative_int, default=3)
    p.add_argument("--reps", type=bench_cli.positive_int, default=10)
    p.add_argument("--min-ms", type=bench_cli.duration, default=50.0, help="time at least this much per measurement")
    p.add_argument("--sample-missed", action="store_true",
                   help="zero every head's sampled tokens: quant_v_fp8 repairs every channel (its worst case)")
    p.add_argument("--out", type=bench_cli.output_path, default="bench_quant.json")
    return p.parse_args(argv)


def op_call(op: str, x: torch.Tensor):
    ops = torch.ops.sageattention
    if op == "quant_int8_smooth":
        return lambda: quant.quant_k(ops, x, 0, quant.granularity("per_thread"), smooth=True)
    return lambda: quant.quant_v_fp8(ops, x, 0)


def main(argv=None) -> int:
    args = parse_args(argv)
    if missing := ba.missing_gpu():
        print(f"bench_quant: {missing}", file=sys.stderr)
        return 2
    env = ba.environment(args.dtype, ba.timing_in_turns(args.reps, args.warmup), qk_quant_gran="per_thread",
                         sample_missed=args.sample_missed)
    print(json.dumps(env), flush=True)
    rows = []
    for d in args.hd:
        for n in args.n:
            x = torch.randn(args.batch, args.heads, n, d, device=ba.DEVICE, dtype=ba.DTYPES[args.dtype])
            if args.sample_missed:
                x[:, :, reference.sample_tokens(n)] = 0
            medians = ba.bench_ms({op: op_call(op, x) for op in OPS}, args.warmup, args.reps, args.min_ms)
            for op, ms in medians.items():
                row = {"op": op, "B": args.batch, "H": args.heads, "N": n, "D": d, "us": ms * 1e3,
                       "min_bytes_gbps": x.numel() * 3 / (ms * 1e-3) / 1e9}
                rows.append(row)
                print(f"{op:<18} B={args.batch} H={args.heads} N={n:>6} hd{d:<3} {row['us']:8.1f} us "
                      f"{row['min_bytes_gbps']:6.0f} GB/s", flush=True)
    bench_cli.write_json(args.out, {"env": env, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
