"""A/B of two builds from bench_attention.py JSON files: per shape and path, base -> new
TFLOPS and their ratio, then per path a summary over every pair given. bench_quant.py files
compare alike, by each op's GB/s (its minimum bytes over its time), and bench_clocks.py files by
each path's TFLOPS at its steady time per call.

    python bench/compare.py BASE.json NEW.json [BASE2.json NEW2.json ...] [--labels L ...] [--json OUT]

A pair whose runs measured different things (GPU, dtype, batch, heads, qk_quant_gran,
sample_missed, timing regime) is refused unless --allow-mismatch is given.

Run both trees in one session, each in its own process, with the same bench arguments, and
interleave repetitions (base, new, base, new): on one H200 the same base kernel measured up
to 6% apart between repetitions, and SDPA up to 20% between sessions. The summary
therefore counts the ratios, not only their mean: "11 of 12 >= 0.999" is a finding; one
ratio of 1.05 is not.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cli  # noqa: E402

STEADY = 0.999  # a ratio at least this high counts as "not slower"
# What a run measured, beyond its shapes: its rows' batch and heads and these env fields. Where
# and from what a run imported sageattention (sageattention_file, extension, commit, version)
# differs between the two sides of an A/B by design (wheel_ab.sh), and is not compared.
MEASURED_ROWS = ("B", "H")
# timing: settled samples and quick turns put the same kernel up to 20% apart (bench_ms).
MEASURED_ENV = ("gpu", "dtype", "qk_quant_gran", "sample_missed", "timing")


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


@dataclass(frozen=True)
class Run:
    path: Path
    kind: str  # a bench_cli.ROW_KEYS name: every benchmark that writes rows compares
    measured: dict  # the MEASURED_ROWS (their values over the rows) and MEASURED_ENV the file records
    shapes: dict  # (N, D, causal) -> label -> {"tflops": ...}


def _shapes(kind: str, rows: list) -> dict:
    if kind == "bench_quant.py":
        shapes: dict = {}
        for r in rows:
            shapes.setdefault((r["N"], r["D"], None), {})[r["op"]] = {"tflops": r["min_bytes_gbps"]}
        return shapes
    if kind == "bench_clocks.py":
        shapes = {}
        for r in rows:
            ms = r["summary"]["steady_ms"]
            shapes.setdefault((r["N"], r["D"], bool(r["causal"])), {})[r["path"]] = {
                "tflops": bench_cli.tflops(r["B"], r["H"], r["N"], r["D"], r["causal"], ms)}
        return shapes
    return {(r["N"], r["D"], bool(r["causal"])): r["results"] for r in rows}


def _measured(data: dict) -> dict:
    env = data.get("env") if isinstance(data.get("env"), dict) else {}
    rows = data["rows"]
    return ({key: sorted({r[key] for r in rows}) for key in MEASURED_ROWS if all(key in r for r in rows)}
            | {key: env[key] for key in MEASURED_ENV if key in env})


def load(path: Path) -> Run:
    data = bench_cli.read_json(path)
    kind = bench_cli.json_kind(data)
    if kind is None:
        raise ValueError(f"{path}: not a bench_attention.py, bench_quant.py or bench_clocks.py JSON file "
                         "(no rows with N, D and causal and results, or op and min_bytes_gbps, or path and windows)")
    try:
        return Run(path, kind, _measured(data), _shapes(kind, data["rows"]))
    except (TypeError, KeyError):  # a value of another type (a list for N, say), or no steady time
        raise ValueError(f"{path}: a {kind} JSON file with a malformed row") from None


def differences(base: Run, new: Run) -> str:
    """What base and new measured differently ("B: base [4], new [2]"; '' if nothing); a field
    either file lacks (an older script's) is not compared."""
    a, b = base.measured, new.measured
    return "; ".join(f"{key}: base {a[key]!r}, new {b[key]!r}" for key in (*MEASURED_ROWS, *MEASURED_ENV)
                     if key in a and key in b and a[key] != b[key])


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
    p.add_argument("files", nargs="+", type=Path, help="pairs of bench_attention.py (or bench_quant.py, bench_clocks.py) --out files: base, new, ...")
    p.add_argument("--labels", nargs="+", help="only these paths (e.g. kernel_sm90_fp16 sageattn)")
    p.add_argument("--json", type=bench_cli.output_path, help="also write every ratio and the summary here")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="compare runs that measured different things (GPU, dtype, B, H, qk_quant_gran, sample_missed, "
                        "timing)")
    args = p.parse_args(argv)
    if len(args.files) % 2:
        p.error(f"files come in pairs (base, new), got {len(args.files)}")
    try:
        runs = [load(f) for f in args.files]
    except ValueError as e:
        p.error(str(e))
    pairs = [(runs[i], runs[i + 1], differences(runs[i], runs[i + 1])) for i in range(0, len(runs), 2)]
    for base, new, differ in pairs:  # all checked before anything prints
        if base.kind != new.kind:
            p.error(f"{new.path} vs {base.path}: the kinds differ: base {base.kind}, new {new.kind}")
        if differ and not args.allow_mismatch:
            p.error(f"{new.path} vs {base.path}: the runs differ: {differ} (--allow-mismatch compares them anyway)")
    every = []
    for base, new, differ in pairs:
        rs = ratios(base.shapes, new.shapes, args.labels)
        print(f"== {new.path} vs {base.path}" + (f" (the runs differ: {differ})" if differ else ""))
        print("\n".join(map(format_ratio, rs)) if rs else "(no shape and path timed in both)")
        every += rs
    summary = summarize(every)
    print("== summary over all pairs")
    print("\n".join(map(format_summary, summary)))
    if args.json:
        bench_cli.write_json(args.json, {"ratios": [asdict(r) | {"ratio": r.ratio} for r in every],
                                         "summary": [asdict(s) for s in summary]})
    return 0 if every else 1


if __name__ == "__main__":
    sys.exit(main())
