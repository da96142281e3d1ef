// Per-channel statistics of a head from a sample of its tokens, so that the quantization
// passes need no pass of their own over the sequence before they can quantize it.
//
// K's smoothing vector and V's e4m3 range are per-channel reductions over all tokens,
// and every token's quantization depends on them: taken exactly they cost a read of K
// and of V before the quantizing reads (on H100 at B=4 H=32 N=4k hd128, torch's mean of K
// 57 us and V's amax pass 49 us of a 1.6 ms call; bench/results/h100-ec7e999-ncu-fp8-call.txt).
// A sample serves both: softmax is invariant to any per-head vector subtracted from K, so
// smoothing needs only a vector near the mean; and V's range from the sample is widened by a
// headroom, with a repair of the rare channel that exceeds it (quant_v_fp8.cuh).
//
// The sample is one token from each of min(len, kTokens) equal strata of the sequence, at
// a fixed pseudo-random offset inside its stratum: a regular stride could alias with the
// periods of rotary position embeddings, which rotate channel pairs with the token index.
// sageattention/reference.py draws the same tokens.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/numeric.cuh"

namespace sage::token_sample {

constexpr int kTokens = 64;

__host__ __device__ constexpr int count(int len) { return len < kTokens ? len : kTokens; }

// Token i < count(len) of the sample: stratum [i len / count, (i + 1) len / count), offset
// by the fraction (i * 40503 + 20000) mod 2^16 / 2^16 of its width (40503 / 2^16 ~ the
// golden ratio's fraction, so the offsets of consecutive strata are spread evenly).
__host__ __device__ constexpr int token(int i, int len) {
  const int n = count(len);
  const int64_t lo = int64_t(i) * len / n, hi = int64_t(i + 1) * len / n;
  const int64_t offset = (int64_t(i) * 40503 + 20000) & 0xffff;
  return int(lo + ((offset * (hi - lo)) >> 16));
}

// The sample of a `len` >= 1 token sequence, drawn on the host and passed to the kernels as a
// parameter; tokens past `count` are token 0, so that every load is valid.
struct Sample {
  int count;
  int tokens[kTokens];
};

inline Sample draw(int len) {
  Sample s{count(len), {}};
  for (int i = 0; i < s.count; ++i) s.tokens[i] = token(i, len);
  return s;
}

// A head's sampled rows staged in shared memory by kThreads threads, 16 bytes a load and
// every load in flight at once; then one thread a channel folds its column in token order.
// (One thread a channel loading its 64 values itself kept about 18 loads in flight: 4.5 us
// a sample kernel on H100; with each load behind a condition, one at a time: 29 us.)
template <typename T, int D>
struct SampleTile {
  static constexpr int kThreads = 256, kLanesPerRow = D / 8;
  T rows[kTokens][D];

  __device__ void load(const Sample& s, const T* head, int64_t stride) {
    constexpr int kLoads = kTokens * kLanesPerRow / kThreads;
    static_assert(kLoads * kThreads == kTokens * kLanesPerRow, "whole loads a thread");
    const int lane = threadIdx.x % kLanesPerRow, r0 = threadIdx.x / kLanesPerRow;
    uint4 raw[kLoads];
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int r = r0 + i * (kThreads / kLanesPerRow);
      raw[i] = *reinterpret_cast<const uint4*>(head + s.tokens[r] * stride + 8 * lane);
    }
#pragma unroll
    for (int i = 0; i < kLoads; ++i) reinterpret_cast<uint4*>(rows[r0 + i * (kThreads / kLanesPerRow)])[lane] = raw[i];
  }

  // Channel d folded by `merge` from `init` over the sample's tokens in order (after the
  // barrier that follows `load`).
  template <typename Merge>
  __device__ float fold(const Sample& s, int d, float init, Merge merge) const {
    float acc = init;
    for (int i = 0; i < s.count; ++i) acc = merge(acc, to_float(rows[i][d]));
    return acc;
  }
};

}  // namespace sage::token_sample
