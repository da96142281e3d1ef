#!/usr/bin/env python3
"""Benchmark: sageattention end to end (quantization included) against PyTorch SDPA.

For every shape (B, H, N, head dim, causal) it times, in one process on one GPU:
  * ``sageattn`` as users call it (dispatch by compute capability),
  * every explicit kernel path this GPU/build runs (``fp16``: INT8 QK + fp16 P·V, mma.sync;
    ``fp8``: INT8 QK + fp8 P·V, mma.sync; ``sm90_fp16`` / ``sm90_fp8``: the Hopper wgmma
    kernel), end to end and kernel only (pre-quantized inputs),
  * SDPA with ``sdpa_kernel`` forced to FLASH_ATTENTION, CUDNN_ATTENTION and
    EFFICIENT_ATTENTION (a backend that refuses the shape is reported as such).
TFLOPS = 4 * B * H * N^2 * D / time, halved for causal. Accuracy (cosine, relative L1)
against fp32 attention is measured on a slice (batch 0, the first ``--acc-heads`` heads)
for N <= ``--acc-max-n``. Prints a table and writes JSON (``--out``).

Examples:
  python bench/bench_attention.py --out bench.json                       # full grid
  python bench/bench_attention.py --n 4096 16384 --hd 128 --out hd128.json
  python bench/bench_attention.py --n 1024 --hd 64 --causal false --dtype bf16 --out quick.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path and os.environ.get("SAGE_BENCH_INSTALLED", "") != "1":
    sys.path.insert(0, str(ROOT))  # an in-place build (setup.py build_ext --inplace) wins
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cli  # noqa: E402
import sageattention  # noqa: E402
from sageattention import core, quant, reference  # noqa: E402

SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")
KERNELS = tuple(core.KERNELS)  # the explicit kernel paths (available_kernels: those this GPU and build run)
CAUSAL = {"both": (False, True), "true": (True,), "false": (False,)}  # --causal -> the masks timed
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
DEVICE = "cuda"
# The GPU time of one timed sample (bench_ms): long enough that the host's launches run
# ahead of the GPU, and a fifth of the default settle, so settling costs 5x the timed calls (20x
# with the 5 ms samples before 6fe3f08's settled default).
SAMPLE_MS = 20.0


# --------------------------------------------------------------------------------- timing
def sample_ms(fn, calls: int, settle: int = 0) -> float:
    """Milliseconds per call of ``calls`` calls of ``fn`` queued back to back (CUDA events),
    after ``settle`` untimed calls queued right before them."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(settle):
        fn()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def call_ms(fn, warmup: int) -> float:
    """Milliseconds of one call of ``fn`` (host clock, synchronized), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return max((time.perf_counter() - t0) * 1e3, 1e-3)


def calls_lasting(ms: float, one_call_ms: float) -> int:
    """Calls (at least one) that take about ``ms`` milliseconds at ``one_call_ms`` each."""
    return max(1, math.ceil(ms / one_call_ms))


def calls_per_sample(fn, warmup: int, ms: float) -> int:
    """Calls of ``fn`` that take about ``ms`` milliseconds, after ``warmup`` calls."""
    return calls_lasting(ms, call_ms(fn, warmup))


def bench_ms(fns: dict, warmup: int, reps: int, min_ms: float, settle_ms: float = 0.0, sample=sample_ms,
             cost=call_ms) -> dict:
    """Median milliseconds per call of each of ``fns`` (label -> function), sampled in turns.

    A sample times a run of calls queued back to back (about SAMPLE_MS of them), as a model's
    forward pass queues them: the host's launch overhead overlaps the GPU work instead of
    idling it (torch.utils.benchmark, which the established package's benchmark uses, times
    the same way). The functions take turns, one sample each a round, until each has ``reps``
    samples and ``min_ms`` of calls: a GPU's clock drifts over seconds (power, temperature),
    and samples taken in turns see the same drift, so the ratios of one run (ours against
    SDPA's) do not depend on which path ran when. Each round takes them in a new order (seeded):
    a sample also runs at the clock its predecessor's power draw left, and in a fixed cyclic
    order every path had the same predecessor each round. (Timed one path after the other, the
    same pipeline under two labels measured 0.95-1.03x of itself in one run on H100; in turns
    of a fixed cyclic order 0.989-0.999x, but 0.92x twice at hd128 16k, where it always followed
    the e4m3 kernel: bench/results/h200-020fa5b-interleaved-bench.txt. In random order on H100,
    0.976-1.022x, but cuDNN measured 2-15% faster than timed one after the other:
    bench/results/h100-1f6bda8-random-order-*.json.)

    With ``settle_ms`` (the script's default: 100), each sample first runs its path untimed for
    about that long, so that it runs at the clock its own power draw sets. At the H100's 700 W
    limit every attention path here throttles within ~100 ms, each to its own clock: alone for
    3 s, cuDNN at hd128 4k from 1980 to 1560 MHz (16% slower), the e4m3 path to 1700 MHz (6.5%
    slower; bench/results/h100-10fe2e2-clocks.txt). Unsettled, a short sample runs at the clock
    the samples before it left: with 5 ms samples, against settled ones on that H100, cuDNN
    measured 9-20% faster, the efficient backend 3-11% slower, the e4m3 path 0.95-1.04x
    (h100-10fe2e2-turns-*.json against -settled-1.json).
    """
    labels = list(fns)
    once = {label: cost(fns[label], warmup) for label in labels}  # ms of one call
    calls = {label: calls_lasting(SAMPLE_MS, once[label]) for label in labels}
    settle = {label: math.ceil(settle_ms / once[label]) for label in labels}
    times: dict = {label: [] for label in labels}

    def done(label):
        return len(times[label]) >= reps and sum(times[label]) * calls[label] >= min_ms

    deadline = time.perf_counter() + 30.0 * len(labels)
    order, shuffle = list(labels), random.Random(0).shuffle
    for _ in range(10 * reps):
        if all(done(label) for label in labels) or time.perf_counter() > deadline:
            break
        shuffle(order)
        for label in order:
            times[label].append(sample(fns[label], calls[label], settle[label]))
    return {label: statistics.median(t) for label, t in times.items()}


# ---------------------------------------------------------------------------------- paths
def available_kernels() -> list[str]:
    cap = torch.cuda.get_device_capability()
    names = ["fp16"]
    if cap >= (8, 9):
        names.append("fp8")
    if cap == (9, 0) and sageattention._extension.has_cuda_kernel("attn_sm90"):
        names += ["sm90_fp16", "sm90_fp8"]
    return names


def kernel_gran(gran: str) -> str:
    """The qk_quant_gran the explicit kernel paths run with on this GPU (sm12x: per_warp only)."""
    return "per_warp" if torch.cuda.get_device_capability()[0] == 12 else gran


def end_to_end_labels(kernels, sdpa_backends=SDPA_BACKENDS) -> list[str]:
    """``sageattn``, the explicit ``kernels`` end to end (``sage_<name>``) and SDPA's
    ``sdpa_backends`` (``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient``); no GPU needed."""
    return ["sageattn", *(f"sage_{name}" for name in kernels),
            *(f"sdpa_{backend.split('_')[0].lower()}" for backend in sdpa_backends)]


def end_to_end_paths(causal: bool, gran: str, kernels, sdpa_backends=SDPA_BACKENDS) -> dict:
    """label (end_to_end_labels) -> fn(q, k, v)."""
    fns = [lambda q, k, v: sageattention.sageattn(q, k, v, is_causal=causal),
           *(sage_path(name, kernel_gran(gran), causal) for name in kernels),
           *(sdpa(backend, causal) for backend in sdpa_backends)]
    return dict(zip(end_to_end_labels(kernels, sdpa_backends), fns))


def sage_path(kernel: str, gran: str, causal: bool):
    """End to end: the public pipeline with a fixed kernel."""
    return lambda q, k, v: core._attention(q, k, v, "HND", causal, None, False, kernel, gran, True)


def kernel_only(kernel_name: str, gran: str, causal: bool, q, k, v):
    """Pre-quantize once; return a closure timing only the attention op (the Hopper op
    quantizes Q itself, so its time includes that)."""
    ops = torch.ops.sageattention
    g = quant.granularity(gran)
    ki, ks, _ = quant.quant_k(ops, k, 0, g, smooth=True)
    return core._kernel_call(ops, core.KERNELS[kernel_name], q, ki, ks, v, 0, g, q.shape[-1] ** -0.5, causal, False)


def sdpa(backend_name: str, causal: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


# ------------------------------------------------------------------------------- accuracy
def accuracy(out, q, k, v, causal, heads):
    qs, ks, vs = (t[:1, :heads] for t in (q, k, v))
    ref = reference.attention(qs, ks, vs, "HND", is_causal=causal, dtype=torch.float32)
    o = out[:1, :heads].double().flatten()
    r = ref.double().flatten()
    cos = F.cosine_similarity(o, r, dim=0).item()
    l1 = ((o - r).abs().sum() / r.abs().sum()).item()
    return {"cos": cos, "rel_l1": l1, "finite": bool(torch.isfinite(out).all())}


# ---------------------------------------------------------------------------------- main
def random_qkv(b, h, n, d, dtype):
    """Q, K and V [b, h, n, d] of standard normal values, the same in every run."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    return tuple(torch.randn(b, h, n, d, device=DEVICE, dtype=dtype, generator=gen) for _ in range(3))


def run_shape(args, b, h, n, d, causal, dtype):
    q, k, v = random_qkv(b, h, n, d, dtype)
    auto_kernel, auto_gran = core._auto_kernel(q.device)
    row = {"B": b, "H": h, "N": n, "D": d, "causal": causal, "auto_kernel": auto_kernel.name, "results": {}}
    kernels = [name for name in available_kernels() if not args.paths or name in args.paths]
    paths = end_to_end_paths(causal, args.gran, kernels, () if args.no_sdpa else SDPA_BACKENDS)
    do_acc = n <= args.acc_max_n
    timed = {}
    for label, fn in paths.items():
        try:
            out = fn(q, k, v)
            torch.cuda.synchronize()
            row["results"][label] = accuracy(out, q, k, v, causal, args.acc_heads) if do_acc else {}
            timed[label] = lambda fn=fn: fn(q, k, v)
            del out
        except Exception as e:  # a backend refusing the shape/dtype/GPU is a result too
            row["results"][label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    if not args.no_kernel_only:
        for name in kernels:
            try:
                timed[f"kernel_{name}"] = kernel_only(name, kernel_gran(args.gran), causal, q, k, v)
                row["results"][f"kernel_{name}"] = {}
            except Exception as e:
                row["results"][f"kernel_{name}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    try:
        for label, ms in bench_ms(timed, args.warmup, args.reps, args.min_ms, args.settle_ms).items():
            row["results"][label] = {"ms": ms, "tflops": bench_cli.tflops(b, h, n, d, causal, ms), **row["results"][label]}
    except Exception as e:  # (out of memory, say) every timed path of the shape lacks its time
        for label in timed:
            row["results"][label] = {"error": f"timing: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    add_ratios(row)
    return row


def add_ratios(row):
    res = row["results"]
    sage = {k: v for k, v in res.items() if k.startswith("sage") and "tflops" in v}
    if sage:
        best = max(sage, key=lambda k: sage[k]["tflops"])
        row["best_sage"] = best
        row["ratios"] = {
            f"{best}/{s}": sage[best]["tflops"] / res[s]["tflops"]
            for s in res if s.startswith("sdpa_") and "tflops" in res[s]
        }
        row["sageattn_ratios"] = {
            f"sageattn/{s}": res["sageattn"]["tflops"] / res[s]["tflops"]
            for s in res if s.startswith("sdpa_") and "tflops" in res[s] and "tflops" in res.get("sageattn", {})
        }


def git_commit() -> str | None:
    """HEAD of the checkout (``-dirty`` with local changes); ``SAGE_COMMIT`` where the tree
    travelled without its .git (a GPU machine that gets a copy of the working tree)."""
    if os.environ.get("SAGE_COMMIT"):
        return os.environ["SAGE_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(dtype: str, timing: str, **extra) -> dict:
    """The GPU, software and commit a run measured, how it timed (``timing``), and ``extra``."""
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "sm_count": props.multi_processor_count,
        **gpu_limits(props),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "sageattention": sageattention.__version__,
        "sageattention_file": sageattention.__file__,
        "extension": importlib.util.find_spec("sageattention._C").origin if sageattention.extension_loaded() else None,
        "commit": git_commit(),
        "dtype": dtype,
        **extra,
        "timing": timing,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def timing_in_turns(reps: int, warmup: int, settle_ms: float = 0.0) -> str:
    """bench_ms's method, for the JSON."""
    return (f"CUDA events, median over >= {reps} samples of back-to-back calls (>= {SAMPLE_MS:g} ms each) after "
            f"{warmup} warmup calls, the paths of a shape sampled in turns (a new random order each round)"
            + (f", each sample after ~{settle_ms:g} ms of untimed calls of its path" if settle_ms else ""))


def gpu_limits(props) -> dict:
    """The GPU's power limit and SM clock ceiling (nvidia-smi; {} without it): the clock a
    path runs at, and so its time, depends on its power draw against that limit."""
    try:
        bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        query = ["nvidia-smi", f"--id={bus_id}", "--query-gpu=power.limit,clocks.max.sm", "--format=csv,noheader,nounits"]
        watts, mhz = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.split(",")
        return {"power_limit_w": float(watts), "sm_clock_max_mhz": int(mhz)}
    except (AttributeError, OSError, subprocess.SubprocessError, ValueError):
        return {}


def print_row(row):
    res = row["results"]
    head = f"B={row['B']} H={row['H']} N={row['N']:>5} D={row['D']:>3} {'causal' if row['causal'] else 'full  '}"
    cells = []
    for label, e in res.items():
        if "tflops" in e:
            acc = f" cos={e['cos']:.5f} l1={e['rel_l1']:.4f}" if "cos" in e else ""
            cells.append(f"{label}={e['tflops']:.0f}{acc}")
        else:
            cells.append(f"{label}=n/a")
    print(f"{head} | " + " | ".join(cells), flush=True)
    for key in ("ratios", "sageattn_ratios"):
        ratios = " ".join(f"{k}={v:.2f}x" for k, v in row.get(key, {}).items())
        if ratios:
            print(f"{'':>36} {ratios}", flush=True)


def add_shape_arguments(p, n=(1024, 4096, 16384), hd=(64, 128)) -> None:
    """The options every attention script here takes for its shapes (``shapes``), the inputs'
    dtype and the explicit paths' granularity."""
    p.add_argument("--batch", type=bench_cli.positive_int, default=4)
    p.add_argument("--heads", type=bench_cli.positive_int, default=32)
    p.add_argument("--n", type=bench_cli.positive_int, nargs="+", default=list(n))
    p.add_argument("--hd", type=int, nargs="+", default=list(hd), choices=[64, 128])
    p.add_argument("--causal", choices=list(CAUSAL), default="both")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--gran", choices=["per_warp", "per_thread"], default="per_thread",
                   help="qk_quant_gran of the explicit paths (sm12x always per_warp)")


def shapes(args) -> list[tuple[int, int, bool]]:
    """(head dim, N, causal) of every shape add_shape_arguments' options pick, in table order."""
    return [(d, n, causal) for d in args.hd for n in args.n for causal in CAUSAL[args.causal]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p)
    p.add_argument("--paths", nargs="*", default=None, choices=KERNELS, metavar="PATH",
                   help="explicit kernel paths to time, of: %(choices)s (default: all this GPU and build run)")
    p.add_argument("--no-sdpa", action="store_true")
    p.add_argument("--no-kernel-only", action="store_true")
    p.add_argument("--warmup", type=bench_cli.nonnegative_int, default=3)
    p.add_argument("--reps", type=bench_cli.positive_int, default=10)
    p.add_argument("--min-ms", type=bench_cli.duration, default=200.0, help="time at least this much per measurement")
    p.add_argument("--settle-ms", type=bench_cli.duration, default=100.0,
                   help="untimed calls of a path (about this many ms) right before each of its samples, so that "
                        "each path is timed at the clock its own power draw sets; 0: samples in quick turns, "
                        "at a clock the mix of paths sets (about 5x faster)")
    p.add_argument("--acc-max-n", type=int, default=16384, help="accuracy only for N up to this")
    p.add_argument("--acc-heads", type=bench_cli.positive_int, default=2, help="heads of batch 0 checked for accuracy")
    p.add_argument("--out", type=bench_cli.output_path, default="bench_attention.json")
    return p.parse_args(argv)


def missing_gpu():
    """Why this process cannot benchmark (no GPU, the extension not loaded), or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not sageattention.extension_loaded():
        return f"sageattention._C not loaded: {sageattention.extension_error()}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if missing := missing_gpu():
        print(f"bench_attention: {missing}", file=sys.stderr)
        return 2
    env = environment(args.dtype, timing_in_turns(args.reps, args.warmup, args.settle_ms), qk_quant_gran=args.gran)
    print(json.dumps(env), flush=True)
    rows = []
    for d, n, causal in shapes(args):
        row = run_shape(args, args.batch, args.heads, n, d, causal, DTYPES[args.dtype])
        rows.append(row)
        print_row(row)
        bench_cli.write_json(args.out, {"env": env, "rows": rows})  # after every row
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
