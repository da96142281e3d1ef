"""Where a kernel's warps spend their time, per SASS instruction, from an ncu report's source
page: the warp-state samples summed over regions of the kernel and, inside its hottest loop,
by opcode and stall reason. No GPU needed: it reads the CSV that ncu exports.

    ncu --section WarpStateStats --section SourceCounters -k regex:attn_sm90 -c 1 -o rep python3 ...
    ncu -i rep.ncu-rep --page source --print-source sass --csv > sass.csv
    python bench/ncu_source.py sass.csv [--json summary.json]

A region is a run of consecutive instructions executed equally often (a loop body, a
prologue, an epilogue); the hot loop is every instruction executed at least half as often as
the most executed one (the key loop of the attention kernels). Samples are per warp: a warp
that waits (the producer at its barriers) collects them too.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cli  # noqa: E402

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


@dataclass(frozen=True)
class Instruction:
    address: int
    source: str
    samples: int
    executed: int
    stalls: dict[str, int] = field(default_factory=dict)  # stall_* column -> samples

    @property
    def opcode(self) -> str:
        """The mnemonic with its modifiers, without a predicate: `@!P0 BRA 0x10` -> `BRA`."""
        text = re.sub(r"^@!?U?P\w+\s+", "", self.source.strip())
        return text.split()[0] if text else "?"


@dataclass(frozen=True)
class Region:
    start: int  # address of the first instruction
    end: int  # address of the last
    instructions: int
    executed: int
    samples: int
    top_stalls: list[tuple[str, int]]


def parse(text: str) -> list[Instruction]:
    """The instructions of ncu's `--page source --print-source sass --csv` output (one kernel:
    a line naming it, the header, a row per instruction)."""
    rows = list(csv.reader(text.splitlines()))
    header_at = next((i for i, r in enumerate(rows) if "Address" in r and "Source" in r), None)
    if header_at is None:
        raise ValueError("no header row with 'Address' and 'Source': not ncu's source page as CSV")
    header = rows[header_at]
    missing = [c for c in (SAMPLES, EXECUTED) if c not in header]
    if missing:
        raise ValueError(f"columns missing from the source page: {', '.join(missing)} "
                         "(profile with --section SourceCounters)")
    col = {name: i for i, name in enumerate(header)}
    stall_cols = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]

    def number(row: list[str], name: str) -> int:
        value = row[col[name]].replace(",", "").strip()
        return int(value) if value else 0

    out = []
    for row in rows[header_at + 1:]:
        if len(row) < len(header) or not row[col["Address"]].strip():
            continue
        out.append(Instruction(int(row[col["Address"]], 16), row[col["Source"]].strip(), number(row, SAMPLES),
                               number(row, EXECUTED), {s: number(row, s) for s in stall_cols}))
    if not out:  # a summary of nothing would read as a kernel that never stalled
        raise ValueError("no instruction rows after the header")
    return out


def _top(counter: Counter, n: int) -> list[tuple[str, int]]:
    return [(k, v) for k, v in counter.most_common(n) if v > 0]


def regions(instructions: list[Instruction], top: int = 3) -> list[Region]:
    """Runs of consecutive instructions with one execution count."""
    out: list[Region] = []
    run: list[Instruction] = []

    def close():
        if run:
            stalls = Counter()
            for ins in run:
                stalls.update(ins.stalls)
            out.append(Region(run[0].address, run[-1].address, len(run), run[0].executed,
                              sum(i.samples for i in run), _top(stalls, top)))

    for ins in instructions:
        if run and ins.executed != run[-1].executed:
            close()
            run = []
        run.append(ins)
    close()
    return out


def hot_loop(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions executed at least half as often as the most executed one."""
    most = max((i.executed for i in instructions), default=0)
    return [i for i in instructions if most > 0 and i.executed * 2 >= most]


def by_opcode(instructions: list[Instruction], stall: str | None = None) -> Counter:
    """Samples (or one stall reason's samples) per opcode."""
    c = Counter()
    for ins in instructions:
        c[ins.opcode] += ins.stalls.get(stall, 0) if stall else ins.samples
    return c


def summary(instructions: list[Instruction], min_share: float = 0.003, top: int = 12) -> dict:
    total = sum(i.samples for i in instructions)
    loop = hot_loop(instructions)
    loop_stalls = Counter()
    for ins in loop:
        loop_stalls.update(ins.stalls)
    return {
        "samples": total,
        "first_address": instructions[0].address if instructions else 0,
        "regions": [asdict(r) for r in regions(instructions) if total and r.samples >= min_share * total],
        "hot_loop": {
            "instructions": len(loop),
            "samples": sum(i.samples for i in loop),
            "stalls": _top(loop_stalls, top),
            "by_opcode": _top(by_opcode(loop), top),
            "stall_wait_by_opcode": _top(by_opcode(loop, "stall_wait"), top),
        },
    }


def render(s: dict) -> str:
    total = s["samples"] or 1
    base = s["first_address"]
    lines = [f"warp-state samples: {s['samples']}", "",
             "regions (consecutive instructions executed equally often; offsets from the kernel's first):"]
    for r in s["regions"]:
        lines.append(f"  {r['start'] - base:#7x}-{r['end'] - base:#7x} {r['instructions']:5d} instr"
                     f"  executed {r['executed']:>10}  {r['samples']:>8} samples ({100 * r['samples'] / total:4.1f}%)"
                     f"  {r['top_stalls']}")
    loop = s["hot_loop"]
    share = 100 * loop["samples"] / total
    lines += ["", f"hot loop: {loop['instructions']} instructions, {loop['samples']} samples ({share:.1f}%)"]
    for key in ("stalls", "by_opcode", "stall_wait_by_opcode"):
        lines.append(f"  {key}: " + ", ".join(f"{k} {100 * v / max(loop['samples'], 1):.1f}%" for k, v in loop[key]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="ncu -i REPORT --page source --print-source sass --csv > this file")
    p.add_argument("--json", type=bench_cli.output_path, help="also write the summary here")
    p.add_argument("--min-share", type=float, default=0.003, help="list regions with at least this share of samples")
    args = p.parse_args(argv)
    if not args.csv.is_file():
        print(f"ncu_source: no such file: {args.csv}", file=sys.stderr)
        return 2
    try:
        s = summary(parse(args.csv.read_text()), args.min_share)
    except ValueError as e:
        print(f"ncu_source: {args.csv}: {e}", file=sys.stderr)
        return 2
    print(render(s))
    if args.json:
        bench_cli.write_json(args.json, s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
