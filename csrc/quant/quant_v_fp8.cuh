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
  static constexpr int kThreads = 128;    // the amax pass
  static constexpr int kAmaxRows = 256;   // tokens per CTA of the amax pass
  static constexpr int kKeys = 64;        // tokens per staged tile (the cluster kernel's unit)
  static constexpr int kPassThreads = 256, kPassKeys = 128;  // a CTA of the e4m3 pass
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

// kKeys keys of V staged in shared memory, so that the transposed writes read channels,
// not keys, from global memory. (Staged by cp.async instead, the e4m3 pass of 64-key CTAs
// ran slower on H200: 68.7 -> 77.9 us at B=4 H=32 N=4k hd128.)
template <typename T, int D, int kKeys = QuantVFp8Shape::kKeys>
using KeyTile = T[kKeys][D + 8];  // +8: rows start in different banks

// Channel d of the kKeys keys staged from `keys` on (rows [D + 8] as in a KeyTile), as
// permuted e4m3 bytes times `inv`, 16 keys a chunk. kKeys: whole 32-key groups.
template <typename T, int D, int kKeys = QuantVFp8Shape::kKeys>
__device__ __forceinline__ void encode_channel(const T (*keys)[D + 8], int d, float inv, uint4 (&chunks)[kKeys / 16]) {
  static_assert(kKeys % 32 == 0, "the permutation works on aligned groups of 32 keys");
#pragma unroll
  for (int chunk = 0; chunk < kKeys / 16; ++chunk) {
    uint32_t words[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int slot = chunk * 16 + w * 4;  // 4 slots per word, same 32-key group
      const int base = slot & ~31;
      auto val = [&](int s) { return to_float(keys[base + permuted_key(s & 31)][d]) * inv; };
      words[w] = ptx::cvt_e4m3x2(val(slot), val(slot + 1)) | uint32_t(ptx::cvt_e4m3x2(val(slot + 2), val(slot + 3))) << 16;
    }
    chunks[chunk] = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

// kKeys keys of D channels of e4m3 bytes on their way out, as the rows of V^T they become.
// Lanes put whole 16-byte chunks of one channel in; `write` then stores whole rows, adjacent
// lanes on adjacent chunks. Against each lane storing its chunks straight into a row of V^T
// of its own (each 32-byte sector then written in two halves: ncu counted 25% of the sectors
// as excess), on H100 at B=4 H=32: v_fp8_kernel 81.8 -> 64.6 us at 4k hd128 (DRAM 2.30 ->
// 2.87 TB/s, ncu), the op 1.11-1.29x as fast over 1k-16k, cluster path included
// (bench/results/h100-ec7e999-v-row-stores-ab.txt).
template <int D, int kKeys>
struct ByteTile {
  static constexpr int kRowChunks = kKeys / 16;
  uint8_t rows[D][kKeys + 16];  // +16: the chunks of 8 adjacent rows fall in different banks

  template <int kChunks>
  __device__ void put(int d, int key0, const uint4 (&chunks)[kChunks]) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) *reinterpret_cast<uint4*>(&rows[d][key0 + 16 * c]) = chunks[c];
  }

  // Row d to out + d * row_stride, by kThreads threads (tid: this one's index among them).
  template <int kThreads>
  __device__ void write(uint8_t* out, int64_t row_stride, int tid) const {
#pragma unroll
    for (int i = tid; i < D * kRowChunks; i += kThreads) {
      const int d = i / kRowChunks, c = i % kRowChunks;
      *reinterpret_cast<uint4*>(out + d * row_stride + 16 * c) = *reinterpret_cast<const uint4*>(&rows[d][16 * c]);
    }
  }
};

__device__ __forceinline__ float e4m3_scale(float amax) { return amax > 0.0f ? amax / QuantVFp8Shape::kE4m3Max : 1.0f; }

// Pass 2: one CTA per kPassKeys keys. Its threads issue all their loads at once (kPassKeys
// rows in flight), stage the keys in shared memory, then each encodes one channel's share of
// them (kPassKeys / (kPassThreads / D) keys) as permuted, scaled e4m3 bytes, which go out
// through a ByteTile in the keys' place; keys past the sequence end are written as zeros.
// Against 64 keys a CTA of 128 threads (at head dim 64 half of them idle while writing), on
// H200 at B=4 H=32, before the ByteTile: the op (amax pass included) 7.7% faster at hd64 16k
// and 2.0% at 8k, unchanged at hd128 4k-16k (bench/results/h200-7f5e090-v-pass-ab.txt).
template <typename T, int D>
__global__ void __launch_bounds__(QuantVFp8Shape::kPassThreads)
    v_fp8_kernel(const __grid_constant__ QuantVFp8Params p) {
  using Shape = QuantVFp8Shape;
  using Rows = int8::RowChunk<D, Shape::kPassThreads, Shape::kPassKeys>;
  constexpr int kShares = Shape::kPassThreads / D, kShareKeys = Shape::kPassKeys / kShares;
  __shared__ __align__(16) KeyTile<T, D, Shape::kPassKeys> keys;

  const int k0 = blockIdx.x * Shape::kPassKeys;
  uint4 raw[Rows::kPasses];
  Rows::load(v_rows<T>(p) + int64_t(k0) * p.v_stride_n, p.v_stride_n, p.len - k0, threadIdx.x, raw);
#pragma unroll
  for (int i = 0; i < Rows::kPasses; ++i)
    *reinterpret_cast<uint4*>(&keys[Rows::row(threadIdx.x, i)][Rows::lane_in_row(threadIdx.x) * 8]) = raw[i];
  __syncthreads();

  const int d = threadIdx.x % D, share = threadIdx.x / D;
  const int64_t bh = int64_t(blockIdx.z) * p.heads + blockIdx.y;
  const float scale = e4m3_scale(p.amax[bh * D + d]);
  if (blockIdx.x == 0 && share == 0) p.scale[bh * D + d] = scale;
  uint4 chunks[kShareKeys / 16];
  encode_channel<T, D, kShareKeys>(keys + share * kShareKeys, d, 1.0f / scale, chunks);
  using Bytes = ByteTile<D, Shape::kPassKeys>;
  static_assert(sizeof(Bytes) <= sizeof(keys), "the bytes fit where the keys were");
  auto& bytes = *reinterpret_cast<Bytes*>(&keys);
  __syncthreads();  // every key read
  bytes.put(d, share * kShareKeys, chunks);
  __syncthreads();
  bytes.template write<Shape::kPassThreads>(static_cast<uint8_t*>(p.out) + bh * D * p.padded_len + k0, p.padded_len, threadIdx.x);
}

}  // namespace sage
