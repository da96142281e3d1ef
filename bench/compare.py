"""A/B of two builds from bench_attention.py JSON files: per shape and path, base -> new
TFLOPS and their ratio, then per path a summary over every pair given. bench_quant.py files
compare alike, by each op's GB/s (its minimum bytes over its time).

    python bench/compare.py BASE.json NEW.json [BASE2.json NEW2.json ...] [--labels L ...] [--json OUT]

Run both trees in one session, each in its own process, with the same bench arguments, and
interleave repetitions (base, new, base, new): on one H200 the same base kernel measured up
to 6% apart between repetitions, and SDPA up to 20% between sessions. The summary
therefore counts the ratios, not only their mean: "11 of 12 >= 0.999" is a finding; one
ratio of 1.05 is not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

STEADY = 0.999  # a ratio at least this high counts as "not slower"


@dataclass(frozen=True)
class Ratio:
    label: str
    n: int
    d: int
    causal: bool | None  # None: a quantization op (no mask)
    base: float
    new: float
    l1_base: float | None = None
    l1_new: float | None = None

    @property
    def ratio(self) -> float:
        return self.new / self.base


@dataclass(frozen=True)
class Summary:
    label: str
    d: int  # head dim
    count: int
    geomean: float
    low: float
    high: float
    steady: int  # ratios >= STEADY


def _shapes(data: dict, path: Path) -> dict:
    try:
        if data["rows"] and "op" in data["rows"][0]:  # bench_quant.py
            shapes: dict = {}
            for r in data["rows"]:
                shapes.setdefault((r["N"], r["D"], None), {})[r["op"]] = {"tflops": r["min_bytes_gbps"]}
            return shapes
        return {(r["N"], r["D"], bool(r["causal"])): r["results"] for r in data["rows"]}
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a bench_attention.py or bench_quant.py JSON file "
                         "(no rows with N, D and causal and results, or op and min_bytes_gbps)") from None


def load(path: Path) -> dict:
    try:
        return _shapes(json.loads(path.read_text()), path)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None


def ratios(base: dict, new: dict, labels: list[str] | None = None) -> list[Ratio]:
    """Every (shape, label) timed in both files, in base's order."""
    out = []
    for (n, d, causal), results in base.items():
        for label, a in results.items():
            b = new.get((n, d, causal), {}).get(label, {})
            if (labels and label not in labels) or "tflops" not in a or "tflops" not in b:
                continue
            out.append(Ratio(label, n, d, causal, a["tflops"], b["tflops"], a.get("rel_l1"), b.get("rel_l1")))
    return out


def summarize(rs: list[Ratio]) -> list[Summary]:
    """Per path and head dim (kernels differ by head dim), over shapes and pairs."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rs:
        groups.setdefault((r.label, r.d), []).append(r.ratio)
    return [Summary(label, d, len(x), math.exp(sum(map(math.log, x)) / len(x)), min(x), max(x),
                    sum(v >= STEADY for v in x))
            for (label, d), x in groups.items()]


def format_ratio(r: Ratio) -> str:
    l1 = f"  l1 {r.l1_base:.4f}->{r.l1_new:.4f}" if r.l1_base is not None and r.l1_new is not None else ""
    mask = {None: "", True: "causal ", False: "full   "}[r.causal]
    return (f"N={r.n:>5} hd{r.d:>3} {mask}{r.label:<18} "
            f"{r.base:6.0f} -> {r.new:6.0f}  {r.ratio:.3f}x{l1}")


def format_summary(s: Summary) -> str:
    return (f"{s.label:<18} hd{s.d:<3} {s.count:>3} ratios  geomean {s.geomean:.3f}  range {s.low:.3f}-{s.high:.3f}  "
            f"{s.steady} of {s.count} >= {STEADY}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="pairs of bench_attention.py (or bench_quant.py) --out files: base, new, ...")
    p.add_argument("--labels", nargs="+", help="only these paths (e.g. kernel_sm90_fp16 sageattn)")
    p.add_argument("--json", type=Path, help="also write every ratio and the summary here")
    args = p.parse_args(argv)
    if len(args.files) % 2:
        p.error(f"files come in pairs (base, new), got {len(args.files)}")
    try:
        tables = [load(f) for f in args.files]
    except ValueError as e:
        p.error(str(e))
    every = []
    for i in range(0, len(tables), 2):
        rs = ratios(tables[i], tables[i + 1], args.labels)
        print(f"== {args.files[i + 1]} vs {args.files[i]}")
        print("\n".join(map(format_ratio, rs)) if rs else "(no shape and path timed in both)")
        every += rs
    summary = summarize(every)
    print("== summary over all pairs")
    print("\n".join(map(format_summary, summary)))
    if args.json:
        args.json.write_text(json.dumps({"ratios": [asdict(r) | {"ratio": r.ratio} for r in every],
                                         "summary": [asdict(s) for s in summary]}, indent=1))
    return 0 if every else 1


if __name__ == "__main__":
    sys.exit(main())
