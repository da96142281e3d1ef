#!/usr/bin/env python3
"""Where the FP8 P·V path's error comes from, measured on the algorithm itself (CPU, no GPU).

Attention is computed in fp64 with each of the algorithm's roundings switched on alone and
together, exactly as ``sageattention.reference`` (the kernels' oracle) rounds:

* ``qk_int8``: Q and K (K smoothed) to INT8 with the chosen granularity's scales,
* ``p_e4m3``: P = 2^(s - max) stored as e4m3(P * 448) for the P·V product (l stays exact),
* ``v_e4m3``: V to e4m3 with per-channel scales,
* ``v_e4m3_hi_lo`` (instead of ``v_e4m3``): V as two e4m3 terms under the same per-channel
  scale, hi = e4m3(V / s) and lo = e4m3(V / s - hi), so that P·V = (P·hi + P·lo) s takes one
  more fp8 MMA with the same P and accumulator (a design, not a kernel of this package).

Relative L1 and cosine are against fp64 attention of the same fp16 inputs, as in the GPU
tests (random normal Q, K, V). The result bounds what any kernel computing this algorithm
can reach: a kernel only adds its own accumulation error on top.

  python bench/error_budget.py --out error_budget.json
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_cli  # noqa: E402
from sageattention import quant, reference  # noqa: E402

ROUNDINGS = ("qk_int8", "p_e4m3", "v_e4m3")
V_MODES = (None, "v_e4m3", "v_e4m3_hi_lo")


def e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.float().to(torch.float8_e4m3fn).double()


def logits(q, k, gran: quant.Granularity, int8: bool) -> torch.Tensor:
    """Base-2 logits [B, H, Nq, Nk] in fp64."""
    scale = q.shape[-1] ** -0.5 * quant.LOG2E
    if not int8:
        return q.double() @ k.double().transpose(-1, -2) * scale
    q8, qs = reference.quant_int8(q, None, reference.HND, gran.q.block, gran.q.stride, scale)
    k8, ks, _ = reference.quant_int8_smooth(k, reference.HND, gran.k.block, gran.k.stride)
    return reference._logits(q8, k8, qs, ks, is_causal=False).double()


def attention(s: torch.Tensor, v: torch.Tensor, p_e4m3: bool, v_mode: str | None) -> torch.Tensor:
    """``v_mode``: one of V_MODES (None keeps V as given)."""
    p = torch.exp2(s - s.amax(dim=-1, keepdim=True))
    l = p.sum(dim=-1, keepdim=True)  # the kernels sum the unrounded P in fp32
    if p_e4m3:
        p = e4m3(p * reference.E4M3_MAX) / reference.E4M3_MAX
    if v_mode is not None:
        v8, vs = reference.quant_v_fp8(v, reference.HND)
        hi, scale = reference.dequant_v_fp8(v8, v.shape[2]).double(), vs.double().unsqueeze(2)
        v = (hi + e4m3(v.double() / scale - hi) if v_mode == "v_e4m3_hi_lo" else hi) * scale
    return (p @ v.double()) / l


def rel_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().sum() / ref.abs().sum()).item()


def cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()


def budget(n: int, hd: int, heads: int, gran_name: str, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, hd, generator=g).half() for _ in range(3))
    gran = quant.granularity(gran_name)
    s = {int8: logits(q, k, gran, int8) for int8 in (False, True)}
    ref = attention(s[False], v, False, None)
    rows = []
    for int8, p8, v_mode in itertools.product((False, True), (False, True), V_MODES):
        if not (int8 or p8 or v_mode):
            continue
        out = attention(s[int8], v, p8, v_mode)
        roundings = [r for r, on in (("qk_int8", int8), ("p_e4m3", p8), (v_mode, v_mode)) if on]
        rows.append({"n": n, "hd": hd, "gran": gran_name, "roundings": roundings,
                     "rel_l1": rel_l1(out, ref), "cosine": cosine(out, ref)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=bench_cli.positive_int, nargs="+", default=[1024, 4096])
    p.add_argument("--hd", type=bench_cli.positive_int, nargs="+", default=[64, 128])
    p.add_argument("--heads", type=bench_cli.positive_int, default=4)
    p.add_argument("--gran", nargs="+", default=["per_thread", "per_warp"], choices=sorted(quant.GRANULARITIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=bench_cli.output_path, default="error_budget.json")
    a = p.parse_args(argv)
    rows = []
    print(f"{'N':>6} {'hd':>4} {'granularity':<11} {'roundings':<24} {'rel L1':>8} {'cosine':>9}")
    for n, hd, gran in itertools.product(a.n, a.hd, a.gran):
        for r in budget(n, hd, a.heads, gran, a.seed):
            rows.append(r)
            print(f"{n:>6} {hd:>4} {gran:<11} {'+'.join(r['roundings']):<24} {r['rel_l1']:>8.5f} {r['cosine']:>9.6f}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    meta = {"commit": commit, "torch": torch.__version__, "inputs": "randn fp16, B=1", "heads": a.heads, "seed": a.seed}
    bench_cli.write_json(a.out, {"meta": meta, "rows": rows})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
