// Online softmax over one key block, shared by the sm80 (mma.sync) and sm90 (wgmma)
// kernels: both hold S in the m16n8 accumulator layout (lane = 4g + t owns rows g and
// g + 8 of each 16-row tile, columns 2t and 2t + 1 of each 8-column tile).
#pragma once
#include <cuda_runtime.h>

#include "attention/traits.cuh"
#include "common/numeric.cuh"
#include "common/ptx.cuh"

namespace sage {

template <int kMTiles, int kSTiles, PV kPV, typename Elem>
struct OnlineSoftmax {
  static constexpr bool kFp8 = kPV == PV::kFp8;
  // P is scaled into e4m3's range before rounding: 448 is its largest finite value.
  static constexpr float kPScale = kFp8 ? 448.0f : 1.0f;
  static constexpr int kPVStepKeys = kFp8 ? 32 : 16;
  static constexpr int kPVSteps = kSTiles * 8 / kPVStepKeys;

  __device__ static float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  }
  __device__ static float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
  }

  // int32 Q·K^T -> logits in units of 1/q_scale (the row scale is applied inside exp2
  // by update()). kMasked: -inf where the key is past the end or right of the causal
  // diagonal; a separate instantiation, so that blocks without a mask pay nothing for
  // it. `k_scale` points at the block's key scales.
  template <bool kMasked>
  __device__ static void scores(const int32_t (&s)[kMTiles][kSTiles][4], const float* k_scale, int row_base, int k0,
                                int kv_len, bool causal, float (&x)[kMTiles][kSTiles][4]) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) {
      // x = (biased - bias) * scale as one FMA: the product is exact inside the FMA, so
      // the only extra error is bias * scale's rounding, under one integer step.
      const float2 ks = *reinterpret_cast<const float2*>(k_scale + nt * 8 + 2 * t);
      const float scale[2] = {ks.x, ks.y}, offset[2] = {-kMagicBias * ks.x, -kMagicBias * ks.y};
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          x[mt][nt][e] = fmaf(biased_int_to_float(s[mt][nt][e]), scale[e % 2], offset[e % 2]);
          if constexpr (kMasked) {
            const int row = row_base + mt * 16 + (e / 2) * 8 + g;
            const int col = k0 + nt * 8 + 2 * t + e % 2;
            if (col >= kv_len || (causal && col > row)) x[mt][nt][e] = -INFINITY;
          }
        }
    }
  }

  // Folds a key block's row maximum (`block_max`, this lane's part, in units of 1/sq)
  // into the running maximum `row_max` (base-2 logits). Sets alpha = 2^(m_old - m_new),
  // the factor by which O and the row sum are rescaled, and returns the maximum that
  // exp2's argument subtracts. A row with no visible key so far keeps m = -inf; 0 is
  // subtracted instead, so that its probabilities are exp2(-inf) = 0 rather than NaN.
  __device__ static float advance_max(float& row_max, float block_max, float sq, float& alpha) {
    const float m_new = fmaxf(row_max, quad_max(block_max) * sq);
    const float m_sub = m_new == -INFINITY ? 0.0f : m_new;
    alpha = ptx::exp2_approx(row_max - m_sub);
    row_max = m_new;
    return m_sub;
  }

  // Running max/sum update; x becomes the (P-scaled) probabilities, alpha the factor
  // 2^(m_old - m_new) by which O must be rescaled.
  __device__ static void update(float (&x)[kMTiles][kSTiles][4], const float (&q_scale)[kMTiles][2],
                                float (&row_max)[kMTiles][2], float (&row_sum)[kMTiles][2],
                                float (&alpha)[kMTiles][2]) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kSTiles; ++nt) mx = fmaxf(mx, fmaxf(x[mt][nt][2 * h], x[mt][nt][2 * h + 1]));
        const float sq = q_scale[mt][h];
        const float m_sub = advance_max(row_max[mt][h], mx, sq, alpha[mt][h]);
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            float& v = x[mt][nt][2 * h + i];
            v = ptx::exp2_approx(fmaf(v, sq, -m_sub));
            sum += v;
            v *= kPScale;
          }
        row_sum[mt][h] = fmaf(row_sum[mt][h], alpha[mt][h], sum);
      }
  }

  // fp8 with kPairedEvery: every kPairedEvery-th n8 tile holds each row's two probabilities
  // as one f16x2 (exp2_f16x2_poly's), in the bits of elements 0 and 2.
  template <int kPairedEvery>
  __device__ static constexpr bool paired_tile(int nt) {
    static_assert(kPairedEvery > 0, "callers test kPairedEvery > 0 first (if constexpr)");
    return nt % kPairedEvery == kPairedEvery - 1;
  }

  // Probabilities (accumulator order) -> A fragments of the P·V MMA (paired_tile: see above).
  template <int kPairedEvery = 0>
  __device__ static void pack(const float (&pr)[kMTiles][kSTiles][4], uint32_t (&pf)[kMTiles][kPVSteps][4]) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int kk = 0; kk < kPVSteps; ++kk) {
        if constexpr (kFp8) {
          // k32 A fragment: a0 = row g, keys 4t..4t+3 of the step. Our lane holds keys
          // 2t, 2t+1 of each n8 tile, so the step's four tiles are packed pairwise;
          // quant_v_fp8 stores V's keys in the same permuted order.
          auto e4m3 = [&](int nt, int h) -> uint32_t {  // row h's two keys of tile nt
            const auto& v = pr[mt][nt];
            if constexpr (kPairedEvery > 0)
              if (paired_tile<kPairedEvery>(nt)) return ptx::cvt_e4m3x2_from_f16x2(__float_as_uint(v[2 * h]));
            return ptx::cvt_e4m3x2(v[2 * h], v[2 * h + 1]);
          };
          const int nt = 4 * kk;
          pf[mt][kk][0] = e4m3(nt, 0) | e4m3(nt + 1, 0) << 16;
          pf[mt][kk][1] = e4m3(nt, 1) | e4m3(nt + 1, 1) << 16;
          pf[mt][kk][2] = e4m3(nt + 2, 0) | e4m3(nt + 3, 0) << 16;
          pf[mt][kk][3] = e4m3(nt + 2, 1) | e4m3(nt + 3, 1) << 16;
        } else {
          // k16 A fragment: two adjacent n8 accumulator tiles map onto it directly.
          const auto& s0 = pr[mt][2 * kk];
          const auto& s1 = pr[mt][2 * kk + 1];
          pf[mt][kk][0] = pack_pair<Elem>(s0[0], s0[1]);
          pf[mt][kk][1] = pack_pair<Elem>(s0[2], s0[3]);
          pf[mt][kk][2] = pack_pair<Elem>(s1[0], s1[1]);
          pf[mt][kk][3] = pack_pair<Elem>(s1[2], s1[3]);
        }
      }
  }
};

}  // namespace sage
