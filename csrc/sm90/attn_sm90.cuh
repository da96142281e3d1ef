// Hopper (sm_90a) INT8 Q·K^T attention with warpgroup MMAs.
//
// Same algorithm as attention/attn_kernel.cuh, but the kernel quantizes its Q tile
// itself (each Q tile is read exactly once, so a separate quant_int8 pass over Q would
// only add traffic), and each warpgroup (4 warps) owns 64 query rows and issues wgmma:
// S = Q·K^T with both operands in shared memory (s8), then O += P·V with P from
// registers (fp16/bf16, or e4m3) and V in shared memory.
// Two warpgroups share each K/V block (halving L2 traffic against one per CTA, which
// was L2-bound on H100) but are not kept in lockstep: the K/V stages are handed over
// through mbarriers (full: the block landed; empty: every thread is done with it), so
// one warpgroup's softmax can overlap the other's MMAs.
// 16-bit V is read as the caller stores it ([keys][D] rows, through strides) and fed
// to wgmma as an MN-major operand, so it costs no pass over memory before the kernel.
// e4m3 wgmma takes K-major operands only: quant_v_fp8 writes V^T ([D][keys]) for it.
// Shared tiles use the 64/128-byte swizzles of smem_layout.cuh, which are the
// hardware's; tile bases are 1024-byte aligned.
#pragma once
#include <cuda_runtime.h>

#include "attention/softmax.cuh"
#include "attention/traits.cuh"
#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "common/smem_layout.cuh"
#include "common/tile_copy.cuh"
#include "quant/int8_rows.cuh"
#include "sm90/wgmma.cuh"

namespace sage::sm90 {

// AttnParams plus the 16-bit Q that the kernel quantizes (q and q_scale are unused).
struct Sm90Params : AttnParams {
  const void* q_in;  // [B, Hq, Nq, D] through element strides, fp16/bf16
  int64_t q_stride_b, q_stride_h, q_stride_n;
  int q_group_block, q_group_stride;  // quant_int8's group rule; group_block divides kCtaQ
  float q_scale_mult;                 // sm_scale * log2 e
  int batch;
};

template <int kHeadDim_, PV kPV_, typename Elem_>
struct Sm90Traits {
  using Elem = Elem_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr PV kPV = kPV_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128");
  static constexpr bool kFp8 = kPV == PV::kFp8;

  static constexpr int kWarpGroups = 2;
  static constexpr int kWgQ = 64;  // rows per warpgroup: the wgmma M
  static constexpr int kCtaQ = kWarpGroups * kWgQ;
  static constexpr int kCtaK = 128;  // the wgmma N of Q K^T
  static constexpr int kThreads = kWarpGroups * 128;
  static constexpr int kSTiles = kCtaK / 8;
  static constexpr int kOTiles = kHeadDim / 8;
  static constexpr int kQKSteps = kHeadDim / 32;

  // V block, in 128-byte-wide swizzle atoms stored one after the other. e4m3: V^T,
  // [head_dim][128 keys], one atom. 16-bit: V, [keys][head_dim] split along head_dim
  // into atoms of [keys][64 channels].
  static constexpr int kElemBytesV = kFp8 ? 1 : 2;
  static constexpr int kVAtoms = kFp8 ? 1 : kHeadDim / 64;
  static constexpr int kVAtomRows = kFp8 ? kHeadDim : kCtaK;
  using QKTile = SwizzledTile<kHeadDim>;
  using VTile = SwizzledTile<128>;
  static constexpr int kQBytes = kCtaQ * kHeadDim;
  static constexpr int kKBytes = kCtaK * kHeadDim;
  static constexpr int kVAtomBytes = kVAtomRows * 128;
  static constexpr int kVBytes = kVAtoms * kVAtomBytes;
  static_assert(kVBytes == kCtaK * kHeadDim * kElemBytesV, "V atoms cover the block");
  static constexpr int kScaleBytes = kCtaK * 4;
  // A stage holds one key block: K, V and the key scales (1024-aligned: wgmma's
  // swizzle patterns repeat every 1024 bytes).
  static constexpr int kStageBytes = (kKBytes + kVBytes + kScaleBytes + 1023) / 1024 * 1024;
  // Block j + kAhead is loaded while block j's Q K^T and block j - 1's P V run; its stage
  // was freed by block j + kAhead - kStages, released one iteration earlier, so the two
  // warpgroups may drift up to one block apart before a load waits.
  static constexpr int kStages = 4;
  static constexpr int kAhead = 2;
  static constexpr int kSmemBytes =
      1024 /* alignment slack */ + kQBytes + kStages * kStageBytes + 2 * kStages * 8 + kCtaQ * 4 /* Q group amax */;
};

template <class Tr>
struct Sm90Kernel {
  using Elem = typename Tr::Elem;
  static constexpr int D = Tr::kHeadDim;
  static constexpr bool kFp8 = Tr::kFp8;
  using Softmax = OnlineSoftmax<1, Tr::kSTiles, Tr::kPV, Elem>;
  static constexpr int kPVSteps = Softmax::kPVSteps;

  using Coord = CtaCoord;

  // The grid is one-dimensional, one CTA per (batch, head, query block) tile, numbered in
  // runs of kHeadGroup (batch, head) pairs with the longest query blocks first inside a
  // run. The CTAs resident at one time then share a few heads' K and V in L2, and under
  // a causal mask (where the last query blocks see the most keys) the block scheduler
  // hands out the long tiles first and the short ones last, where they even out the tail.
  static constexpr int kHeadGroup = 8;
  __device__ static Coord tile_coord(const Sm90Params& p) {
    const int q_blocks = (p.q_len + Tr::kCtaQ - 1) / Tr::kCtaQ;
    const int span = kHeadGroup * q_blocks;
    const int run = blockIdx.x / span, r = blockIdx.x % span;
    const int pairs = min(kHeadGroup, p.batch * p.q_heads - run * kHeadGroup);
    const int bh = run * kHeadGroup + r % pairs;
    return Coord::at(p, bh / p.q_heads, bh % p.q_heads, (q_blocks - 1 - r / pairs) * Tr::kCtaQ);
  }

  struct Smem {
    uint8_t* q;
    uint8_t* stages;  // [kStages][K | V | key scales]
    uint32_t full;    // mbarriers [kStages]: the block landed
    uint32_t empty;   // mbarriers [kStages]: every thread is done with the block
    float* q_amax;    // [kCtaQ]: Q's group maxima, indexed by group within the tile
    __device__ uint8_t* k(int b) const { return stages + (b % Tr::kStages) * Tr::kStageBytes; }
    __device__ uint8_t* v(int b) const { return k(b) + Tr::kKBytes; }
    __device__ float* k_scale(int b) const { return reinterpret_cast<float*>(v(b) + Tr::kVBytes); }
    __device__ uint32_t full_bar(int b) const { return full + (b % Tr::kStages) * 8; }
    __device__ uint32_t empty_bar(int b) const { return empty + (b % Tr::kStages) * 8; }
  };
  // This lane's rows: q0 + 16 warp + h * 8 + g.
  struct RowState {
    float o[Tr::kOTiles * 4];  // wgmma accumulator order: [n8 tile][4]
    float max[1][2], sum[1][2], q_scale[1][2];
  };

  // Every thread copies its share of key block b (K, V, scales) into b's stage and
  // arrives on the stage's full barrier once its copies land. Blocks past the first
  // kStages wait for the stage's previous block to be released.
  __device__ static void produce(const AttnParams& p, const Coord& c, const Smem& sm, int b) {
    if (b >= Tr::kStages) ptx::mbar_wait(sm.empty_bar(b), (b / Tr::kStages - 1) & 1);
    const int k0 = b * Tr::kCtaK;
    const int64_t bkv = c.bkv;
    const int8_t* k_rows = p.k + (bkv * p.kv_len + k0) * D;
    load_tile<typename Tr::QKTile, Tr::kCtaK, Tr::kThreads>(sm.k(b), reinterpret_cast<const uint8_t*>(k_rows), D,
                                                           p.kv_len - k0);
    if constexpr (kFp8) {
      const uint8_t* vt_rows = static_cast<const uint8_t*>(p.v) + bkv * D * p.v_padded_len + k0;
      load_tile<typename Tr::VTile, D, Tr::kThreads>(sm.v(b), vt_rows, p.v_padded_len, D);
    } else {
      const int64_t row_bytes = p.v_stride_n * 2;
      const uint8_t* v_rows = static_cast<const uint8_t*>(p.v) +
                              (c.batch * p.v_stride_b + c.kv_head * p.v_stride_h) * 2 + k0 * row_bytes;
#pragma unroll
      for (int a = 0; a < Tr::kVAtoms; ++a)
        load_tile<typename Tr::VTile, Tr::kCtaK, Tr::kThreads>(sm.v(b) + a * Tr::kVAtomBytes, v_rows + a * 128,
                                                              row_bytes, p.kv_len - k0);
    }
    if (threadIdx.x < Tr::kCtaK) {
      const bool valid = k0 + threadIdx.x < p.kv_len;
      ptx::cp_async_4(ptx::smem_addr(sm.k_scale(b) + threadIdx.x),
                      p.k_scale + bkv * p.kv_len + (valid ? k0 + threadIdx.x : 0), valid);
    }
    ptx::cp_async_mbar_arrive(sm.full_bar(b));
  }

  // The Q tile, 16-bit, in this thread's registers as quant_int8 would hold it.
  using QChunk = int8::RowChunk<D, Tr::kThreads, Tr::kCtaQ>;
  using QRegs = uint4[QChunk::kPasses];

  __device__ static void load_q(const Sm90Params& p, const Coord& c, QRegs& raw) {
    QChunk::load(static_cast<const Elem*>(p.q_in) + c.batch * p.q_stride_b + c.head * p.q_stride_h +
                     int64_t(c.q0) * p.q_stride_n,
                 p.q_stride_n, min(Tr::kCtaQ, p.q_len - c.q0), raw);
  }

  // Q tile -> INT8 in shared memory (the layout wgmma reads) and this lane's row scales,
  // by quant_int8's rule: one scale per token group, amax / 127. Each thread keeps its
  // rows in registers between the group reduction and the rounding.
  __device__ static void quantize_q(const Sm90Params& p, const Smem& sm, const QRegs& raw, RowState& st) {
    const int lane_in_row = QChunk::lane_in_row();
    auto group = [&](int r) { return int8::group_of(r, p.q_group_block, p.q_group_stride); };

#pragma unroll
    for (int i = 0; i < QChunk::kPasses; ++i) {
      float v[8];
      int8::unpack<Elem>(raw[i], v);
      const float amax = int8::row_amax<QChunk::kLanesPerRow>(v);
      if (lane_in_row == 0) int8::atomic_amax(&sm.q_amax[group(QChunk::row(i))], amax);
    }
    __syncthreads();

    const uint32_t q_base = ptx::smem_addr(sm.q);
#pragma unroll
    for (int i = 0; i < QChunk::kPasses; ++i) {
      const int r = QChunk::row(i);
      float v[8];
      int8::unpack<Elem>(raw[i], v);
      const uint2 packed = int8::quantize(v, int8::scale_of(sm.q_amax[group(r)]));
      const uint32_t dst = q_base + Tr::QKTile::offset(r, lane_in_row / 2) + 8 * (lane_in_row % 2);
      asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(dst), "r"(packed.x), "r"(packed.y) : "memory");
    }
    const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float amax = sm.q_amax[group(16 * warp + 8 * h + g)];
      st.q_scale[0][h] = int8::scale_of(amax) * p.q_scale_mult;
    }
  }

  // Waits until key block b has landed, and makes it visible to the tensor cores.
  __device__ static void consume(const Smem& sm, int b) {
    ptx::mbar_wait(sm.full_bar(b), (b / Tr::kStages) & 1);
    fence_proxy_async();
  }

  __device__ static void pv_mma(float (&acc)[Tr::kOTiles * 4], const uint32_t (&a)[4], uint64_t b, int scale_d) {
    if constexpr (kFp8) {
      if constexpr (D == 128) wgmma_m64n128k32_e4m3(acc, a, b, scale_d);
      else wgmma_m64n64k32_e4m3(acc, a, b, scale_d);
    } else if constexpr (Half2<Elem>::kBf16) {
      if constexpr (D == 128) wgmma_m64n128k16_bf16(acc, a, b, scale_d);
      else wgmma_m64n64k16_bf16(acc, a, b, scale_d);
    } else {
      if constexpr (D == 128) wgmma_m64n128k16_f16(acc, a, b, scale_d);
      else wgmma_m64n64k16_f16(acc, a, b, scale_d);
    }
  }

  using SAcc = int32_t[Tr::kSTiles * 4];  // wgmma accumulator order: [n8 tile][4]
  using OAcc = float[Tr::kOTiles * 4];

  // Issues S = Q K^T for key block `block` (asynchronous: wgmma_wait before use).
  // The descriptor start address steps 32 bytes (>> 4 = 2) per k32 step.
  __device__ static void issue_qk(const Smem& sm, int block, SAcc& s) {
    const int wg = threadIdx.x / 128;
    const uint64_t a = make_desc<D>(ptx::smem_addr(sm.q + wg * Tr::kWgQ * D));
    const uint64_t b = make_desc<D>(ptx::smem_addr(sm.k(block)));
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < Tr::kQKSteps; ++ks) wgmma_m64n128k32_s8(s, a + 2 * ks, b + 2 * ks, ks);
    wgmma_commit();
  }

  // Issues acc (+)= P V for key block `block`; accumulate = false starts from zero.
  // A k step moves along the keys: e4m3 V^T steps inside its K-major rows (bytes), 16-bit
  // V steps over whole 128-byte rows (a multiple of the 1024-byte swizzle period).
  __device__ static void issue_pv(const Smem& sm, int block, const uint32_t (&pf)[1][kPVSteps][4],
                                  bool accumulate, OAcc& acc) {
    constexpr int kStepKeys = Softmax::kPVStepKeys;
    const uint32_t base = ptx::smem_addr(sm.v(block));
    const uint64_t b = kFp8 ? make_desc<128>(base) : make_desc_mn128(base, Tr::kVAtomBytes, 8 * 128);
    constexpr int kStepBytes = kFp8 ? kStepKeys : kStepKeys * 128;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) pv_mma(acc, pf[0][kk], b + kk * (kStepBytes >> 4), accumulate || kk > 0);
    wgmma_commit();
  }

  // The key loop, software-pipelined as in FlashAttention-3: block j's Q K^T and block
  // j - 1's P V are issued back to back, and block j's softmax runs on the CUDA cores
  // while the tensor cores finish P V. Registers that a wgmma reads (P, O) are only
  // written once no wgmma is in flight, so ptxas does not serialize the MMAs.
  __device__ static void key_loop(const AttnParams& p, const Coord& c, const Smem& sm,
                                  const typename Coord::KeyBlocks& kb, RowState& st) {
    const int warp = threadIdx.x / 32;
    const int n_blocks = kb.n_blocks;

    SAcc s;
    OAcc pv_acc;  // fp8: block j - 1's P V before it is folded into O
    uint32_t pf[1][kPVSteps][4];
    float alpha[1][2];

    // Softmax of block j: S -> P (packed later), alpha = rescale factor of O.
    auto softmax = [&](int j, float (&x)[1][Tr::kSTiles][4]) {
      const int k0 = j * Tr::kCtaK;
      // Past n_unmasked the mask test is per warp: only warps that cross the diagonal pay.
      const bool masked = j >= kb.n_unmasked &&
                          (k0 + Tr::kCtaK > p.kv_len || (p.causal && k0 + Tr::kCtaK - 1 > c.q0 + 16 * warp));
      Softmax::scores(reinterpret_cast<const int32_t(&)[1][Tr::kSTiles][4]>(s), sm.k_scale(j), c.q0 + 16 * warp,
                      k0, p.kv_len, p.causal, masked, x);
      Softmax::update(x, st.q_scale, st.max, st.sum, alpha);
    };
    // O = O * alpha + P V, with P V of block `v_block` issued here (fp16: rescale then
    // accumulate in place; fp8: accumulate from zero, folded in by fold_pv).
    auto issue_block_pv = [&](int v_block) {
      if constexpr (!kFp8) {
        // Once the row maxima settle, alpha is 1 for whole warps: skip the 64 multiplies.
        if (!__all_sync(0xffffffffu, alpha[0][0] == 1.0f && alpha[0][1] == 1.0f))
#pragma unroll
          for (int i = 0; i < Tr::kOTiles * 4; ++i) st.o[i] *= alpha[0][(i % 4) / 2];
        issue_pv(sm, v_block, pf, true, st.o);
      } else {
        issue_pv(sm, v_block, pf, false, pv_acc);
      }
    };
    auto fold_pv = [&](const float (&a)[2]) {  // fp8 only, once P V is complete
      if constexpr (kFp8)
#pragma unroll
        for (int i = 0; i < Tr::kOTiles * 4; ++i) st.o[i] = fmaf(st.o[i], a[(i % 4) / 2], pv_acc[i]);
    };

    consume(sm, 0);
    issue_qk(sm, 0, s);
    wgmma_wait<0>();
    fence_regs(s);
    {
      float x[1][Tr::kSTiles][4];
      softmax(0, x);
      Softmax::pack(x, pf);
    }
    for (int j = 1; j < n_blocks; ++j) {
      if (j + Tr::kAhead < n_blocks) produce(p, c, sm, j + Tr::kAhead);
      consume(sm, j);
      const float alpha_prev[2] = {alpha[0][0], alpha[0][1]};
      issue_qk(sm, j, s);
      issue_block_pv(j - 1);
      wgmma_wait<1>();  // S of block j
      fence_regs(s);
      float x[1][Tr::kSTiles][4];
      softmax(j, x);
      wgmma_wait<0>();  // P V of block j - 1
      fence_regs(st.o);
      fence_regs(pv_acc);
      ptx::mbar_arrive(sm.empty_bar(j - 1));
      fold_pv(alpha_prev);
      Softmax::pack(x, pf);
    }
    issue_block_pv(n_blocks - 1);
    wgmma_wait<0>();
    fence_regs(st.o);
    fence_regs(pv_acc);
    fold_pv(alpha[0]);
  }

  __device__ static void run(const Sm90Params& p) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    Smem sm;
    sm.q = smem;
    sm.stages = sm.q + Tr::kQBytes;
    sm.full = ptx::smem_addr(sm.stages + Tr::kStages * Tr::kStageBytes);
    sm.empty = sm.full + Tr::kStages * 8;
    sm.q_amax = reinterpret_cast<float*>(sm.stages + Tr::kStages * Tr::kStageBytes + 2 * Tr::kStages * 8);
    if (threadIdx.x < Tr::kStages) {
      ptx::mbar_init(sm.full + threadIdx.x * 8, Tr::kThreads);
      ptx::mbar_init(sm.empty + threadIdx.x * 8, Tr::kThreads);
    }
    if (threadIdx.x < Tr::kCtaQ) sm.q_amax[threadIdx.x] = 0.0f;
    __syncthreads();

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const Coord c = tile_coord(p);
    const int64_t bh = c.bh, bkv = c.bkv;
    const auto kb = c.key_blocks(p, Tr::kCtaQ, Tr::kCtaK);

    // Q's loads go out first (the first Q K^T waits on them), then key blocks 0 .. kAhead,
    // which land while Q is quantized.
    QRegs q_raw;
    load_q(p, c, q_raw);
    for (int b = 0; b <= Tr::kAhead && b < kb.n_blocks; ++b) produce(p, c, sm, b);
    RowState st;
    quantize_q(p, sm, q_raw, st);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      st.max[0][h] = -INFINITY;
      st.sum[0][h] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < Tr::kOTiles * 4; ++i) st.o[i] = 0.0f;
    fence_proxy_async();  // Q's st.shared, before wgmma reads it
    __syncthreads();
    key_loop(p, c, sm, kb, st);

    // Epilogue: O / l (fp8: times the per-channel V scale / 448), LSE.
    Elem* out = static_cast<Elem*>(p.out) + c.batch * p.o_stride_b + c.head * p.o_stride_h;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = c.q0 + 16 * warp + h * 8 + g;
      const float sum = Softmax::quad_sum(st.sum[0][h]);
      if (row >= p.q_len) continue;
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      Elem* dst = out + row * p.o_stride_n + 2 * t;
#pragma unroll
      for (int nt = 0; nt < Tr::kOTiles; ++nt) {
        float s0 = inv, s1 = inv;
        if constexpr (kFp8) {
          const float* vs = p.v_scale + bkv * D + nt * 8 + 2 * t;
          s0 *= vs[0] / Softmax::kPScale;
          s1 *= vs[1] / Softmax::kPScale;
        }
        *reinterpret_cast<uint32_t*>(dst + nt * 8) =
            pack_pair<Elem>(st.o[nt * 4 + 2 * h] * s0, st.o[nt * 4 + 2 * h + 1] * s1);
      }
      if (p.lse != nullptr && t == 0)
        p.lse[bh * p.q_len + row] = (st.max[0][h] + __log2f(sum)) * 0.69314718055994531f;
    }
  }
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) attn_sm90_kernel(const __grid_constant__ Sm90Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  Sm90Kernel<Tr>::run(p);
#endif
}

}  // namespace sage::sm90
