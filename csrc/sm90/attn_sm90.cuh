// Hopper (sm_90a) INT8 Q·K^T attention with warpgroup MMAs, warp-specialized.
//
// Same algorithm as attention/attn_kernel.cuh. A CTA owns kCtaQ query rows of one
// (batch, head) and is one producer and kConsumers consumer warpgroups, as in
// FlashAttention-3:
// - The producer (warpgroup 0) streams key blocks through a ring of kStages shared-memory
//   stages. One warp does it: K and V arrive by TMA, which counts its bytes on the
//   stage's `full` mbarrier; its lanes also copy the block's key scales. A stage is
//   reused once the consumers have arrived on its `empty` mbarrier. The producer needs
//   few registers and gives them to the consumers (setmaxnreg).
// - The consumers (two, three at head dim 64), 64 query rows each, only compute:
//   S = Q·K^T by wgmma (s8, both operands in shared memory), online softmax, O += P·V by
//   wgmma with P from registers (fp16/bf16, or e4m3). Each consumer warp's chain (wait S,
//   softmax, wait P·V) bounds the kernel: every instruction it does not execute (address
//   arithmetic, copies, masks of blocks that need none) shortens it. With 16-bit P·V
//   the consumers also take turns issuing their MMAs (FA3's ping-pong, see key_loop).
// Each Q tile is read once, so the consumers quantize it themselves as they load it
// (quant_int8's rule), instead of a separate pass over Q.
// Grids of two tiles an SM or more run persistent (see Sm90Kernel): one CTA an SM, whose
// producer claims tiles from a counter and streams each tile's 16-bit Q (by TMA) and then
// its key blocks through the same ring, while the consumers finish the previous tile.
// 16-bit V is read as the caller stores it ([keys][D] rows, through strides) and fed to
// wgmma as an MN-major operand. e4m3 wgmma takes K-major operands only: quant_v_fp8
// writes V^T ([D][keys]) for it. Shared tiles use the 64/128-byte swizzles that TMA
// writes and wgmma reads; tile bases are 1024-byte aligned.
#pragma once
#include <cuda_runtime.h>

#include <cstring>
#include <type_traits>

#include "attention/softmax.cuh"
#include "attention/store_rows.cuh"
#include "attention/traits.cuh"
#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "common/smem_layout.cuh"
#include "quant/int8_rows.cuh"
#include "sm90/async.cuh"
#include "sm90/wgmma.cuh"

namespace sage::sm90 {

// AttnParams plus the 16-bit Q that the kernel quantizes (q and q_scale are unused) and
// the TMA descriptors of K and V.
struct Sm90Params : AttnParams {
  CUtensorMap k_map;  // int8 K: (D, keys, B * Hkv), box (D, kCtaK, 1)
  CUtensorMap v_map;  // 16-bit V: (D, keys, Hkv, B), box (64, kCtaK, 1, 1); e4m3 V^T: (keys, D, B * Hkv)
  const void* q_in;   // [B, Hq, Nq, D] through element strides, fp16/bf16
  int64_t q_stride_b, q_stride_h, q_stride_n;
  int q_group_block, q_group_stride;  // quant_int8's group rule; group_block divides kWgQ
  float q_scale_mult;                 // sm_scale * log2 e
  int batch;
  // Persistent grids only (Sm90Kernel<Tr, true>): tiles past the grid's first ones are
  // claimed from `tile_counter` (zero at launch), and Q arrives by TMA through q_map.
  int* tile_counter;
  CUtensorMap q_map;  // 16-bit Q: (D, Nq, Hq, B), box (D, kCtaQ, 1, 1), unswizzled
  CUtensorMap o_map;  // kOBySmem: O (D, Nq, Hq, B), box (64, kWgQ, 1, 1), 128-byte swizzle
  // The tail split (Sm90Kernel::work, host: attn_sm90.cu's tail_split): the tiles from
  // tail_first on, the last wave's, are split into tail_chunks key ranges each (no split:
  // tail_first = the tile count, tail_chunks = 1). A chunk writes O / l in fp32 and its
  // log2 l + max to its part; the last of a tile's chunks to finish merges the parts.
  int tail_first, tail_chunks;
  float* part_o;    // [parts][kCtaQ][D]
  float* part_lse;  // [parts][kCtaQ], base 2
  int* part_done;   // [tail tiles][consumer warps]: chunks done (zero at launch)
  // Persistent e4m3 grids whose K and V kv_stream_kernel writes while this kernel runs
  // (quant/kv_stream.cuh): kv_ready[bkv] turns 1 once head bkv's K, V and scales are written.
  // nullptr: they were written before the launch.
  const int* kv_ready;
};

template <int kHeadDim_, PV kPV_, typename Elem_>
struct Sm90Traits {
  using Elem = Elem_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr PV kPV = kPV_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128");
  static constexpr bool kFp8 = kPV == PV::kFp8;

  // Consumer warpgroups: at head dim 64 a consumer's O is half as large, so three fit in
  // the register file (three warps a scheduler to hide the softmax's latencies), as in
  // FlashAttention-3's hdim-64 kernel. Not with e4m3 P·V: its P·V accumulator (kSumTiles)
  // comes on top of O, and at three consumers' 160 registers the key loop spilled (9 loads
  // and 7 stores a block) and ran 1.4% slower than without the sums tile; two consumers
  // (240 registers) hold it, the persistent grid and kQKAhead, and ran faster, see kQKAhead.
  // (One consumer a CTA and two CTAs an SM ran the e4m3 kernels 6-15% slower on H200 at
  // 4k/16k: 64-row CTAs stream K and V twice as often. See docs/kernels.md.)
  static constexpr int kConsumers = kHeadDim == 64 && !kFp8 ? 3 : 2;
  static constexpr int kWgQ = 64;  // rows per consumer: the wgmma M
  static constexpr int kCtaQ = kConsumers * kWgQ;
  static constexpr int kCtaK = 128;  // the wgmma N of Q K^T
  static constexpr int kConsumerThreads = kConsumers * 128;
  static constexpr int kThreads = 128 + kConsumerThreads;
  // FA3's ping-pong between the consumers (key_loop). Measured on H200 (kernel alone,
  // B=4 H=32, N 4k/16k): fp16 P·V 1-6% faster with it; e4m3 P·V 10-29% slower (its
  // longer softmax and fold then serialize the consumers instead of overlapping them).
  // e4m3 P·V also keeps ptxas's schedule, which waits for P·V(j-1) before block j's
  // maxima: the schedule fence alone (softmax before that wait) ran it 5-8% slower, fence
  // plus ping-pong 8-11%, and a per-block warpgroup vote (bar.red) to defer the fold
  // 9-22% (bench/results/h200-1378cda-fp8-schedule-ab.txt).
  static constexpr bool kPingPong = !kFp8;
  // The producer's registers once it has given the rest to the consumers (setmaxnreg,
  // Sm90Kernel::kConsumerRegs).
  static constexpr int kProducerRegs = 24;
  static constexpr int kSTiles = kCtaK / 8;
  static constexpr int kOTiles = kHeadDim / 8;
  // e4m3 P·V also yields the row sums of P: V^T's block carries 8 more rows ("channels")
  // of ones, so the MMA's columns D .. D + 7 are sum_k P[row][k], of the same rounded P
  // the output sums. That takes the 64 additions a lane did for its share of the sums off
  // the CUDA cores (10% of the instructions at head dim 128) for 6% (hd64: 12.5%) more P·V
  // MMA work: on H200 the hd128 kernel ran 2.5-3.4% faster. lse is then the log of that
  // sum: within log(1 + 2^-4) of the exact one and consistent with the output. Only the
  // block's P·V accumulator has the sums tile; the fold takes one column of it into the row
  // sums, so O keeps its size (an O with the tile too made hd64's three consumers spill).
  static constexpr int kSumTiles = kFp8 ? 1 : 0;
  static constexpr int kAccTiles = kOTiles + kSumTiles;  // n8 tiles of the P·V accumulator
  // Unmasked blocks take the exp2s of every kPairedEvery-th n8 tile of S two at a time from
  // exp2_f16x2_poly (FP16 FMA and ALU pipes) instead of MUFU, whose 16 lanes a clock an SM
  // bound each warp's softmax (on H100, ncu: MUFU.EX2 drew 18% of the key loop's warp
  // samples, more than any other instruction); e4m3 P needs no more than fp16 precision.
  // Measured on H100 (kernel alone, B=4 H=32 hd128, 1k-16k, full and causal, interleaved
  // A/B runs against one fp32-polynomial tile in 8): one paired tile in 4 +1.6% (15 of 18
  // ratios >= 0.999; end to end +1.7%), one in 3 the same as one in 4, one in 2 -3.4%
  // (bench/results/h100-c1a27bf-exp2-f16x2-ab.txt). Only with kSumTiles, where the paired
  // tiles are not summed on the CUDA cores: at hd64, with the pairs summed in f16x2, one tile
  // in 4 / in 8 ran the kernel 3.8% / 5.8% slower on H100 (h100-66cbeff-hd64-exp2-f16x2-ab.txt);
  // with hd64's sums from the MMA too, one tile in 4 ran it 1.0% faster (geomean of 4k and 16k,
  // full and causal; h100-b0c8591-hd64-two-consumers-ab.txt).
  // (On H200 the fp32 polynomial, 8 instructions an exp2,
  // helped at one tile in 8 and lost 2-15% at one in 4 or 2: h200-2ebc615-exp2-poly-ab.txt.)
  static constexpr int kPairedEvery = kFp8 ? 4 : 0;
  static constexpr int kQKSteps = kHeadDim / 32;
  // Block j + 1's Q K^T issued as soon as block j's scores are read, before its softmax
  // (key_loop's step_ahead), into a second set of registers: S never waits on the MMA.
  // Costs the registers of one more S (64), which only two consumers at head dim 64 have
  // (the 16-bit hd64 kernel keeps three). Measured on H100 (kernel alone, B=4 H=32, e4m3
  // hd64, three interleaved repetitions; bench/results/h100-b0c8591-hd64-two-consumers-ab.txt):
  // against main's three consumers, two with the sums tile and paired exp2s ran +3.1% at 4k
  // and +5.6% at 4k causal but 3.6% slower at 16k; with kQKAhead too +3.0% / +7.8% at 4k
  // and 0.989-1.029 at 16k (geomean +2.8%).
  static constexpr bool kQKAhead = kFp8 && kHeadDim == 64;
  static_assert(!(kQKAhead && kPingPong), "the ping-pong turns assume one Q K^T issue a step");
  // One CTA a tile: the 16-bit kernels' consumers issue their loads of the Q tile first
  // thing, so that the memory latency overlaps the CTA's setup (barriers, __syncthreads).
  // Measured on H200 (kernel alone, B=4 H=32, 1k/4k/16k, full and causal, two
  // repetitions): 16-bit P·V +1.0% at hd128 (geometric mean; 10 of 12 ratios >= 0.999,
  // the others 0.998 and 0.967), +0.6% at hd64. e4m3 P·V ran 1.4% slower at hd128 4k and 16k, and 2-4% at hd64,
  // where the Q registers held across the setup add a spill to the key loop
  // (bench/results/h200-88b9e15-early-q-ab.txt, bench/compare.py).
  static constexpr bool kEarlyQ = !kFp8;

  // (e4m3 V as two terms under one scale, hi + lo with one more P·V MMA a k step, took the
  // fp8 path's relative L1 from 0.038 to 0.025-0.027 but ran the kernel 7-19% slower on
  // H200, no faster than 16-bit P·V: bench/results/h200-c040be4-two-term-v-ab.txt.)
  // V block, in swizzle atoms of 128-byte rows stored one after the other. e4m3: V^T,
  // [head_dim][128 keys], one atom. 16-bit: V, [keys][head_dim] split along head_dim
  // into atoms of [keys][64 channels] (one TMA box each).
  static constexpr int kVAtoms = kFp8 ? 1 : kHeadDim / 64;
  static constexpr int kVAtomRows = kFp8 ? kHeadDim + 8 * kSumTiles : kCtaK;
  static constexpr int kQBytes = kCtaQ * kHeadDim;
  static constexpr int kKBytes = kCtaK * kHeadDim;
  static constexpr int kVAtomBytes = kVAtomRows * 128;
  static constexpr int kVBytes = kVAtoms * kVAtomBytes;
  static constexpr int kVTmaBytes = kCtaK * kHeadDim * (kFp8 ? 1 : 2);  // the ones rows stay put
  static_assert(kVBytes == kVTmaBytes + kSumTiles * 8 * 128, "V atoms cover the block");
  static constexpr int kTmaBytes = kKBytes + kVTmaBytes;
  // K's scales: one per 64-key group, or per key residue mod 8 inside it (quant_int8's
  // per_warp / per_thread groups). A lane's columns of S are keys 8 n + 2t + e, so in
  // each 64-key half of a block it meets two scales (e = 0, 1): 16 distinct a block.
  static constexpr int kKeyGroup = 64;
  static constexpr int kScaleBytes = kCtaK / kKeyGroup * 8 * 4;
  // A stage holds one key block: K, V and the key scales (1024-aligned: the swizzle
  // patterns repeat every 1024 bytes).
  static constexpr int kStageBytes = (kKBytes + kVBytes + kScaleBytes + 1023) / 1024 * 1024;
  static constexpr int kStages = 4;  // (5 ran the fp8 hd128 kernel 2% slower on H100)
  // A persistent grid streams each tile's 16-bit Q through the stage ring, and hands
  // work items from the producer to the consumers through kTileSlots slots: the
  // producer claims the next tile while the consumers finish the current one.
  static constexpr int kQRawBytes = kCtaQ * kHeadDim * 2;
  static_assert(kQRawBytes <= kKBytes + kVTmaBytes,
                "a stage holds a 16-bit Q tile (clear of the ones rows)");
  static constexpr int kTileSlots = 2;
  static constexpr int kSlotBytes = 48;  // Sm90Kernel::Work
  // The 16-bit hd64 kernel's O leaves through shared memory and TMA stores: the consumers
  // write it with stmatrix and go on to the next tile while the TMA unit stores it. The
  // others' lanes store their rows themselves (store_quad_row). Measured on H100 (kernel
  // alone, B=4 H=32, 4k/16k, interleaved runs): 16-bit hd64 +1.2% (10 of 12 ratios >= 0.999;
  // sageattn +1.6%), but e4m3 hd128 1.9% and e4m3 hd64 0.5% slower, their key loops
  // scheduled differently (bench/results/h100-5914978-tma-store-scale-prefetch-stages-ab.txt,
  // h100-4e2b1af-pdl-and-o-tma-store-16bit-hd64-ab.txt). 16-bit hd128 has no room left.
  static constexpr bool kOBySmem = !kFp8 && kHeadDim == 64;
  static constexpr int kOBytes = kOBySmem ? kCtaQ * kHeadDim * 2 : 0;
  // Shared memory, from a 1024-aligned base: the INT8 Q tile, the stages, the O tile, then
  // (at kBarriersAt) the mbarriers, Q's group maxima and the tile slots.
  static constexpr int kBarriersAt = kQBytes + kStages * kStageBytes + kOBytes;
  static constexpr int kSmemBytes = 1024 /* alignment slack */ + kBarriersAt + 2 * kStages * 8 +
                                    2 * kCtaQ * 4 /* Q group amax, two tiles' */ +
                                    kTileSlots * (2 * 8 /* mbarriers */ + kSlotBytes);
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
  static_assert((kBarriersAt + 2 * kStages * 8 + 2 * kCtaQ * 4 + 2 * kTileSlots * 8) % 16 == 0,
                "the slots are 16-byte aligned (their v4 accesses)");
};

// kPersistent: one CTA an SM claims tiles until none are left; otherwise one CTA a tile.
// The host picks the persistent grid once it has at least two tiles an SM, so that a tile's
// start (its Q, its first key blocks) overlaps the previous tile's end. Measured on H200
// against one CTA a tile (kernel alone, B=4 H=32, 1k-16k, full and causal, three
// repetitions): 16-bit P·V +4.5% at hd64 (24 of 24 ratios >= 0.999), +1.8% at hd128
// (+1.6-6.7% at 1k-2k, 0.985-1.066 at 4k, 0.977-0.998 at 16k; bench/results/
// h200-82b2d1f-persistent-ab.txt); e4m3 P·V at hd128 +3.6% (22 of 24; +2.5-9.0% at 1k-4k,
// 0.993-1.019 at 16k; h200-715ec69-fp8-persistent-ab.txt). e4m3 P·V at hd64 with three
// consumers could not hold its 24 KB Q tile in a 17 KB stage (h200-f974cae-fp8-hd64-
// persistent-ab.txt, h200-eb2cfaf-persistent-grid-ab.txt); with two it does (kQKAhead).
template <class Tr, bool kPersistent>
struct Sm90Kernel {
  using Elem = typename Tr::Elem;
  static constexpr int D = Tr::kHeadDim;
  static constexpr bool kFp8 = Tr::kFp8;
  using Softmax = OnlineSoftmax<1, Tr::kSTiles, Tr::kPV, Elem>;
  static constexpr int kPVSteps = Softmax::kPVSteps;
  using Coord = CtaCoord;

  // Registers a thread at launch: the register file / kThreads, rounded down to 8 (168), but
  // 160 for the persistent e4m3 hd64 grid. A scheduler quarter's file (16K registers) holds
  // its own warps' registers: at 168 the CTA leaves 256 in each, at 160 1024, room for
  // kv_stream_kernel's warp of 32 registers (quant/kv_stream.cuh), which runs beside it there.
  // (hd128's consumers need their 240; at 224, hd64's spill 40 values a tile, outside the
  // key loop, and the one-CTA-a-tile kernel's would spill inside it.)
  static constexpr bool kBesideKvStream = kPersistent && kFp8 && D == 64;
  static constexpr int kLaunchRegs = kBesideKvStream ? 160 : 65536 / Tr::kThreads / 8 * 8;
  // The consumers take what the producer gives back. setmaxnreg only moves the registers the
  // CTA launched with: a warpgroup's increase beyond what the others released waits forever
  // (a producer at 32 and consumers at 240 hung the kernel).
  static constexpr int kConsumerRegs =
      (Tr::kThreads * kLaunchRegs - 128 * Tr::kProducerRegs) / Tr::kConsumerThreads / 8 * 8;
  static_assert(kConsumerRegs <= 256, "registers");
  static constexpr float kLog2PScale = kFp8 ? 8.8073549220576041f : 0.0f;  // log2(Softmax::kPScale)

  static constexpr int kTurnBarrier = 1;                            // + wg: consumer wg's turn to issue MMAs (ping-pong)
  static constexpr int kConsumerBarrier = kTurnBarrier + Tr::kConsumers;  // + wg: consumer wg alone (Q, O staging)

  // Tiles, one per (batch, head, query block), are numbered in runs of kHeadGroup
  // (batch, head) pairs with the longest query blocks first inside a run, and start in
  // that order (one CTA a tile: the block scheduler's order; persistent: the first
  // gridDim.x by CTA index, the rest from tile_counter). The tiles in flight at one time
  // then share a few heads' K and V in L2, and under a causal mask (where the last query
  // blocks see the most keys) the long tiles go first and the short ones last, where they
  // even out the tail.
  static constexpr int kHeadGroup = 8;
  __device__ static int num_tiles(const Sm90Params& p) {
    return p.batch * p.q_heads * ((p.q_len + Tr::kCtaQ - 1) / Tr::kCtaQ);
  }
  __device__ static Coord tile_coord(const Sm90Params& p, unsigned tile) {
    const int q_blocks = (p.q_len + Tr::kCtaQ - 1) / Tr::kCtaQ;
    const int span = kHeadGroup * q_blocks;
    const int run = tile / span, r = tile % span;
    const int pairs = min(kHeadGroup, p.batch * p.q_heads - run * kHeadGroup);
    const int bh = run * kHeadGroup + r % pairs;
    return Coord::at(p, bh / p.q_heads, bh % p.q_heads, (q_blocks - 1 - r / pairs) * Tr::kCtaQ);
  }

  // Work items, numbered as tiles are up to tail_first; from there each tail tile is
  // tail_chunks items, its key blocks in near-equal consecutive ranges (attn_sm90.cu's
  // tail_split says when and why).
  struct Work {
    Coord c;
    typename Coord::KeyBlocks kb;
    int part;  // the chunk's part (Sm90Params::part_o), or -1: the whole tile (kNoWork: none left)
  };
  static constexpr int kNoWork = -2;
  static_assert(sizeof(Work) == Tr::kSlotBytes && sizeof(Work) % 16 == 0, "a slot is whole 16-byte words");
  __device__ static int num_work(const Sm90Params& p) {
    return p.tail_first + (num_tiles(p) - p.tail_first) * p.tail_chunks;
  }
  __device__ static Work work(const Sm90Params& p, unsigned w) {
    const bool chunk = kPersistent && w >= unsigned(p.tail_first);  // (the host splits persistent grids only)
    const int part = chunk ? int(w) - p.tail_first : -1;
    Work x{tile_coord(p, chunk ? p.tail_first + part / p.tail_chunks : w), {}, part};
    x.kb = x.c.key_blocks(p, Tr::kCtaQ, Tr::kCtaK);
    if (chunk) {
      const int i = part % p.tail_chunks, blocks = x.kb.n_blocks;
      x.kb.begin = i * blocks / p.tail_chunks;
      x.kb.n_blocks = (i + 1) * blocks / p.tail_chunks;
      // The tile's unmasked blocks may run past this range's end; the key loop steps
      // through n_unmasked blocks unmasked, so past the end it would wait for a stage
      // load that never comes.
      x.kb.n_unmasked = min(x.kb.n_unmasked, x.kb.n_blocks);
    }
    return x;
  }

  // Stage loads are numbered over all of a CTA's tiles (b; persistent: each tile's Q,
  // then its key blocks), tiles in the order the CTA runs them (n): a stage or slot and
  // its mbarrier phase follow from the number. Persistent grids number the loads
  // unsigned: first + j is of unknown sign to the compiler, and as an int its % and /
  // took sign fix-ups in the key loop. One CTA a tile keeps int (its SASS as measured).
  using LoadNo = std::conditional_t<kPersistent, unsigned, int>;
  struct Smem {
    uint32_t q;           // int8 Q tile, [kCtaQ][D]
    uint32_t stages;      // [kStages][K | V | key scales], or a 16-bit Q tile
    uint32_t o;           // kOBySmem: O on its way out, [consumer][D / 64][kWgQ rows][128 bytes]
    uint32_t full;        // mbarriers [kStages]: the load landed
    uint32_t empty;       // mbarriers [kStages]: every consumer warp is done with the load
    float* q_amax;        // [2][kCtaQ]: Q's group maxima by group within the tile; tile n's in half n % 2
    uint32_t tile_full;   // persistent: mbarriers [kTileSlots]: the slot holds a work item
    uint32_t tile_empty;  // persistent: mbarriers [kTileSlots]: every consumer warp has read it
    uint32_t slots;       // persistent: [kTileSlots] work items (16-byte aligned)
    __device__ uint32_t k(LoadNo b) const { return stages + (b % Tr::kStages) * Tr::kStageBytes; }
    __device__ uint32_t v(LoadNo b) const { return k(b) + Tr::kKBytes; }
    __device__ uint32_t scales(LoadNo b) const { return v(b) + Tr::kVBytes; }
    __device__ uint32_t full_bar(LoadNo b) const { return full + (b % Tr::kStages) * 8; }
    __device__ uint32_t empty_bar(LoadNo b) const { return empty + (b % Tr::kStages) * 8; }
    __device__ float* amax(int n) const { return q_amax + n % 2 * Tr::kCtaQ; }
    __device__ uint32_t tile_full_bar(int n) const { return tile_full + n % Tr::kTileSlots * 8; }
    __device__ uint32_t tile_empty_bar(int n) const { return tile_empty + n % Tr::kTileSlots * 8; }
    __device__ uint32_t slot(int n) const { return slots + n % Tr::kTileSlots * Tr::kSlotBytes; }
    // The producer's lane 0 writes tile n's item into its slot, every consumer warp reads it.
    __device__ void put_work(int n, const Work& x) const {
      uint4 w[sizeof(Work) / 16];
      memcpy(w, &x, sizeof(Work));
#pragma unroll
      for (int i = 0; i < int(sizeof(Work) / 16); ++i)
        asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(slot(n) + 16 * i), "r"(w[i].x), "r"(w[i].y),
                     "r"(w[i].z), "r"(w[i].w)
                     : "memory");
    }
    __device__ Work get_work(int n) const {
      uint4 w[sizeof(Work) / 16];
#pragma unroll
      for (int i = 0; i < int(sizeof(Work) / 16); ++i)
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(w[i].x), "=r"(w[i].y), "=r"(w[i].z), "=r"(w[i].w)
                     : "r"(slot(n) + 16 * i)
                     : "memory");
      Work x;
      memcpy(&x, w, sizeof(Work));
      return x;
    }
    __device__ void wait_full(LoadNo b) const { ptx::mbar_wait(full_bar(b), (b / Tr::kStages) & 1); }
    __device__ void wait_empty(int b) const {  // the producer, before stage load b
      if (b >= Tr::kStages) ptx::mbar_wait(empty_bar(b), (b / Tr::kStages - 1) & 1);
    }
    // This consumer warp is done with load b / with tile n's slot: one arrival a warp.
    __device__ void release(LoadNo b, int lane) const { warp_arrive(empty_bar(b), lane); }
    __device__ void release_slot(int n, int lane) const { warp_arrive(tile_empty_bar(n), lane); }
    __device__ static void warp_arrive(uint32_t bar, int lane) {
      __syncwarp();
      if (lane == 0) ptx::mbar_arrive(bar);
    }
  };

  // ------------------------------------------------------------------ producer warp
  // Loads the item's key blocks kb.begin .. kb.n_blocks - 1 into the stage ring as loads
  // first, first + 1, ... Lane 0 issues the TMA copies; lanes copy the block's distinct key
  // scales (those of keys 64 h + r, r < 8) and all arrive. A block's scales are loaded from
  // global memory while the loop waits for the block's stage, not after: on H100 the e4m3
  // hd128 kernel ran 0.7% faster (11 of 12 ratios >= 0.999, 4k causal +1.5%), hd64 the same
  // (bench/results/h100-5914978-tma-store-scale-prefetch-stages-ab.txt).
  __device__ static void load_blocks(const Sm90Params& p, const Coord& c, const typename Coord::KeyBlocks& kb,
                                     const Smem& sm, int first) {
    const int lane = threadIdx.x % 32;
    const float* k_scale = p.k_scale + c.bkv * p.kv_len;
    // Block j's scale of this lane (lanes past kScaleBytes / 4: unused). Past the end: any
    // finite positive scale (those keys are masked to -inf).
    auto key_scale = [&](int j) {
      const int key = (kb.begin + j) * Tr::kCtaK + lane / 8 * Tr::kKeyGroup + lane % 8;
      // (__ldcg, not __ldg: with kv_ready the scales are written while this kernel runs.)
      return lane < Tr::kScaleBytes / 4 && key < p.kv_len ? __ldcg(k_scale + key) : 1.0f;
    };
    float scale = key_scale(0);
    for (int j = 0; j < kb.n_blocks - kb.begin; ++j) {
      const int b = first + j;
      sm.wait_empty(b);
      const int k0 = (kb.begin + j) * Tr::kCtaK;
      const uint32_t full = sm.full_bar(b);
      if (lane == 0) {
        mbar_arrive_expect_tx(full, Tr::kTmaBytes);
        tma_load_3d(sm.k(b), &p.k_map, full, 0, k0, int(c.bkv));
        if constexpr (kFp8) {
          tma_load_3d(sm.v(b), &p.v_map, full, k0, 0, int(c.bkv));
        } else {
#pragma unroll
          for (int a = 0; a < Tr::kVAtoms; ++a)
            tma_load_4d(sm.v(b) + a * Tr::kVAtomBytes, &p.v_map, full, a * 64, k0, c.kv_head, c.batch);
        }
      }
      if (lane < Tr::kScaleBytes / 4)
        asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(sm.scales(b) + lane * 4), "f"(scale) : "memory");
      ptx::mbar_arrive(full);
      scale = key_scale(j + 1);  // in flight while the next block waits for its stage
    }
  }

  // Persistent grids: claims work items until none are left. Per item: its tile's 16-bit
  // Q as a stage load (rows past the sequence arrive as zeros); the item in its slot (part
  // kNoWork once none are left), so that the consumers need not redo work()'s runtime
  // divisions, a dependent chain at every tile start (on H100 the e4m3 hd64 4k causal call
  // ran 3.5% faster, its kernel 3.5%; bench/results/h100-d0b21df-tile-start-ab.txt); its
  // key blocks. The next item is claimed once this one's last block is issued, when the
  // consumers are at most kStages blocks from its end: claimed earlier, under a causal mask
  // short tiles went to CTAs still busy with long ones (eb2cfaf on H200: up to a third slower).
  __device__ static void produce(const Sm90Params& p, const Smem& sm) {
    const int lane = threadIdx.x % 32;
    const int items = num_work(p);
    int item = blockIdx.x, first = 0;
    for (int n = 0;; ++n) {
      const bool valid = item < items;
      Work x = work(p, valid ? item : 0);
      const Coord& c = x.c;
      if (valid) {
        sm.wait_empty(first);
        if (lane == 0) {
          mbar_arrive_expect_tx(sm.full_bar(first), Tr::kQRawBytes);
          tma_load_4d(sm.k(first), &p.q_map, sm.full_bar(first), 0, c.q0, c.head, c.batch);
        }
        ptx::mbar_arrive(sm.full_bar(first));
      }
      if (n >= Tr::kTileSlots) ptx::mbar_wait(sm.tile_empty_bar(n), (n / Tr::kTileSlots - 1) & 1);
      if (!valid) x.part = kNoWork;
      if (lane == 0) sm.put_work(n, x);
      ptx::mbar_arrive(sm.tile_full_bar(n));
      if (!valid) return;
      if (p.kv_ready != nullptr) wait_kv_ready(p.kv_ready + c.bkv);
      load_blocks(p, c, x.kb, sm, first + 1);
      first += 1 + x.kb.n_blocks - x.kb.begin;
      int next = 0;
      if (lane == 0) next = gridDim.x + atomicAdd(p.tile_counter, 1);
      item = __shfl_sync(0xffffffffu, next, 0);
    }
  }

  // Until kv_stream_kernel has published the head (a release of everything it wrote), then
  // orders this warp's TMA loads (the async proxy) after what the acquire made visible.
  __device__ static void wait_kv_ready(const int* ready) {
    int done = 0;
    for (;;) {
      asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(done) : "l"(ready) : "memory");
      if (done) break;
      __nanosleep(256);
    }
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
  }

  // ------------------------------------------------------------------ consumers
  // `tid` is the thread's index among the consumers; its rows are q0 + 16 warp + 8 h + g.
  struct RowState {
    float o[Tr::kOTiles * 4];  // wgmma accumulator order: [n8 tile][4]
    float max[1][2];      // base-2 logits
    float sum[1][2];      // row sums of P (fp8: of 448 P); without kSumTiles, this lane's part
    float q_scale[1][2];  // Q's scale times sm_scale * log2 e
  };

  // A consumer's 64 rows of the Q tile, 16-bit, in its registers as quant_int8 would hold
  // them: from global memory (one CTA a tile) or from its stage (persistent). Consumer
  // thread tid's rows are the tile's first_row(tid) + QChunk::row(tid % 128, i).
  using QChunk = int8::RowChunk<D, 128, Tr::kWgQ>;
  __device__ static int first_row(int tid) { return tid / 128 * Tr::kWgQ; }  // its consumer's, in the tile
  using QRegs = uint4[QChunk::kPasses];
  // per_thread's groups (sageattention.quant: WARP_Q = 32 rows, rows congruent mod 8) where a
  // pass covers 8 rows (head dim 128): each group is kLocalGroupPasses passes of one
  // half-warp's lanes, so quantize_q takes its maximum without shared-memory atomics.
  static constexpr int kLocalGroupBlock = 32;
  static constexpr bool kLocalGroups = QChunk::kRowsPerPass == 8;
  static constexpr int kLocalGroupPasses = kLocalGroupBlock / QChunk::kRowsPerPass;

  __device__ static void load_q(const Sm90Params& p, const Coord& c, int tid, QRegs& raw) {
    const int q0 = c.q0 + first_row(tid);
    QChunk::load(static_cast<const Elem*>(p.q_in) + c.batch * p.q_stride_b + c.head * p.q_stride_h +
                     int64_t(q0) * p.q_stride_n,
                 p.q_stride_n, min(Tr::kWgQ, p.q_len - q0), tid % 128, raw);
  }

  __device__ static void read_q(const Smem& sm, int b, int tid, QRegs& raw) {
    sm.wait_full(b);
    const int w = tid % 128;
#pragma unroll
    for (int i = 0; i < QChunk::kPasses; ++i) {
      const uint32_t src = sm.k(b) + (first_row(tid) + QChunk::row(w, i)) * D * 2 + QChunk::lane_in_row(w) * 16;
      asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(raw[i].x), "=r"(raw[i].y), "=r"(raw[i].z), "=r"(raw[i].w)
                   : "r"(src));
    }
    sm.release(b, tid % 32);
  }

  // The CTA's n-th Q tile -> INT8 in shared memory (the layout wgmma reads) and this
  // lane's row scales, by quant_int8's rule: one scale per token group, amax / 127.
  // Each consumer quantizes its own rows: a group lies inside one consumer's rows (the host
  // checks that q_group_block divides kWgQ), so the consumers need not wait for each other.
  // A consumer writes its INT8 rows once all its warps are past the previous tile's Q K^T
  // (the first barrier). The group maxima meet in shared memory, for the row scales of the
  // lanes whose accumulator rows they are (and, but for kLocalGroups, for the quantization
  // itself). Persistent: tile n's maxima are in amax(n). The atomic path takes maxima onto
  // zeros, so there the consumer clears its groups of amax(n + 1) between the barriers:
  // after tile n - 1's last reads of them, before tile n + 1's first atomics. kLocalGroups
  // stores every group's maximum outright.
  __device__ static void quantize_q(const Sm90Params& p, const Smem& sm, int n, int tid, const QRegs& raw,
                                    RowState& st) {
    const int wg = tid / 128, w = tid % 128, lane_in_row = QChunk::lane_in_row(w);
    auto group = [&](int r) { return int8::group_of(r, p.q_group_block, p.q_group_stride); };
    auto row = [&](int i) { return first_row(tid) + QChunk::row(w, i); };  // in the tile
    float* const q_amax = sm.amax(n);
    // kOBySmem: the previous tile's O leaves the consumer's shared tile before the barrier,
    // so that everyone may stage this tile's O (store) once past it.
    if (Tr::kOBySmem && w == 0) bulk_wait_read<0>();
    float amax[QChunk::kPasses];
#pragma unroll
    for (int i = 0; i < QChunk::kPasses; ++i) amax[i] = int8::lane_amax<Elem>(raw[i]);
    // Writes pass i quantized by `scale` (once the first barrier is passed).
    auto write = [&](int i, float scale) {
      float v[8];
      int8::unpack<Elem>(raw[i], v);
      const uint2 packed = int8::quantize(v, scale);
      const uint32_t dst = sm.q + SwizzledTile<D>::offset(row(i), lane_in_row / 2) + 8 * (lane_in_row % 2);
      asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(dst), "r"(packed.x), "r"(packed.y) : "memory");
    };
    if (kLocalGroups && p.q_group_block == kLocalGroupBlock && p.q_group_stride == QChunk::kRowsPerPass) {
      // A lane's passes hold the rows of kLocalGroupPasses-pass runs, one group each, and
      // a group's other rows are in the same passes of its row's other lanes.
      constexpr int kGroups = QChunk::kPasses / kLocalGroupPasses;
      float scale[kGroups];
#pragma unroll
      for (int k = 0; k < kGroups; ++k) {
        float m = amax[k * kLocalGroupPasses];
#pragma unroll
        for (int i = 1; i < kLocalGroupPasses; ++i) m = fmaxf(m, amax[k * kLocalGroupPasses + i]);
        m = int8::row_max<QChunk::kLanesPerRow>(m);
        if (lane_in_row == 0) q_amax[group(row(k * kLocalGroupPasses))] = m;
        scale[k] = int8::scale_of(m);
      }
      named_sync(kConsumerBarrier + wg, 128);
#pragma unroll
      for (int i = 0; i < QChunk::kPasses; ++i) write(i, scale[i / kLocalGroupPasses]);
    } else {
#pragma unroll
      for (int i = 0; i < QChunk::kPasses; ++i) {
        const float m = int8::row_max<QChunk::kLanesPerRow>(amax[i]);
        if (lane_in_row == 0) int8::atomic_amax(&q_amax[group(row(i))], m);
      }
      named_sync(kConsumerBarrier + wg, 128);
      if (kPersistent && w < Tr::kWgQ) sm.amax(n + 1)[group(first_row(tid) + w)] = 0.0f;
#pragma unroll
      for (int i = 0; i < QChunk::kPasses; ++i) write(i, int8::scale_of(q_amax[group(row(i))]));
    }
    const int warp = tid / 32, g = tid % 32 / 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) st.q_scale[0][h] = int8::scale_of(q_amax[group(16 * warp + 8 * h + g)]) * p.q_scale_mult;
    fence_proxy_async();  // Q's st.shared, before wgmma reads it
    named_sync(kConsumerBarrier + wg, 128);
  }

  __device__ static void pv_mma(float (&acc)[Tr::kAccTiles * 4], const uint32_t (&a)[4], uint64_t b, int scale_d) {
    if constexpr (kFp8) {
      if constexpr (D == 128) wgmma_m64n136k32_e4m3(acc, a, b, scale_d);
      else wgmma_m64n72k32_e4m3(acc, a, b, scale_d);
    } else if constexpr (Half2<Elem>::kBf16) {
      if constexpr (D == 128) wgmma_m64n128k16_bf16(acc, a, b, scale_d);
      else wgmma_m64n64k16_bf16(acc, a, b, scale_d);
    } else {
      if constexpr (D == 128) wgmma_m64n128k16_f16(acc, a, b, scale_d);
      else wgmma_m64n64k16_f16(acc, a, b, scale_d);
    }
  }

  using SAcc = int32_t[Tr::kSTiles * 4];  // wgmma accumulator order: [n8 tile][4]
  using OAcc = float[Tr::kAccTiles * 4];
  using PFrags = uint32_t[1][kPVSteps][4];

  // Issues S = Q K^T of key block `block` for consumer `wg` (asynchronous: wgmma_wait
  // before use). The descriptor start address steps 32 bytes (>> 4 = 2) per k32 step.
  __device__ static void issue_qk(const Smem& sm, int wg, int block, SAcc& s) {
    const uint64_t a = make_desc<D>(sm.q + wg * Tr::kWgQ * D);
    const uint64_t b = make_desc<D>(sm.k(block));
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < Tr::kQKSteps; ++ks) wgmma_m64n128k32_s8(s, a + 2 * ks, b + 2 * ks, ks);
    wgmma_commit();
  }

  // Issues acc (+)= P V of key block `block`; accumulate = false starts from zero.
  // A k step moves along the keys: e4m3 V^T steps inside its K-major rows (bytes), 16-bit
  // V steps over whole 128-byte rows (a multiple of the 1024-byte swizzle period).
  __device__ static void issue_pv(const Smem& sm, int block, const PFrags& pf, bool accumulate, OAcc& acc) {
    constexpr int kStepKeys = Softmax::kPVStepKeys;
    const uint32_t base = sm.v(block);
    const uint64_t b = kFp8 ? make_desc<128>(base) : make_desc_mn128(base, Tr::kVAtomBytes, 8 * 128);
    constexpr int kStepBytes = kFp8 ? kStepKeys : kStepKeys * 128;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) pv_mma(acc, pf[0][kk], b + kk * (kStepBytes >> 4), accumulate || kk > 0);
    wgmma_commit();
  }

  // Every kPaired<kMasked>-th n8 tile of P is an f16x2 pair (0: none): masked blocks pair no
  // tiles. softmax<kMasked> writes them, pack<kMasked> reads them.
  template <bool kMasked>
  static constexpr int kPaired = kMasked ? 0 : Tr::kPairedEvery;

  // Online softmax of the tile's key block j (stage load b): S -> P (as floats), alpha =
  // the rescale of O.
  // A column class (64-key half, e) shares one key scale, so the scales are applied per
  // class, not per score: the maximum is taken over the raw scores of each class, and
  // exp2's argument is one FMA of the raw score, 2^(s * k_scale * q_scale - m).
  // Scores stay in the biased form b = 1.5 * 2^23 + s (an exact float, one integer add
  // from int32); the bias is folded into the FMA's addend, whose rounding costs under an
  // integer step of s: far below INT8's own rounding. The fp8 path's P scale (448, to use
  // e4m3's range) is a term of the exponent too, so it scales the row sums alike and
  // cancels in O / l.
  // kMasked blocks cross the sequence end or the causal diagonal (with query and key
  // blocks of one size, the diagonal crosses every warp's rows).
  // `after_scores` runs once s is read (kQKAhead: it issues the next block's Q K^T into s).
  template <bool kMasked, class AfterScores>
  __device__ static void softmax(const AttnParams& p, const Coord& c, const Smem& sm, int warp, int j, int b,
                                 const SAcc& s, RowState& st, float (&x)[1][Tr::kSTiles][4], float (&alpha)[1][2],
                                 AfterScores&& after_scores) {
    constexpr int kHalves = Tr::kCtaK / Tr::kKeyGroup, kTilesPerHalf = Tr::kSTiles / kHalves;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int k0 = j * Tr::kCtaK, row0 = c.q0 + 16 * warp;
    float scale[kHalves][2];
#pragma unroll
    for (int hf = 0; hf < kHalves; ++hf) {
      float2 v;
      asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(sm.scales(b) + (hf * 8 + 2 * t) * 4));
      scale[hf][0] = v.x;
      scale[hf][1] = v.y;
    }
#pragma unroll
    for (int nt = 0; nt < Tr::kSTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) x[0][nt][e] = biased_int_to_float(s[nt * 4 + e]);
    if constexpr (kMasked) {
      // Column 8 nt + 2t + i of row h is visible below `limit[h]`: one compare with a
      // constant per score.
      int limit[2];
#pragma unroll
      for (int h = 0; h < 2; ++h)
        limit[h] = min(p.kv_len, p.causal ? row0 + 8 * h + g + 1 : p.kv_len) - k0 - 2 * t;
#pragma unroll
      for (int nt = 0; nt < Tr::kSTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (nt * 8 + e % 2 >= limit[e / 2]) x[0][nt][e] = -INFINITY;
    }
    float class_max[2][kHalves][2];  // [h]: rows g, g + 8
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // The fp8 kernel at head dim 128 keeps fmaxf: with the integer maxima it ran 2-4%
      // slower on H200 and 2.6% on H100 (differently scheduled; the cause is not understood).
      if constexpr (kMasked || (kFp8 && D == 128)) {
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf) class_max[h][hf][0] = class_max[h][hf][1] = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < Tr::kSTiles; ++nt)
#pragma unroll
          for (int i = 0; i < 2; ++i)
            class_max[h][nt / kTilesPerHalf][i] = fmaxf(class_max[h][nt / kTilesPerHalf][i], x[0][nt][2 * h + i]);
      } else {
        // Unmasked, the maxima are taken over the raw int32 scores, which order like their
        // biased floats: three-input integer maxima, half the instructions of fmaxf (H200:
        // the fp16 kernels and the hd64 fp8 one ran 1.5-5% faster).
        static_assert(kTilesPerHalf == 8, "the maxima below take 8 scores a class");
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf)
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            auto v = [&](int n) { return s[(hf * kTilesPerHalf + n) * 4 + 2 * h + i]; };
            const int m = __vimax3_s32(__vimax3_s32(v(0), v(1), v(2)), __vimax3_s32(v(3), v(4), v(5)), max(v(6), v(7)));
            class_max[h][hf][i] = biased_int_to_float(m);
          }
      }
    }
    after_scores();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;  // the block's row maximum of s * k_scale (-inf stays -inf)
#pragma unroll
      for (int hf = 0; hf < kHalves; ++hf)
#pragma unroll
        for (int i = 0; i < 2; ++i)
          mx = fmaxf(mx, fmaf(class_max[h][hf][i], scale[hf][i], -kMagicBias * scale[hf][i]));
      const float sq = st.q_scale[0][h];
      const float m_sub = Softmax::advance_max(st.max[0][h], mx, sq, alpha[0][h]);
      float mul[kHalves][2], add[kHalves][2];
#pragma unroll
      for (int hf = 0; hf < kHalves; ++hf)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mul[hf][i] = scale[hf][i] * sq;
          add[hf][i] = fmaf(-kMagicBias, mul[hf][i], kLog2PScale - m_sub);
        }
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < Tr::kSTiles; ++nt) {
        if constexpr (kPaired<kMasked> > 0) {
          if (Softmax::template paired_tile<kPaired<kMasked>>(nt)) {
            static_assert(Tr::kSumTiles > 0, "paired tiles leave the row sums to the P·V MMA");
            const int c = nt / kTilesPerHalf;
            x[0][nt][2 * h] = __uint_as_float(exp2_f16x2_poly(fmaf(x[0][nt][2 * h], mul[c][0], add[c][0]),
                                                              fmaf(x[0][nt][2 * h + 1], mul[c][1], add[c][1])));
            continue;
          }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          float& v = x[0][nt][2 * h + i];
          const float arg = fmaf(v, mul[nt / kTilesPerHalf][i], add[nt / kTilesPerHalf][i]);
          v = ptx::exp2_approx(arg);
          if constexpr (Tr::kSumTiles == 0) sum += v;  // else the P·V MMA sums P
        }
      }
      if constexpr (Tr::kSumTiles == 0) st.sum[0][h] = fmaf(st.sum[0][h], alpha[0][h], sum);
    }
  }

  // softmax<kMasked>'s P -> the A fragments of the P·V MMA.
  template <bool kMasked>
  __device__ static void pack(const float (&x)[1][Tr::kSTiles][4], PFrags& pf) {
    Softmax::template pack<kPaired<kMasked>>(x, pf);
  }

  // The key loop, software-pipelined as in FlashAttention-3: block j's Q K^T and block
  // j - 1's P V are issued back to back, and block j's softmax runs on the CUDA cores
  // while the tensor cores finish P V. Registers that a wgmma reads (P, O) are only
  // written once no wgmma is in flight, so ptxas does not serialize the MMAs. It visits
  // key blocks kb.begin .. kb.n_blocks - 1 as stage loads first, first + 1, ...
  __device__ static void key_loop(const AttnParams& p, const Coord& c, const Smem& sm, int tid,
                                  const typename Coord::KeyBlocks& kb, int first, RowState& st) {
    const int warp = tid / 32, lane = tid % 32;
    // Persistent: the warpgroup index as lane 0's (CUTLASS's canonical_warp_group_idx), so
    // ptxas knows it is warp-uniform and keeps the Q descriptors in uniform registers: 16
    // fewer instructions a key block at hd128 (549 -> 533). In the same H200 runs against
    // one CTA a tile, the kernel without it measured geomean 0.997 at hd128 and 1.026 at
    // hd64, with it 1.018 and 1.045. (One CTA a tile keeps its measured SASS: with the
    // broadcast too, e4m3 P·V at hd64 measured geomean 0.993, 9 of 24 ratios >= 0.999,
    // bench/results/h200-715ec69-fp8-persistent-ab.txt.)
    const int wg = kPersistent ? __shfl_sync(0xffffffffu, tid / 128, 0) : tid / 128;
    // The item's j-th block: key block kb.begin + j, stage load first + j.
    const int n_blocks = kb.n_blocks - kb.begin, n_unmasked = kb.n_unmasked - kb.begin;
    auto wait_full = [&](int j) { sm.wait_full(first + j); };

    SAcc s;
    OAcc pv_acc;  // fp8: block j - 1's P V before it is folded into O
    PFrags pf;
    float alpha[1][2] = {{1.0f, 1.0f}};

    // Ping-pong: the consumers take turns issuing their MMAs, so that while one runs its
    // softmax (CUDA cores, MUFU) the tensor cores work through another's. Consumer wg
    // waits for its turn on barrier kTurnBarrier + wg (its 128 threads plus the previous
    // consumer's arrival), issues, and passes the turn on. Each consumer takes
    // n_blocks + 1 turns; the last consumer's last pass would have no taker.
    auto take_turn = [&] {
      if constexpr (Tr::kPingPong) named_sync(kTurnBarrier + wg, 256);
    };
    auto pass_turn = [&](bool last) {
      if constexpr (Tr::kPingPong)
        if (!last || wg + 1 < Tr::kConsumers) named_arrive(kTurnBarrier + (wg + 1) % Tr::kConsumers, 256);
    };
    if (Tr::kPingPong && wg == 0) named_arrive(kTurnBarrier, 256);  // the first turn is consumer 0's
    ScheduleFence after_softmax;  // ping-pong, kQKAhead: the MMAs' wait stays after the softmax

    // O = O * alpha + P V, with P V of block `v_block` issued here (fp16: rescale then
    // accumulate in place; fp8: accumulate from zero, folded in by fold_pv).
    auto issue_block_pv = [&](int v_block) {
      if constexpr (!kFp8) {
        // Once the row maxima settle, alpha is 1 for whole warps: skip the 64 multiplies.
        if (!__all_sync(0xffffffffu, alpha[0][0] == 1.0f && alpha[0][1] == 1.0f))
#pragma unroll
          for (int i = 0; i < Tr::kOTiles * 4; ++i) st.o[i] *= alpha[0][(i % 4) / 2];
        issue_pv(sm, first + v_block, pf, true, st.o);
      } else {
        issue_pv(sm, first + v_block, pf, false, pv_acc);
      }
    };
    // (On H100 the fold ran 4% slower moved below the next Q K^T issue, and 5% slower done
    // once every two blocks with P V accumulating onto pv_acc in between:
    // bench/results/h100-c1a27bf-key-loop-variants-ab.txt.)
    auto fold_pv = [&](const float (&a)[2]) {  // fp8 only, once P V is complete
      if constexpr (kFp8)
#pragma unroll
        for (int i = 0; i < Tr::kOTiles * 4; ++i) st.o[i] = fmaf(st.o[i], a[(i % 4) / 2], pv_acc[i]);
      if constexpr (Tr::kSumTiles > 0)  // every column of the sums tile is the row's sum
#pragma unroll
        for (int h = 0; h < 2; ++h) st.sum[0][h] = fmaf(st.sum[0][h], a[h], pv_acc[Tr::kOTiles * 4 + 2 * h]);
    };
    // A step's end, P V of block j - 1 complete: its stage released, the P V folded into O,
    // block j's P packed for its own P V.
    auto finish_step = [&](int j, const float (&alpha_prev)[2], const float (&x)[1][Tr::kSTiles][4], auto masked) {
      fence_regs(st.o);
      fence_regs(pv_acc);
      sm.release(first + j - 1, lane);
      fold_pv(alpha_prev);
      pack<decltype(masked)::value>(x, pf);
    };
    auto no_hook = [] {};
    // One iteration: Q K^T of block j with P V of block j - 1, softmax of block j.
    auto step = [&](int j, auto masked) {
      wait_full(j);
      const float alpha_prev[2] = {alpha[0][0], alpha[0][1]};
      take_turn();
      issue_qk(sm, wg, first + j, s);
      issue_block_pv(j - 1);
      pass_turn(false);
      wgmma_wait<1>();  // S of block j
      fence_regs(s);
      float x[1][Tr::kSTiles][4];
      softmax<decltype(masked)::value>(p, c, sm, warp, kb.begin + j, first + j, s, st, x, alpha, no_hook);
      if constexpr (Tr::kPingPong) after_softmax.mark();
      wgmma_wait<0>();  // P V of block j - 1
      finish_step(j, alpha_prev, x, masked);
    };
    // kQKAhead: block j's Q K^T was issued during block j - 1's softmax, into s while x
    // holds block j - 1's scores; block j + 1's, and block j - 1's P V, are issued once
    // block j's scores are read (softmax's hook), so S is ready when the next softmax needs
    // it. Every MMA is complete at the end of a step: ptxas serializes MMAs left in flight
    // across the loop's back edge. x is pinned before the issue: computed after it, it made
    // ptxas keep a copy of S (64 moves). The last block issues its own Q K^T again, unread:
    // an issue under a condition also made ptxas copy S's registers every block.
    auto issue_next_qk = [&](int j, float (&x)[1][Tr::kSTiles][4]) {
#pragma unroll
      for (int nt = 0; nt < Tr::kSTiles; ++nt) fence_regs(x[0][nt]);
      const int next = min(j + 1, n_blocks - 1);
      wait_full(next);
      issue_qk(sm, wg, first + next, s);
    };
    auto step_ahead = [&](int j, auto masked) {
      const float alpha_prev[2] = {alpha[0][0], alpha[0][1]};
      float x[1][Tr::kSTiles][4];
      softmax<decltype(masked)::value>(p, c, sm, warp, kb.begin + j, first + j, s, st, x, alpha, [&] {
        issue_next_qk(j, x);
        issue_block_pv(j - 1);
      });
      after_softmax.mark();
      wgmma_wait<0>();  // S of block j + 1, P V of block j - 1
      fence_regs(s);
      finish_step(j, alpha_prev, x, masked);
    };

    wait_full(0);
    take_turn();
    issue_qk(sm, wg, first, s);
    pass_turn(false);
    wgmma_wait<0>();
    fence_regs(s);
    {
      float x[1][Tr::kSTiles][4];
      auto first_hook = [&] {
        if constexpr (Tr::kQKAhead) issue_next_qk(0, x);
      };
      if (n_unmasked > 0) {
        softmax<false>(p, c, sm, warp, kb.begin, first, s, st, x, alpha, first_hook);
        pack<false>(x, pf);
      } else {
        softmax<true>(p, c, sm, warp, kb.begin, first, s, st, x, alpha, first_hook);
        pack<true>(x, pf);
      }
      if constexpr (Tr::kQKAhead) {
        wgmma_wait<0>();  // S of block 1
        fence_regs(s);
      }
    }
    int j = 1;
    if constexpr (Tr::kQKAhead) {
      for (; j < n_unmasked; ++j) step_ahead(j, std::false_type{});
      for (; j < n_blocks; ++j) step_ahead(j, std::true_type{});
    } else {
      for (; j < n_unmasked; ++j) step(j, std::false_type{});
      for (; j < n_blocks; ++j) step(j, std::true_type{});
    }
    take_turn();
    issue_block_pv(n_blocks - 1);
    pass_turn(true);
    wgmma_wait<0>();
    fence_regs(st.o);
    fence_regs(pv_acc);
    if constexpr (kPersistent) sm.release(first + n_blocks - 1, lane);  // (one CTA a tile: no one waits)
    fold_pv(alpha[0]);
    if constexpr (Tr::kPingPong || Tr::kQKAhead) after_softmax.keep(p.kv_len < 0, st.sum[0][0]);
  }

  // O / l (fp8: times the per-channel V scale) and the LSE, to the caller's output or (a
  // tail chunk) to the item's part. The fp8 path's V scales are all loaded before the
  // first store: a load may not pass a store that could alias it, so loads between the
  // stores would each wait a full L2 round trip (on H100 this cost the fp8 kernel 4% at
  // N = 4k, 12% at 4k causal).
  using RowOut = float[Tr::kOTiles][2];  // a lane's channels 8 nt + 2t + i of one row
  __device__ static void store(const Sm90Params& p, const Smem& sm, const Work& x, int tid, const RowState& st) {
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const bool by_smem = Tr::kOBySmem && x.part < 0;
    float v_scale[Tr::kOTiles][2];
#pragma unroll
    for (int nt = 0; nt < Tr::kOTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 2; ++i) v_scale[nt][i] = kFp8 ? __ldcg(p.v_scale + x.c.bkv * D + nt * 8 + 2 * t + i) : 1.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 16 * warp + h * 8 + g;  // in the tile
      const float sum = Tr::kSumTiles > 0 ? st.sum[0][h] : Softmax::quad_sum(st.sum[0][h]);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      RowOut o;
#pragma unroll
      for (int nt = 0; nt < Tr::kOTiles; ++nt)
#pragma unroll
        for (int i = 0; i < 2; ++i) o[nt][i] = st.o[nt * 4 + 2 * h + i] * (inv * v_scale[nt][i]);
      const float lse2 = st.max[0][h] + __log2f(sum) - kLog2PScale;
      if (by_smem) {
        stage_rows(sm, tid, h, o);
        emit_lse(p, x.c, row, t, lse2);
      } else if (x.part < 0) {
        emit_row(p, x.c, row, t, o, lse2);
      } else {
        float* dst = p.part_o + (int64_t(x.part) * Tr::kCtaQ + row) * D + 2 * t;
#pragma unroll
        for (int nt = 0; nt < Tr::kOTiles; ++nt)
          __stcg(reinterpret_cast<float2*>(dst + nt * 8), make_float2(o[nt][0], o[nt][1]));
        if (t == 0) __stcg(p.part_lse + x.part * Tr::kCtaQ + row, lse2);
      }
    }
    if (by_smem) send_o(p, sm, x.c, tid);
    if (x.part >= 0) finish_part(p, x, warp, lane);
  }

  // kOBySmem: consumer wg's O tile, channels 64 a .. 64 a + 63 of its rows, in o_map's
  // 128-byte swizzle.
  __device__ static uint32_t o_atom(const Smem& sm, int wg, int a) {
    return sm.o + (wg * D / 64 + a) * (Tr::kWgQ * 128);
  }
  // Rows 8 h + g of this warp's 16 (o: O / l, times V's scales) into the consumer's O tile
  // (n8 tile nt is 16-byte chunk nt % 8 of a row of atom nt / 8), four n8 tiles an stmatrix.
  __device__ static void stage_rows(const Smem& sm, int tid, int h, const RowOut& o) {
    const int lane = tid % 32, r = lane % 8;  // this lane names row r of matrix lane / 8
    const int row = 16 * (tid / 32 % 4) + 8 * h + r;  // in the consumer's rows (row % 8 = r)
#pragma unroll
    for (int nt0 = 0; nt0 < Tr::kOTiles; nt0 += 4) {
      uint32_t words[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) words[i] = pack_pair<Elem>(o[nt0 + i][0], o[nt0 + i][1]);
      const int nt = nt0 + lane / 8;
      stmatrix_x4(o_atom(sm, tid / 128, nt / 8) + row * 128 + ((nt % 8) ^ r) * 16, words);
    }
  }
  // The consumer's O tile, once all its warps staged their rows, to the caller's output by
  // TMA (rows past the sequence are not written). Thread 0 of the consumer owns the bulk
  // group: the next tile's quantize_q waits for its reads before anyone stages again.
  __device__ static void send_o(const Sm90Params& p, const Smem& sm, const Coord& c, int tid) {
    const int wg = tid / 128;
    fence_proxy_async();  // the stmatrix writes, before the TMA unit reads them
    named_sync(kConsumerBarrier + wg, 128);
    if (tid % 128 == 0) {
#pragma unroll
      for (int a = 0; a < D / 64; ++a)
        tma_store_4d(&p.o_map, o_atom(sm, wg, a), a * 64, c.q0 + wg * Tr::kWgQ, c.head, c.batch);
      bulk_commit();
    }
  }

  // Row `row` of the tile (o: O / l, times V's scales) to the caller's layout
  // (store_quad_row), and its LSE (lse2: base 2, without the P scale).
  __device__ static void emit_row(const AttnParams& p, const Coord& c, int row, int t, const RowOut& o, float lse2) {
    Elem* out = static_cast<Elem*>(p.out) + c.batch * p.o_stride_b + c.head * p.o_stride_h;
    uint32_t words[Tr::kOTiles];
#pragma unroll
    for (int nt = 0; nt < Tr::kOTiles; ++nt) words[nt] = pack_pair<Elem>(o[nt][0], o[nt][1]);
    store_quad_row(out + (c.q0 + row) * p.o_stride_n, words, t, c.q0 + row < p.q_len);
    emit_lse(p, c, row, t, lse2);
  }
  __device__ static void emit_lse(const AttnParams& p, const Coord& c, int row, int t, float lse2) {
    row += c.q0;
    if (row < p.q_len && p.lse != nullptr && t == 0) p.lse[c.bh * p.q_len + row] = lse2 * 0.69314718055994531f;
  }

  // A tail chunk's warp, its rows' part written: counts the chunk done for these rows, and
  // the warp that counts the last chunk merges the tile's parts of them. Each warp fences
  // its stores before its count, so the merging warp, fenced after it, reads them all
  // (from L2: __ldcg, no stale L1 lines).
  __device__ static void finish_part(const Sm90Params& p, const Work& x, int warp, int lane) {
    const int tail_tile = x.part / p.tail_chunks;
    __threadfence();
    __syncwarp();
    int done = 0;
    if (lane == 0) done = atomicAdd(p.part_done + tail_tile * (Tr::kConsumerThreads / 32) + warp, 1);
    if (__shfl_sync(0xffffffffu, done, 0) != p.tail_chunks - 1) return;
    __threadfence();
    const int g = lane / 4, t = lane % 4, first_part = tail_tile * p.tail_chunks;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 16 * warp + h * 8 + g;
      auto lse_of = [&](int i) { return __ldcg(p.part_lse + (first_part + i) * Tr::kCtaQ + row); };
      float m = -INFINITY;
#pragma unroll 1
      for (int i = 0; i < p.tail_chunks; ++i) m = fmaxf(m, lse_of(i));
      // O = sum_i 2^(lse_i - m) O_i / sum_i 2^(lse_i - m); a chunk that saw no key has
      // lse_i = -inf and weighs nothing.
      RowOut o = {};
      float den = 0.0f;
#pragma unroll 1
      for (int i = 0; i < p.tail_chunks; ++i) {
        const float lse = lse_of(i), w = lse > -INFINITY ? exp2f(lse - m) : 0.0f;
        const float* src = p.part_o + (int64_t(first_part + i) * Tr::kCtaQ + row) * D + 2 * t;
        den += w;
#pragma unroll
        for (int nt = 0; nt < Tr::kOTiles; ++nt) {
          const float2 v = __ldcg(reinterpret_cast<const float2*>(src + nt * 8));
          o[nt][0] = fmaf(w, v.x, o[nt][0]);
          o[nt][1] = fmaf(w, v.y, o[nt][1]);
        }
      }
      const float inv = den > 0.0f ? 1.0f / den : 0.0f;
#pragma unroll
      for (int nt = 0; nt < Tr::kOTiles; ++nt)
#pragma unroll
        for (int i = 0; i < 2; ++i) o[nt][i] *= inv;
      emit_row(p, x.c, row, t, o, m + __log2f(den));
    }
  }

  // The thread's index among the consumers. Beside kv_stream_kernel (the e4m3 hd64 persistent
  // kernel, at 160 registers) ptxas is told it is not negative: without the sign fix-ups of its
  // divisions it no longer spills the warp index (the SASS reloaded it from local memory at
  // three places of the consumers' code; spills 40/48 -> 28/28 bytes), and on H100 the call ran
  // 0.9-1.4% faster at hd64 4k causal (bench/results/h100-5d100bf-consumer-tid-ab.txt). The other
  // kernels keep the plain index: with the assumption their key loops changed by 1-3
  // instructions and the e4m3 hd128 persistent kernel took a spill it does not have now.
  __device__ static int consumer_tid() {
    const int tid = threadIdx.x - 128;
    if constexpr (kBesideKvStream) __builtin_assume(tid >= 0);
    return tid;
  }

  // The CTA's n-th work item, whose key blocks are stage loads first, first + 1, ...
  __device__ static void run_tile(const Sm90Params& p, const Work& x, const Smem& sm, int n, int first,
                                  const QRegs& q_raw) {
    const int tid = consumer_tid();
    RowState st;
    quantize_q(p, sm, n, tid, q_raw, st);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      st.max[0][h] = -INFINITY;
      st.sum[0][h] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < Tr::kOTiles * 4; ++i) st.o[i] = 0.0f;
    key_loop(p, x.c, sm, tid, x.kb, first, st);
    store(p, sm, x, tid, st);
  }

  // Persistent: the work items the producer hands over, one after the other (the next
  // one's Q and first key blocks stream in while this one finishes). A consumer warp gives
  // an item's slot back once it has read the item.
  __device__ static void consume_tiles(const Sm90Params& p, const Smem& sm) {
    const int tid = consumer_tid();
    for (int n = 0, first = 0;; ++n) {
      ptx::mbar_wait(sm.tile_full_bar(n), (n / Tr::kTileSlots) & 1);
      const Work x = sm.get_work(n);
      sm.release_slot(n, threadIdx.x % 32);
      if (x.part == kNoWork) return finish_o_stores(tid);
      QRegs q_raw;
      read_q(sm, first, tid, q_raw);
      run_tile(p, x, sm, n, first + 1, q_raw);
      first += 1 + x.kb.n_blocks - x.kb.begin;
    }
  }

  // kOBySmem: the CTA's last O stores complete before it exits (its shared memory is read).
  __device__ static void finish_o_stores(int tid) {
    if (Tr::kOBySmem && tid % 128 == 0) bulk_wait<0>();
  }

  // Carves the shared memory and initializes the barriers, Q's group maxima and the ones
  // rows; every thread then passes __syncthreads.
  __device__ static Smem setup_smem() {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    Smem sm;
    sm.q = ptx::smem_addr(smem);
    sm.stages = sm.q + Tr::kQBytes;
    sm.o = sm.stages + Tr::kStages * Tr::kStageBytes;  // (1024-aligned: so are Q and the stages)
    sm.full = sm.q + Tr::kBarriersAt;
    sm.empty = sm.full + Tr::kStages * 8;
    sm.q_amax = reinterpret_cast<float*>(smem + Tr::kBarriersAt + 2 * Tr::kStages * 8);
    sm.tile_full = ptx::smem_addr(sm.q_amax + 2 * Tr::kCtaQ);
    sm.tile_empty = sm.tile_full + Tr::kTileSlots * 8;
    sm.slots = sm.tile_empty + Tr::kTileSlots * 8;
    if (threadIdx.x < Tr::kStages) {
      ptx::mbar_init(sm.full + threadIdx.x * 8, 1 + 32);  // the TMA byte count + the producer's lanes
      ptx::mbar_init(sm.empty + threadIdx.x * 8, Tr::kConsumerThreads / 32);
    }
    if constexpr (kPersistent) {
      if (threadIdx.x < Tr::kTileSlots) {
        ptx::mbar_init(sm.tile_full + threadIdx.x * 8, 32);  // the producer's lanes
        ptx::mbar_init(sm.tile_empty + threadIdx.x * 8, Tr::kConsumerThreads / 32);
      }
    }
    if (threadIdx.x < (kPersistent ? 2 : 1) * Tr::kCtaQ) sm.q_amax[threadIdx.x] = 0.0f;
    if constexpr (Tr::kSumTiles > 0) {  // the ones rows after each stage's V^T (see kSumTiles)
      constexpr int kWords = Tr::kSumTiles * 8 * 128 / 4;
      for (int i = threadIdx.x; i < Tr::kStages * kWords; i += Tr::kThreads)
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(sm.v(i / kWords) + Tr::kVTmaBytes + i % kWords * 4),
                     "r"(0x38383838u /* e4m3 1.0 */)
                     : "memory");
      fence_proxy_async();  // before wgmma reads them
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // initialized, for TMA
    __syncthreads();
    return sm;
  }

  // Warpgroup 0 produces (one warp of it), the others consume; the registers move to the
  // consumers.
  template <class Produce, class Consume>
  __device__ static void specialize(Produce&& produce, Consume&& consume) {
    if (threadIdx.x < 128) {
      setmaxnreg_dec<Tr::kProducerRegs>();
      if (threadIdx.x < 32) produce();
    } else {
      setmaxnreg_inc<kConsumerRegs>();
      consume();
    }
  }

  // One CTA a tile (these grids are never split): q_raw is the consumers' Q, loaded
  // already if kEarlyQ.
  __device__ static void run_one_tile(const Sm90Params& p, const Work& x, const Smem& sm, QRegs& q_raw) {
    specialize([&] { load_blocks(p, x.c, x.kb, sm, 0); },
               [&] {
                 if constexpr (!Tr::kEarlyQ) load_q(p, x.c, threadIdx.x - 128, q_raw);
                 run_tile(p, x, sm, 0, 0, q_raw);
                 finish_o_stores(threadIdx.x - 128);
               });
  }

  // The shared-memory setup overlaps the previous kernel's end (launch_after); global
  // memory waits for it.
  __device__ static void run(const Sm90Params& p) {
    if constexpr (kPersistent) {
      const Smem sm = setup_smem();
      // With kv_ready the previous kernel is kv_stream_kernel, which let this one launch once
      // the kernels before it had completed: K and V are waited for head by head instead.
      if (p.kv_ready != nullptr)
        ptx::launch_next_grid();
      else
        ptx::wait_prior_grids();
      specialize([&] { produce(p, sm); }, [&] { consume_tiles(p, sm); });
    } else if constexpr (Tr::kEarlyQ) {
      QRegs q_raw;
      const Work x = work(p, blockIdx.x);
      ptx::wait_prior_grids();
      if (threadIdx.x >= 128) load_q(p, x.c, threadIdx.x - 128, q_raw);
      const Smem sm = setup_smem();
      run_one_tile(p, x, sm, q_raw);
    } else {
      QRegs q_raw;
      const Smem sm = setup_smem();
      ptx::wait_prior_grids();
      run_one_tile(p, work(p, blockIdx.x), sm, q_raw);
    }
  }
};

template <class Tr, bool kPersistent>
__global__ void __maxnreg__((Sm90Kernel<Tr, kPersistent>::kLaunchRegs)) attn_sm90_kernel(const __grid_constant__ Sm90Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  Sm90Kernel<Tr, kPersistent>::run(p);
#endif
}

}  // namespace sage::sm90
