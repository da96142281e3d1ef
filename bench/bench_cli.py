"""What the bench/ scripts share at their edges: argument types that refuse bad values before
any GPU time is spent, reading the JSON the benchmarks write, and writing outputs so that a
run killed mid-write never leaves a truncated file. No torch here: report.py and compare.py
run without it. And the formulas they share (tflops)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# The keys every row of each benchmark's --out JSON has: what tells one from another.
ROW_KEYS = {
    "bench_attention.py": {"N", "D", "causal", "results"},
    "bench_quant.py": {"op", "N", "D", "min_bytes_gbps"},
    "bench_clocks.py": {"path", "windows", "N", "D", "causal"},
}


# ------------------------------------------------------------------------- argument types
def _number_type(convert, accept, wanted: str):
    """An argparse type: ``convert(text)``, refused unless ``accept(value)``; ``wanted`` says what is."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


positive_int = _number_type(int, lambda v: v >= 1, "an integer >= 1")  # shapes, counts
nonnegative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")  # warmup calls
duration = _number_type(float, lambda v: v >= 0, "a number >= 0")  # (NaN fails the comparison too)
positive_duration = _number_type(float, lambda v: v > 0, "a number > 0")  # a span something must fill


def output_path(text: str) -> Path:
    """argparse type of an output file: refused at argument time, not after the measuring it
    would hold, when it names a directory or its directory is missing (never created: a typo
    there would otherwise scatter results)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory: {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: directory not writable: {path.parent}")
    return path


# ---------------------------------------------------------------------------- formulas
def tflops(b, h, n, d, causal, ms):
    """Attention's TFLOPS: 4 B H N^2 D flops (halved for causal) in ``ms`` milliseconds."""
    flops = 4 * b * h * n * n * d / (2 if causal else 1)
    return flops / (ms * 1e-3) / 1e12


# ----------------------------------------------------------------------------- JSON in
def read_json(path: Path):
    """The JSON in ``path``; ValueError('PATH: problem') where it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None


def json_kind(data) -> str | None:
    """The benchmark (a ROW_KEYS name) whose --out file ``data`` is: a non-empty list of rows,
    each with that benchmark's keys; None for anything else."""
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return next((kind for kind, keys in ROW_KEYS.items() if all(keys <= r.keys() for r in rows)), None)


# ---------------------------------------------------------------------------- JSON out
def write_json(path: Path, data) -> None:
    """``data`` as JSON in ``path``, replaced in one step: written to a file beside it first,
    so that a kill mid-write leaves the previous file (or none), never a truncated one."""
    text = json.dumps(data, indent=1) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: os.replace can't cross filesystems
    try:
        tmp.write_text(text)  # (created as open() creates: the umask applies, unlike mkstemp's 0600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
