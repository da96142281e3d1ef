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
// parameter; tokens past `count` are token 0, so that every load is unconditional and all 64
// are in flight at once. (Drawn in the kernel, or with each load behind its own condition,
// the loads went one at a time: 29-33 us a sample on H100.)
struct Sample {
  int count;
  int tokens[kTokens];
};

inline Sample draw(int len) {
  Sample s{count(len), {}};
  for (int i = 0; i < s.count; ++i) s.tokens[i] = token(i, len);
  return s;
}

// Channel `d` of the sample, `rows` pointing at token 0 and tokens `stride` elements apart,
// folded in token order by `merge` from `init`.
template <typename T, typename Merge>
__device__ __forceinline__ float fold_channel(const Sample& s, const T* rows, int64_t stride, int d, float init,
                                              Merge merge) {
  float x[kTokens];
#pragma unroll
  for (int i = 0; i < kTokens; ++i) x[i] = to_float(rows[s.tokens[i] * stride + d]);
  float acc = init;
#pragma unroll
  for (int i = 0; i < kTokens; ++i)
    if (i < s.count) acc = merge(acc, x[i]);
  return acc;
}

}  // namespace sage::token_sample
