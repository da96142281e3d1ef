"""Markdown table of a bench_attention.py JSON file, for the README.

    python bench/report.py bench/results/h100-<commit>.json

One row per shape: ``sageattn`` end to end, SDPA's flash and cuDNN backends from the same
run, the ratios, the fp8 P·V path on sm90, accuracy, and the Hopper kernels alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cli  # noqa: E402


def _tflops(results: dict, label: str) -> float | None:
    return results.get(label, {}).get("tflops")


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def row(r: dict) -> str:
    res = r["results"]
    sage, flash, cudnn = (_tflops(res, k) for k in ("sageattn", "sdpa_flash", "sdpa_cudnn"))
    fp8 = res.get("sage_sm90_fp8", {})
    fp8_cell = "n/a" if "tflops" not in fp8 else (
        f"{fp8['tflops']:.0f}" + (f" (L1 {fp8['rel_l1']:.3f})" if "rel_l1" in fp8 else ""))
    acc = res.get("sageattn", {})
    acc_cell = f"{acc['cos']:.5f} / {acc['rel_l1']:.4f}" if "cos" in acc else "n/a"
    kernels = " / ".join(_fmt(_tflops(res, f"kernel_sm90_{pv}")) for pv in ("fp16", "fp8"))
    n = r["N"]
    cells = [str(r["D"]), f"{n // 1024}k" if n % 1024 == 0 else str(n), "yes" if r["causal"] else "no",
             _fmt(sage), _fmt(flash), _fmt(cudnn), _ratio(sage, flash), _ratio(sage, cudnn), fp8_cell,
             acc_cell, kernels]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| hd | N | causal | `sageattn` | SDPA flash | SDPA cuDNN | vs flash | vs cuDNN | fp8 P·V path (sm90) "
          "| cos / rel L1 (`sageattn`) | kernel only (sm90 fp16 / fp8) |")


def table(data: dict) -> str:
    rows = sorted(data["rows"], key=lambda r: (-r["D"], r["N"], r["causal"]))
    return "\n".join([HEADER, "|" + " --- |" * 11] + [row(r) for r in rows])


def load(path: Path) -> dict:
    """The bench_attention.py JSON in ``path``; ValueError('PATH: problem') for anything else."""
    data = bench_cli.read_json(path)
    kind = bench_cli.json_kind(data)
    if kind is None:
        raise ValueError(f"{path}: not a bench_attention.py JSON (no 'rows' with N, D, causal and results)")
    if kind != "bench_attention.py":
        raise ValueError(f"{path}: a {kind} JSON, not a bench_attention.py one")
    return data


def document(data: dict) -> str:
    env = data.get("env", {})
    # The timing regime too: settled and quick samples differ by up to 20% (bench_ms).
    return (f"<!-- {env.get('gpu')}, torch {env.get('torch')}, commit {env.get('commit')}, {env.get('dtype')}; "
            f"{env.get('timing', 'timing not recorded')} -->\n{table(data)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="a file written by bench_attention.py --out")
    args = parser.parse_args(argv)
    try:
        data = load(args.json)
    except ValueError as e:
        parser.error(str(e))
    try:
        text = document(data)
    except (AttributeError, TypeError, ValueError) as e:  # rows with the keys but values of other types
        parser.error(f"{args.json}: a bench_attention.py JSON with a malformed value ({type(e).__name__}: {e})")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
