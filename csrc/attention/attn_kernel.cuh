// INT8 Q·K^T attention with online softmax and an fp16/bf16 or fp8 P·V product.
//
// Per CTA: kCtaQ query rows of one (batch, head). Per key block of kCtaK keys:
//   S = Q_int8 · K_int8^T              (mma.sync s8, int32 accumulators)
//   s = S * q_scale[row] * k_scale[col] (base-2 logits: q_scale carries log2 e)
//   online softmax in fp32: running max m, running sum l
//   O = O * 2^(m_old - m_new) + P · V   (P rounded to fp16/bf16, or to e4m3 scaled by 448)
// Each block's P·V is accumulated from zero and then folded into O with one FMA, so
// the fp8 MMAs never add a small block product into a large running sum (their
// accumulator keeps fewer than 24 significant bits), and the rescale by alpha is free.
//
// Fragment layouts (PTX ISA, mma.m16n8k*): lane = 4 * g + t. An m16n8 accumulator
// holds rows g and g + 8, columns 2t and 2t + 1 of its tile.
#pragma once
#include <cuda_runtime.h>

#include "attention/softmax.cuh"
#include "attention/store_rows.cuh"
#include "attention/traits.cuh"
#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "common/tile_copy.cuh"

namespace sage {

template <class Tr>
struct AttnKernel {
  using Elem = typename Tr::Elem;
  static constexpr int D = Tr::kHeadDim;
  static constexpr bool kFp8 = Tr::kPV == PV::kFp8;

  using Softmax = OnlineSoftmax<Tr::kMTiles, Tr::kSTiles, Tr::kPV, Elem>;

  using Coord = CtaCoord;

  __device__ static void load_k(const AttnParams& p, const Coord& c, int k0, uint8_t* sK) {
    const int8_t* rows = p.k + ((int64_t(c.batch) * p.kv_heads + c.kv_head) * p.kv_len + k0) * D;
    load_tile<typename Tr::QKTile, Tr::kCtaK, Tr::kThreads>(
        sK, reinterpret_cast<const uint8_t*>(rows), D, p.kv_len - k0);
  }

  __device__ static void load_v(const AttnParams& p, const Coord& c, int k0, uint8_t* sV) {
    if constexpr (kFp8) {
      // [D][v_padded_len] e4m3, keys already permuted into fragment order and zero-padded.
      const uint8_t* rows = static_cast<const uint8_t*>(p.v) +
                            (int64_t(c.batch) * p.kv_heads + c.kv_head) * D * p.v_padded_len + k0;
      load_tile<typename Tr::VTile, D, Tr::kThreads>(sV, rows, p.v_padded_len, D);
    } else {
      const Elem* rows = static_cast<const Elem*>(p.v) + c.batch * p.v_stride_b +
                         c.kv_head * p.v_stride_h + k0 * p.v_stride_n;
      load_tile<typename Tr::VTile, Tr::kCtaK, Tr::kThreads>(
          sV, reinterpret_cast<const uint8_t*>(rows), p.v_stride_n * int64_t(sizeof(Elem)),
          p.kv_len - k0);
    }
  }

  // Per-lane shared-memory addresses of the first fragment of each operand; the
  // fragment loops below step from them with Tile::step (see smem_layout.cuh).
  // ldmatrix.x4: lane l supplies row l % 8 of matrix m = l / 8.
  struct FragBases {
    uint32_t q;  // A of Q·K^T: matrices (rows +0/+8) x (k bytes 0-15/16-31)
    uint32_t k;  // B of Q·K^T: matrices (k bytes 0-15/16-31) x (keys +0/+8)
    uint32_t v;  // B of P·V
  };
  __device__ static FragBases frag_bases(const uint8_t* sQ, const uint8_t* sK, const uint8_t* sV) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, m = lane / 8, r = lane % 8;
    using QK = typename Tr::QKTile;
    using V = typename Tr::VTile;
    FragBases f;
    f.q = ptx::smem_addr(sQ) + QK::offset(warp * Tr::kWarpQ + (m & 1) * 8 + r, m >> 1);
    f.k = ptx::smem_addr(sK) + QK::offset((m >> 1) * 8 + r, m & 1);
    if constexpr (kFp8)  // [d][keys]: like K, d plays the key's part
      f.v = ptx::smem_addr(sV) + V::offset((m >> 1) * 8 + r, m & 1);
    else  // [keys][d] read transposed: matrices (keys +0/+8) x (d +0/+8)
      f.v = ptx::smem_addr(sV) + V::offset((m & 1) * 8 + r, m >> 1);
    return f;
  }

  // Q's A fragments when they live in registers (kQInRegs); a 1-element dummy otherwise.
  using QFrags = uint32_t[Tr::kQInRegs ? Tr::kMTiles : 1][Tr::kQInRegs ? Tr::kQKSteps : 1][4];

  __device__ static void load_q(uint32_t q_base, int mt, int ks, uint32_t (&a)[4]) {
    ptx::ldmatrix_x4(a, Tr::QKTile::step(q_base, mt * 16, ks));
  }

  // S = Q K^T for the warp's rows and the block's kCtaK keys.
  __device__ static void qk(const QFrags& qf, uint32_t q_base, uint32_t k_base,
                            int32_t (&s)[Tr::kMTiles][Tr::kSTiles][4]) {
#pragma unroll
    for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < Tr::kSTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0;
#pragma unroll
    for (int ks = 0; ks < Tr::kQKSteps; ++ks) {
      uint32_t a[Tr::kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < Tr::kMTiles; ++mt) {
        if constexpr (Tr::kQInRegs) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[mt][r] = qf[mt][ks][r];
        } else {
          load_q(q_base, mt, ks, a[mt]);
        }
      }
#pragma unroll
      for (int np = 0; np < Tr::kSTiles / 2; ++np) {
        uint32_t b[4];  // b[0..1]: n-tile 2np, b[2..3]: n-tile 2np + 1
        ptx::ldmatrix_x4(b, Tr::QKTile::step(k_base, np * 16, ks));
#pragma unroll
        for (int mt = 0; mt < Tr::kMTiles; ++mt) {
          ptx::mma_s8_16832(s[mt][2 * np], a[mt], b[0], b[1]);
          ptx::mma_s8_16832(s[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

  // P·V for the block, folded into O as O = O * alpha + P·V.
  __device__ static void pv(const uint32_t (&pf)[Tr::kMTiles][Softmax::kPVSteps][4], uint32_t v_base,
                            const float (&alpha)[Tr::kMTiles][2],
                            float (&o)[Tr::kMTiles][Tr::kOTiles][4]) {
#pragma unroll
    for (int np = 0; np < Tr::kOTiles / 2; ++np) {
      float acc[Tr::kMTiles][2][4] = {};
#pragma unroll
      for (int kk = 0; kk < Softmax::kPVSteps; ++kk) {
        uint32_t b[4];  // b[0..1]: d-tile 2np, b[2..3]: d-tile 2np + 1
        if constexpr (kFp8) {
          ptx::ldmatrix_x4(b, Tr::VTile::step(v_base, np * 16, kk));
        } else {
          ptx::ldmatrix_x4_trans(b, Tr::VTile::step(v_base, kk * 16, np));
        }
#pragma unroll
        for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            if constexpr (kFp8) {
              ptx::mma_e4m3_16832(acc[mt][i], pf[mt][kk], b[2 * i], b[2 * i + 1]);
            } else {
              ptx::mma_16816<Half2<Elem>::kBf16>(acc[mt][i], pf[mt][kk], b[2 * i], b[2 * i + 1]);
            }
          }
      }
#pragma unroll
      for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            o[mt][2 * np + i][e] = fmaf(o[mt][2 * np + i][e], alpha[mt][e / 2], acc[mt][i][e]);
    }
  }

  // Running softmax state and output accumulators of this lane's rows:
  // warp * 32 + mt * 16 + h * 8 + g, with h = 0/1 selecting accumulator regs 0-1/2-3.
  struct RowState {
    float o[Tr::kMTiles][Tr::kOTiles][4];
    float max[Tr::kMTiles][2];  // base-2 logits
    float sum[Tr::kMTiles][2];  // this lane's partial sums; reduced over the quad at the end
    float q_scale[Tr::kMTiles][2];
  };

  struct Smem {
    uint8_t* q;
    uint8_t* k;   // [kStages][kKBytes]
    uint8_t* v;   // [kStages][kVBytes]
    float* k_scale;  // [kStages][kCtaK]
  };

  // One key block: S = Q K^T, mask (kMasked: the block crosses the sequence end or the
  // causal diagonal), online softmax, O = O * alpha + P V. Prefetches block j + 1.
  template <bool kMasked>
  __device__ static void block(const AttnParams& p, const Coord& c, const Smem& sm,
                               const FragBases& fb, const QFrags& qf, int j, int n_blocks, RowState& st) {
    const int warp = threadIdx.x / 32;
    const int stage = j % Tr::kStages, k0 = j * Tr::kCtaK;
    const bool has_next = j + 1 < n_blocks;
    ptx::cp_async_wait<1>();  // K block j landed
    __syncthreads();          // ... for every thread; block j-1 fully consumed
    if (has_next) load_k(p, c, k0 + Tr::kCtaK, sm.k + (1 - stage) * Tr::kKBytes);
    ptx::cp_async_commit();

    // The next block's key scales: one plain load per thread now, stored to shared
    // memory after this block's P·V, so no register holds them across the MMAs.
    const float* k_scales = p.k_scale + (int64_t(c.batch) * p.kv_heads + c.kv_head) * p.kv_len;
    float next_k_scale = 0.0f;
    if (threadIdx.x < Tr::kCtaK && k0 + Tr::kCtaK + threadIdx.x < p.kv_len)
      next_k_scale = __ldg(k_scales + k0 + Tr::kCtaK + threadIdx.x);

    int32_t s[Tr::kMTiles][Tr::kSTiles][4];
    qk(qf, fb.q, fb.k + stage * Tr::kKBytes, s);

    float x[Tr::kMTiles][Tr::kSTiles][4];
    Softmax::template scores<kMasked>(s, sm.k_scale + stage * Tr::kCtaK, c.q0 + warp * Tr::kWarpQ, k0, p.kv_len,
                                      p.causal, x);
    float alpha[Tr::kMTiles][2];
    Softmax::update(x, st.q_scale, st.max, st.sum, alpha);
    uint32_t pf[Tr::kMTiles][Softmax::kPVSteps][4];
    Softmax::pack(x, pf);

    ptx::cp_async_wait<1>();  // V block j landed
    __syncthreads();
    if (has_next) load_v(p, c, k0 + Tr::kCtaK, sm.v + (1 - stage) * Tr::kVBytes);
    ptx::cp_async_commit();
    pv(pf, fb.v + stage * Tr::kVBytes, alpha, st.o);
    if (threadIdx.x < Tr::kCtaK) sm.k_scale[(1 - stage) * Tr::kCtaK + threadIdx.x] = next_k_scale;
  }

  __device__ static void run(const AttnParams& p) {
    extern __shared__ __align__(128) uint8_t smem[];
    Smem sm;
    sm.q = smem;
    sm.k = sm.q + Tr::kQBytes;
    sm.v = sm.k + Tr::kStages * Tr::kKBytes;
    sm.k_scale = reinterpret_cast<float*>(sm.v + Tr::kStages * Tr::kVBytes);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
    const Coord c = Coord::from_grid(p, Tr::kCtaQ);
    const int64_t bh = c.bh, bkv = c.bkv;

    // Prologue: Q with K block 0 in one cp.async group, V block 0 in the next.
    const int8_t* q_rows = p.q + (bh * p.q_len + c.q0) * D;
    load_tile<typename Tr::QKTile, Tr::kCtaQ, Tr::kThreads>(
        sm.q, reinterpret_cast<const uint8_t*>(q_rows), D, p.q_len - c.q0);
    load_k(p, c, 0, sm.k);
    ptx::cp_async_commit();
    load_v(p, c, 0, sm.v);
    ptx::cp_async_commit();
    if (threadIdx.x < Tr::kCtaK)  // block 0's key scales; the first barrier publishes them
      sm.k_scale[threadIdx.x] =
          threadIdx.x < p.kv_len ? p.k_scale[bkv * p.kv_len + threadIdx.x] : 0.0f;

    RowState st;
#pragma unroll
    for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = c.q0 + warp * Tr::kWarpQ + mt * 16 + h * 8 + g;
        st.q_scale[mt][h] = row < p.q_len ? p.q_scale[bh * p.q_len + row] : 1.0f;
        st.max[mt][h] = -INFINITY;
        st.sum[mt][h] = 0.0f;
#pragma unroll
        for (int nt = 0; nt < Tr::kOTiles; ++nt) st.o[mt][nt][2 * h] = st.o[mt][nt][2 * h + 1] = 0.0f;
      }

    const FragBases fb = frag_bases(sm.q, sm.k, sm.v);
    QFrags qf;
    if constexpr (Tr::kQInRegs) {
      ptx::cp_async_wait<1>();  // Q landed
      __syncthreads();
#pragma unroll
      for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
        for (int ks = 0; ks < Tr::kQKSteps; ++ks) load_q(fb.q, mt, ks, qf[mt][ks]);
    }

    const auto kb = c.key_blocks(p, Tr::kCtaQ, Tr::kCtaK);
    int j = 0;
    for (; j < kb.n_unmasked; ++j) block<false>(p, c, sm, fb, qf, j, kb.n_blocks, st);
    for (; j < kb.n_blocks; ++j) block<true>(p, c, sm, fb, qf, j, kb.n_blocks, st);
    ptx::cp_async_wait<0>();
    store(p, c, bh, bkv, st);
  }

  __device__ static void store(const AttnParams& p, const Coord& c, int64_t bh, int64_t bkv,
                               const RowState& st) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    // Per-channel V scale of the fp8 path (1 for fp16), for this lane's columns 8 nt + 2t + i.
    float v_scale[Tr::kOTiles][2];
#pragma unroll
    for (int nt = 0; nt < Tr::kOTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 2; ++i)
        v_scale[nt][i] = kFp8 ? p.v_scale[bkv * D + nt * 8 + 2 * t + i] / Softmax::kPScale : 1.0f;

    Elem* out = static_cast<Elem*>(p.out) + c.batch * p.o_stride_b + c.head * p.o_stride_h;
#pragma unroll
    for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = c.q0 + warp * Tr::kWarpQ + mt * 16 + h * 8 + g;
        const float sum = Softmax::quad_sum(st.sum[mt][h]);
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        uint32_t words[Tr::kOTiles];
#pragma unroll
        for (int nt = 0; nt < Tr::kOTiles; ++nt)
          words[nt] = pack_pair<Elem>(st.o[mt][nt][2 * h] * inv * v_scale[nt][0],
                                      st.o[mt][nt][2 * h + 1] * inv * v_scale[nt][1]);
        store_quad_row(out + row * p.o_stride_n, words, t, row < p.q_len);
        if (row < p.q_len && p.lse != nullptr && t == 0)
          p.lse[bh * p.q_len + row] = (st.max[mt][h] + __log2f(sum)) * 0.69314718055994531f;
      }
  }
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 2) attn_kernel(const __grid_constant__ AttnParams p) {
  ptx::wait_prior_grids();  // (launch_after)
  AttnKernel<Tr>::run(p);
}

}  // namespace sage
