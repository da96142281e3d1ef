"""Where the persistent Hopper kernel's consumers spend their cycles, phase by phase.

    python bench/sm90_phases.py patch TREE      # instrument a copy of the repository at TREE
    (cd TREE && python setup.py build_ext --inplace)   # or build TREE's wheel (sagebuild build, in TREE)
    python bench/sm90_phases.py run BUILD [--hd 64] > raw.txt   # on an H100/H200
    python bench/sm90_phases.py summary raw.txt [--json phases.json]

BUILD is TREE built in place, or the folder its wheel was installed into
(`pip install --no-deps --target DIR TREE/builder/*.whl`): `run` imports sageattention from
there and the benchmark helpers from this repository's bench/.

`patch` adds clock64() accumulators to TREE's csrc/sm90/attn_sm90.cuh (never to this
tree: the counters and the printf cost registers and time). Lane 0 of each consumer
warpgroup's first warp adds up, over its tiles, the cycles from one mark to the next:

    tile wait   the tile's number and its 16-bit Q stage (consume_tiles, read_q)
    quantize_q  Q to INT8 and the row scales
    first block Q K^T and softmax of key block 0 (nothing overlaps them)
    steps       key blocks 1 .. n-1, FA3's software pipeline (of which: waits for loads, with
                the first block's wait for block 1)
    drain       the last P V and its fold
    store       O and the LSE to global memory

and, inside the first block, its wait for key block 0's load (the tile's first stage after Q),
over all tiles and for the warpgroup's first tile alone (at the kernel's start, where the
end-to-end call's first heads may not be quantized yet), and printf's them when the CTA runs
out of tiles. `run` launches kernel-only calls
(pre-quantized K and V, as bench_attention.py's kernel rows), and at e4m3 hd64 also the
end-to-end call, where the kernel runs beside kv_stream_kernel; it prints a marker before
each, so that `summary` can attribute the lines; it reports the second launch of each shape.
The patch anchors on the kernel's source text and fails loudly where that has changed.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_cli  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNEL = pathlib.Path("csrc", "sm90", "attn_sm90.cuh")
PHASES = ["tile wait", "quantize_q", "first block", "steps", "drain", "store"]
SHAPES = [  # (path, head dim, N, causal), B=4 H=32 fp16
    ("sm90_fp8", 128, 1024, False), ("sm90_fp8", 128, 4096, False), ("sm90_fp8", 128, 4096, True),
    ("sm90_fp8", 128, 16384, False), ("sm90_fp16", 128, 4096, False), ("sm90_fp16", 64, 4096, False),
    ("sm90_fp16", 64, 4096, True), ("sm90_fp8", 64, 4096, False), ("sm90_fp8", 64, 4096, True),
]

COUNTERS = 11  # Phases::acc, each printed on the PH line
PHASES_STRUCT = f"""
struct Phases {{  // (sm90_phases.py) cycles per phase; acc[6] load waits in steps, [7] blocks, [8] tiles,
  long long t = 0, acc[{COUNTERS}] = {{}};  // [9] the first block's wait for block 0, [10] of the first tile
  __device__ void start() {{ t = clock64(); }}
  __device__ void mark(int i) {{ const long long u = clock64(); acc[i] += u - t; t = u; }}
}};
"""

# (anchor, replacement) pairs applied in order; each anchor must occur exactly once.
EDITS = [
    ("template <class Tr, bool kPersistent>\nstruct Sm90Kernel {",
     PHASES_STRUCT + "template <class Tr, bool kPersistent>\nstruct Sm90Kernel {"),
    ("const typename Coord::KeyBlocks& kb, int first, RowState& st) {",
     "const typename Coord::KeyBlocks& kb, int first, RowState& st, Phases& ph) {"),
    ("    auto step = [&](int j, auto masked) {\n      wait_full(j);",
     "    auto step = [&](int j, auto masked) {\n"
     "      { const long long w0 = clock64(); wait_full(j); ph.acc[6] += clock64() - w0; }"),
    ("      const int next = min(j + 1, n_blocks - 1);\n      wait_full(next);",
     "      const int next = min(j + 1, n_blocks - 1);\n"
     "      { const long long w0 = clock64(); wait_full(next); ph.acc[6] += clock64() - w0; }"),
    ("    wait_full(0);\n    take_turn();\n",
     "    { const long long w0 = clock64(); wait_full(0); const long long w = clock64() - w0;\n"
     "      ph.acc[9] += w; if (ph.acc[8] == 0) ph.acc[10] += w; }\n    take_turn();\n"),
    ("\n    int j = 1;\n", "\n    ph.mark(2);\n    int j = 1;\n"),
    ("    take_turn();\n    issue_block_pv(n_blocks - 1);\n",
     "    ph.mark(3);\n    ph.acc[7] += n_blocks;\n    take_turn();\n    issue_block_pv(n_blocks - 1);\n"),
    ("after_softmax.keep(p.kv_len < 0, st.sum[0][0]);\n  }",
     "after_softmax.keep(p.kv_len < 0, st.sum[0][0]);\n    ph.mark(4);\n  }"),
    ("int n, int first,\n                                  const QRegs& q_raw) {",
     "int n, int first,\n                                  const QRegs& q_raw, Phases& ph) {"),
    ("    quantize_q(p, sm, n, tid, q_raw, st);\n", "    quantize_q(p, sm, n, tid, q_raw, st);\n    ph.mark(1);\n"),
    ("    key_loop(p, x.c, sm, tid, x.kb, first, st);\n    store(p, sm, x, tid, st);\n",
     "    key_loop(p, x.c, sm, tid, x.kb, first, st, ph);\n    store(p, sm, x, tid, st);\n    ph.mark(5);\n    ph.acc[8] += 1;\n"),
    ("    const int tid = consumer_tid();\n    for (int n = 0, first = 0;; ++n) {",
     "    const int tid = consumer_tid();\n    Phases ph;\n    ph.start();\n    for (int n = 0, first = 0;; ++n) {"),
    ("      if (x.part == kNoWork) return finish_o_stores(tid);",
     "      if (x.part == kNoWork) {\n        finish_o_stores(tid);\n        if (tid % 128 == 0)\n"
     f'          printf("PH %d %d{" %lld" * COUNTERS}\\n", int(blockIdx.x), tid / 128,\n'
     f"                 {', '.join(f'ph.acc[{i}]' for i in range(COUNTERS))});\n"
     "        return;\n      }"),
    ("      read_q(sm, first, tid, q_raw);\n      run_tile(p, x, sm, n, first + 1, q_raw);",
     "      read_q(sm, first, tid, q_raw);\n      ph.mark(0);\n      run_tile(p, x, sm, n, first + 1, q_raw, ph);"),
    ("                 run_tile(p, x, sm, 0, 0, q_raw);",
     "                 Phases ph;\n                 run_tile(p, x, sm, 0, 0, q_raw, ph);"),
]


def patch(tree: pathlib.Path) -> None:
    src = tree / KERNEL
    text = src.read_text()
    for anchor, replacement in EDITS:
        if text.count(anchor) != 1:
            raise SystemExit(f"{src}: expected one occurrence of:\n{anchor}\nfound {text.count(anchor)}")
        text = text.replace(anchor, replacement)
    src.write_text(text)
    print(f"instrumented {src}")


def run(build: pathlib.Path, head_dims: list[int] | None = None) -> None:
    sys.path[:0] = [str(build), str(ROOT / "bench")]
    import torch
    import bench_attention as ba

    for path, d, n, causal in SHAPES:
        if head_dims and d not in head_dims:
            continue
        q, k, v = ba.random_qkv(4, 32, n, d, torch.float16)
        tag = f"{path} hd{d} N={n} {'causal' if causal else 'full'}"
        calls = {tag: ba.kernel_only(path, "per_thread", causal, q, k, v)}
        if path == "sm90_fp8" and d == 64:  # the kernel beside kv_stream_kernel, as the public path runs it
            call = ba.sage_path(path, "per_thread", causal)
            calls[f"{tag} end-to-end"] = lambda: call(q, k, v)
        for label, fn in calls.items():
            for launch in range(2):
                fn()  # unmarked: its lines print at this synchronize
                torch.cuda.synchronize()
                print(f"SHAPE {label} launch{launch}", flush=True)
                fn()
                torch.cuda.synchronize()
                print("END", flush=True)


def ph_counts(line: str) -> list[int]:
    """The COUNTERS counters of a line `PH block warpgroup c0 ..` (the patch's printf); ValueError else."""
    words = line.split()
    if len(words) != 3 + COUNTERS or not all(w.isdigit() for w in words[1:]):
        raise ValueError(f"malformed PH line (want PH, block, warpgroup and {COUNTERS} counts): {line.strip()!r}")
    return [int(w) for w in words[3:]]


def summarize(raw: pathlib.Path) -> dict:
    """Per shape, its second launch's phases; ValueError('RAW: problem') where RAW holds none or
    holds lines `run` and the patch cannot have printed."""
    rows, tag = collections.defaultdict(list), None
    for number, line in enumerate(raw.read_text(errors="replace").splitlines(), 1):  # (binary: no PH lines)
        words = line.split()
        if words[:1] == ["SHAPE"]:
            tag = " ".join(words[1:])
        elif words[:1] == ["END"]:
            tag = None
        elif words[:1] == ["PH"] and tag is not None:
            try:
                rows[tag].append(ph_counts(line))
            except ValueError as e:
                raise ValueError(f"{raw}:{number}: {e}") from None
    launches = {tag: wgs for tag, wgs in rows.items() if tag.endswith("launch1")}
    if not launches:
        raise ValueError(f"{raw}: no PH lines between a 'SHAPE ... launch1' and its END: not `run`'s output "
                         "on a patched build?")
    out = {}
    for tag, wgs in launches.items():
        mean = [sum(w[i] for w in wgs) / len(wgs) for i in range(COUNTERS)]
        tiles, blocks, total = mean[8], mean[7], sum(mean[:6])
        if not tiles or not total:
            raise ValueError(f"{raw}: {tag}: its warpgroups count no tiles or no cycles")
        shape = tag.rsplit(" ", 1)[0]
        out[shape] = {"warpgroups": len(wgs), "tiles": tiles, "key_blocks": blocks,
                      "cycles_per_tile": {name: mean[i] / tiles for i, name in enumerate(PHASES)},
                      "load_wait_cycles_per_tile": mean[6] / tiles,
                      "first_load_wait_cycles_per_tile": mean[9] / tiles,
                      "first_tile_load_wait_cycles": mean[10],
                      "share": {name: mean[i] / total for i, name in enumerate(PHASES)}}
        print(f"== {shape}: {len(wgs)} consumer warpgroups, {tiles:.1f} tiles and {blocks:.0f} key blocks each")
        for i, name in enumerate(PHASES):
            print(f"  {name:12s} {mean[i] / total * 100:5.1f}%  {mean[i] / tiles:8.0f} cycles a tile")
        print(f"  {'(load waits in steps)':22s} {mean[6] / tiles:8.0f} cycles a tile")
        print(f"  {'(first block: block 0)':22s} {mean[9] / tiles:8.0f} cycles a tile, {mean[10]:.0f} in the first tile")
    return out


def built(text: str) -> pathlib.Path:
    """argparse type of BUILD: a folder sageattention imports from."""
    path = pathlib.Path(text)
    if not (path / "sageattention" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: no sageattention package there: give the patched copy built in place, or the folder "
            "its wheel was installed into (pip install --no-deps --target DIR WHEEL)")
    return path


def tree(text: str) -> pathlib.Path:
    """argparse type of TREE: a repository copy, with the kernel `patch` instruments."""
    path = pathlib.Path(text)
    if not (path / KERNEL).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no {KERNEL} there: not a copy of this repository")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("patch").add_argument("tree", type=tree, help="a copy of the repository (never this one)")
    r = sub.add_parser("run")
    r.add_argument("build", type=built, help="the patched copy built in place, or the folder its wheel was installed into")
    r.add_argument("--hd", type=int, nargs="+", choices=sorted({s[1] for s in SHAPES}),
                   help="only the shapes of these head dims (default: all)")
    s = sub.add_parser("summary")
    s.add_argument("raw", type=pathlib.Path, help="what `run` printed")
    s.add_argument("--json", type=bench_cli.output_path)
    args = ap.parse_args(argv)
    if args.cmd == "patch":
        if args.tree.resolve() == ROOT:
            ap.error(f"{args.tree} is this repository: patch a copy of it (the counters cost registers and time)")
        patch(args.tree)
    elif args.cmd == "run":
        run(args.build, args.hd)
    else:
        try:
            out = summarize(args.raw)
        except OSError as e:
            ap.error(f"{args.raw}: {e.strerror}")
        except ValueError as e:
            ap.error(str(e))
        if args.json:
            bench_cli.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
