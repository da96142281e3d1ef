// V to FP8 (e4m3) for the fp8 P·V kernel: per-channel scales, transposed to
// [B, H, D, N_pad] and with keys permuted inside every aligned group of 32.
//
// Why the permutation: in the attention kernel a lane holds probabilities for keys
// 2t, 2t+1 of each n8 tile (the QK^T accumulator layout), but the fp8 MMA wants keys
// 4t..4t+3 of each k16 half in one register. Storing V's keys in the order the lane
// packs P (slot 16h + 4t + j <- key 16h + 2t + (j & 1) + 8 (j >> 1)) makes both
// sides agree without any shuffle of P.
#pragma once
#include <cuda_runtime.h>

#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "quant/int8_rows.cuh"  // unpack

namespace sage {

struct QuantVFp8Params {
  const void* v;  // [B, H, N, D] addressed through strides (elements)
  int64_t v_stride_b, v_stride_h, v_stride_n;
  float* amax;      // [B, H, D], zero-initialised, filled by pass 1
  float* scale;     // [B, H, D] = amax / 448 (1 where amax == 0)
  void* out;        // [B, H, D, padded_len] e4m3
  int heads, len, padded_len;
};

struct QuantVFp8Shape {
  static constexpr int kThreads = 128;
  static constexpr int kAmaxRows = 256;  // tokens per CTA of the amax pass
  static constexpr int kKeys = 64;       // tokens per CTA of the e4m3 pass
  static constexpr float kE4m3Max = 448.0f;
};

__host__ __device__ constexpr int permuted_key(int slot) {  // slot in 0..31 -> key in 0..31
  return (slot & 16) + 2 * ((slot >> 2) & 3) + (slot & 1) + 8 * ((slot >> 1) & 1);
}

template <typename T>
__device__ __forceinline__ const T* v_rows(const QuantVFp8Params& p) {
  return static_cast<const T*>(p.v) + blockIdx.z * p.v_stride_b + blockIdx.y * p.v_stride_h;
}

// Merges the |v| of 8 channels (one 16-byte load of a row) into amax.
template <typename T>
__device__ __forceinline__ void merge_amax(const uint4& raw, float (&amax)[8]) {
  float v[8];
  int8::unpack<T>(raw, v);
#pragma unroll
  for (int j = 0; j < 8; ++j) amax[j] = fmaxf(amax[j], fabsf(v[j]));
}

// The CTA's value of channel threadIdx.x (< D) from its threads' partials of 8 channels
// each, a row's D / 8 lanes adjacent: the channel's partials are those of the threads
// with its lane in their row.
template <int D, int kThreads, typename Op>
__device__ __forceinline__ float reduce_channel(const float (&partial)[kThreads][8], Op op) {
  constexpr int kLanesPerRow = D / 8;
  const int lane = threadIdx.x / 8, j = threadIdx.x % 8;
  float acc = partial[lane][j];
  for (int r = lane + kLanesPerRow; r < kThreads; r += kLanesPerRow) acc = op(acc, partial[r][j]);
  return acc;
}

// Pass 1: per-channel amax over the tokens of one CTA, merged with an integer atomicMax
// (non-negative floats order like their bit patterns).
template <typename T, int D>
__global__ void __launch_bounds__(QuantVFp8Shape::kThreads)
    v_amax_kernel(const __grid_constant__ QuantVFp8Params p) {
  constexpr int kLanesPerRow = D / 8;
  constexpr int kRowsPerPass = QuantVFp8Shape::kThreads / kLanesPerRow;
  __shared__ float partial[QuantVFp8Shape::kThreads][8];
  const int lane_in_row = threadIdx.x % kLanesPerRow;
  const int t0 = blockIdx.x * QuantVFp8Shape::kAmaxRows;
  const int t1 = min(p.len, t0 + QuantVFp8Shape::kAmaxRows);
  const T* rows = v_rows<T>(p) + lane_in_row * 8;

  float amax[8] = {};
  for (int t = t0 + threadIdx.x / kLanesPerRow; t < t1; t += kRowsPerPass)
    merge_amax<T>(*reinterpret_cast<const uint4*>(rows + t * p.v_stride_n), amax);
#pragma unroll
  for (int i = 0; i < 8; ++i) partial[threadIdx.x][i] = amax[i];
  __syncthreads();
  if (threadIdx.x < D) {  // one thread per channel folds the rows of the CTA
    const float m = reduce_channel<D, QuantVFp8Shape::kThreads>(partial, [](float a, float b) { return fmaxf(a, b); });
    float* dst = p.amax + (int64_t(blockIdx.z) * p.heads + blockIdx.y) * D + threadIdx.x;
    atomicMax(reinterpret_cast<int*>(dst), __float_as_int(m));
  }
}

// Stages the CTA's kKeys keys of V ([kKeys][D], zeros past the sequence end) in
// shared memory, so that the transposed writes read channels, not keys, from global.
// (Staged by cp.async instead, the pass ran slower on H200: 68.7 -> 77.9 us at B=4 H=32
// N=4k hd128.)
template <typename T, int D>
using KeyTile = T[QuantVFp8Shape::kKeys][D + 8];  // +8: rows start in different banks

template <typename T, int D>
__device__ __forceinline__ void stage_keys(const QuantVFp8Params& p, KeyTile<T, D>& tile) {
  constexpr int kLanesPerRow = D / 8;
  constexpr int kRowsPerPass = QuantVFp8Shape::kThreads / kLanesPerRow;
  const int k0 = blockIdx.x * QuantVFp8Shape::kKeys;
  const T* rows = v_rows<T>(p);
  for (int r = threadIdx.x / kLanesPerRow; r < QuantVFp8Shape::kKeys; r += kRowsPerPass) {
    const int c = threadIdx.x % kLanesPerRow;
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (k0 + r < p.len) raw = *reinterpret_cast<const uint4*>(rows + (k0 + r) * p.v_stride_n + c * 8);
    *reinterpret_cast<uint4*>(&tile[r][c * 8]) = raw;
  }
  __syncthreads();
}

// Writes channel d of the kKeys keys staged from `keys` on (rows of a KeyTile) as
// permuted e4m3 bytes, times `inv`, to dst[0 .. kKeys).
template <typename T, int D>
__device__ __forceinline__ void write_channel(const T (*keys)[D + 8], int d, float inv, uint8_t* dst) {
#pragma unroll
  for (int chunk = 0; chunk < QuantVFp8Shape::kKeys / 16; ++chunk) {
    uint32_t words[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int slot = chunk * 16 + w * 4;  // 4 slots per word, same 32-key group
      const int base = slot & ~31;
      auto val = [&](int s) { return to_float(keys[base + permuted_key(s & 31)][d]) * inv; };
      words[w] = ptx::cvt_e4m3x2(val(slot), val(slot + 1)) | uint32_t(ptx::cvt_e4m3x2(val(slot + 2), val(slot + 3))) << 16;
    }
    *reinterpret_cast<uint4*>(dst + chunk * 16) = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

__device__ __forceinline__ float e4m3_scale(float amax) { return amax > 0.0f ? amax / QuantVFp8Shape::kE4m3Max : 1.0f; }

// Pass 2: one CTA per 64 keys: stage them in shared memory, then write each channel's
// 64 permuted, scaled e4m3 bytes. Keys past the sequence end are written as zeros.
template <typename T, int D>
__global__ void __launch_bounds__(QuantVFp8Shape::kThreads)
    v_fp8_kernel(const __grid_constant__ QuantVFp8Params p) {
  __shared__ __align__(16) KeyTile<T, D> tile;
  stage_keys<T, D>(p, tile);
  const int k0 = blockIdx.x * QuantVFp8Shape::kKeys;
  const int64_t bh = int64_t(blockIdx.z) * p.heads + blockIdx.y;
  for (int d = threadIdx.x; d < D; d += QuantVFp8Shape::kThreads) {
    const float scale = e4m3_scale(p.amax[bh * D + d]);
    if (blockIdx.x == 0) p.scale[bh * D + d] = scale;
    write_channel<T, D>(tile, d, 1.0f / scale, static_cast<uint8_t*>(p.out) + (bh * D + d) * p.padded_len + k0);
  }
}

}  // namespace sage
