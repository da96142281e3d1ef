// The INT8 rule of quant_int8, shared with the Hopper kernel, which quantizes its Q tile
// itself. A lane holds 8 channels (one 16-byte load) of a row; a group's scale is
// amax / 127 (1 where amax == 0, so zeros stay 0 without NaN); values are multiplied by
// 1 / scale and rounded to nearest even, which keeps them in [-127, 127] (see quantize).
#pragma once
#include <cuda_runtime.h>

#include "common/numeric.cuh"

namespace sage::int8 {

// Token r >= 0 of a chunk is in group (r / block) * stride + r % stride (quant_int8's
// rule). block and stride are powers of two (quant.cu and attn_sm90.cu check), so this is
// a shift and a mask: as / and % by values the compiler cannot see, each compiled to an
// integer division sequence, 40% of the Hopper kernel's Q quantization instructions.
__device__ __forceinline__ int group_of(int r, int block, int stride) {
  return (r >> (__ffs(block) - 1)) * stride + (r & (stride - 1));
}

// How kThreads threads hold kRows rows of D 16-bit channels in registers: each lane 8
// channels (16 bytes) of kPasses rows, a row's lanes adjacent in one warp. `tid` is the
// thread's index among the kThreads.
template <int D, int kThreads, int kRows>
struct RowChunk {
  static constexpr int kLanesPerRow = D / 8;
  static constexpr int kRowsPerPass = kThreads / kLanesPerRow;
  static constexpr int kPasses = kRows / kRowsPerPass;
  static_assert(kRows % kRowsPerPass == 0, "whole passes");
  __device__ static int lane_in_row(int tid) { return tid % kLanesPerRow; }
  __device__ static int row(int tid, int pass) { return tid / kLanesPerRow + pass * kRowsPerPass; }

  // Issues every load at once (kPasses 16-byte loads in flight); rows at and past
  // `rows` read as zeros. `x` points at the chunk's first row, `stride` in elements.
  template <typename T>
  __device__ static void load(const T* x, int64_t stride, int rows, int tid, uint4 (&raw)[kPasses]) {
    x += lane_in_row(tid) * 8;
#pragma unroll
    for (int i = 0; i < kPasses; ++i)
      raw[i] = row(tid, i) < rows ? *reinterpret_cast<const uint4*>(x + row(tid, i) * stride) : make_uint4(0, 0, 0, 0);
  }
};

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&v)[8]) {
  const auto* pairs = reinterpret_cast<const typename Half2<T>::type*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = Half2<T>::to_floats(pairs[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// The maximum of m over a row whose kLanesPerRow lanes are adjacent in one warp.
template <int kLanesPerRow>
__device__ __forceinline__ float row_max(float m) {
#pragma unroll
  for (int off = kLanesPerRow / 2; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  return m;
}

// |v| max over this lane's 8 values.
__device__ __forceinline__ float lane_amax(const float (&v)[8]) {
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[j]));
  return amax;
}

// |x| max over a lane's 8 raw 16-bit values (one 16-byte load), taken pairwise in the
// 16-bit format before one conversion: a maximum is exact in either format, so this equals
// lane_amax of the unpacked floats, in half the instructions.
template <typename T>
__device__ __forceinline__ float lane_amax(const uint4& raw) {
  const auto* p = reinterpret_cast<const typename Half2<T>::type*>(&raw);
  const auto m = __hmax2(__hmax2(__habs2(p[0]), __habs2(p[1])), __hmax2(__habs2(p[2]), __habs2(p[3])));
  const float2 f = Half2<T>::to_floats(m);
  return fmaxf(f.x, f.y);
}

// |v| max over a row whose kLanesPerRow lanes are adjacent in one warp.
template <int kLanesPerRow>
__device__ __forceinline__ float row_amax(const float (&v)[8]) {
  return row_max<kLanesPerRow>(lane_amax(v));
}

// Merges a non-negative value into a shared-memory maximum: non-negative floats order
// like their bit patterns, so an integer max is exact.
__device__ __forceinline__ void atomic_amax(float* dst, float amax) {
  atomicMax(reinterpret_cast<int*>(dst), __float_as_int(amax));
}

__device__ __forceinline__ float scale_of(float amax) { return amax > 0.0f ? amax / 127.0f : 1.0f; }

// 8 values -> 8 int8 (little-endian in two words). No clamp: |v| <= the group's amax keeps
// v / scale within a few ulps of 127 in magnitude (the divisions are approximate under
// --use_fast_math), which rounds to 127. Rounding adds 1.5 * 2^23: the sum's low bits are
// the nearest-even integer in two's complement, as __float2int_rn's, but from an FADD (FMA
// pipe) instead of F2I, which takes the XU pipe that the Hopper kernel's exp2s keep busy.
// (_rn: the product is rounded first, as before; a fused multiply-add would round once.)
// Byte permutes gather the low bytes, 3 instructions for 4 values. (With lane_amax<T>
// above, the Hopper kernel's Q quantization took 37% fewer cycles a tile at hd128 on H100:
// bench/results/h100-f3fe47d-q-quant-fadd-ab.txt.)
__device__ __forceinline__ uint2 quantize(const float (&v)[8], float scale) {
  const float inv = 1.0f / scale;
  uint32_t q[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) q[j] = __float_as_uint(__fadd_rn(__fmul_rn(v[j], inv), kMagicBias));
  auto four = [&](int j) {  // the low bytes of q[j .. j + 3], in order
    return __byte_perm(__byte_perm(q[j], q[j + 1], 0x0040), __byte_perm(q[j + 2], q[j + 3], 0x0040), 0x5410);
  };
  return make_uint2(four(0), four(4));
}

}  // namespace sage::int8
