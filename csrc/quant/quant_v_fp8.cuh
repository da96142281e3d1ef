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
#include "quant/int8_rows.cuh"  // RowChunk
#include "quant/token_sample.cuh"

namespace sage {

struct QuantVFp8Params {
  const void* v;  // [B, H, N, D] addressed through strides (elements)
  int64_t v_stride_b, v_stride_h, v_stride_n;
  float* limit;     // [B, H, D]: kHeadroom x the sample's |v| maximum (sample_limit_kernel)
  float* overflow;  // [B, H, D]: the channel's |v| maximum if above the limit, else 0
  float* scale;     // [B, H, D] = e4m3_scale(max(limit, overflow))
  void* out;        // [B, H, D, padded_len] e4m3
  int heads, len, padded_len;
};

struct QuantVFp8Shape {
  static constexpr int kThreads = 256, kKeys = 128;  // a CTA of the e4m3 pass
  static constexpr float kE4m3Max = 448.0f;
  // The sample's |v| maximum times this maps to kE4m3Max. A channel's maximum over the whole
  // sequence is rarely far above that of 64 tokens (1.5x for normal data), and e4m3 is
  // floating point: the wider range costs precision only to values under 16 x 2^-6 / 448 =
  // 1/1792 of the sample maximum, which become subnormal.
  static constexpr float kHeadroom = 16.0f;
};

__host__ __device__ constexpr int permuted_key(int slot) {  // slot in 0..31 -> key in 0..31
  return (slot & 16) + 2 * ((slot >> 2) & 3) + (slot & 1) + 8 * ((slot >> 1) & 1);
}

template <typename T>
__device__ __forceinline__ const T* v_rows(const QuantVFp8Params& p, int batch, int head) {
  return static_cast<const T*>(p.v) + batch * p.v_stride_b + head * p.v_stride_h;
}

__device__ __forceinline__ float e4m3_scale(float amax) { return amax > 0.0f ? amax / QuantVFp8Shape::kE4m3Max : 1.0f; }

// Each channel's limit from the head's token sample (token_sample.cuh), and its overflow
// cleared for the e4m3 pass. One CTA a (head, batch).
template <typename T, int D>
__global__ void __launch_bounds__(token_sample::SampleTile<T, D>::kThreads)
    sample_limit_kernel(const __grid_constant__ QuantVFp8Params p, const __grid_constant__ token_sample::Sample sample) {
  __shared__ __align__(16) token_sample::SampleTile<T, D> tile;
  const int64_t bh = int64_t(blockIdx.y) * p.heads + blockIdx.x;
  ptx::wait_prior_grids();  // (launch_after)
  tile.load(sample, v_rows<T>(p, blockIdx.y, blockIdx.x), p.v_stride_n);
  __syncthreads();
  if (threadIdx.x < D) {
    const float amax = tile.fold(sample, threadIdx.x, 0.0f, [](float a, float b) { return fmaxf(a, fabsf(b)); });
    p.limit[bh * D + threadIdx.x] = QuantVFp8Shape::kHeadroom * amax;
    p.overflow[bh * D + threadIdx.x] = 0.0f;
  }
}

// kKeys keys of V staged in shared memory, so that the transposed writes read channels,
// not keys, from global memory. (Staged by cp.async instead, the e4m3 pass of 64-key CTAs
// ran slower on H200: 68.7 -> 77.9 us at B=4 H=32 N=4k hd128.)
template <typename T, int D, int kKeys>
using KeyTile = T[kKeys][D + 8];  // +8: rows start in different banks

// Channel d of the kKeys keys staged from `keys` on (rows [D + 8] as in a KeyTile), as
// permuted e4m3 bytes times `inv`, 16 keys a chunk; returns their |v| maximum. kKeys:
// whole 32-key groups.
template <typename T, int D, int kKeys>
__device__ __forceinline__ float encode_channel(const T (*keys)[D + 8], int d, float inv, uint4 (&chunks)[kKeys / 16]) {
  static_assert(kKeys % 32 == 0, "the permutation works on aligned groups of 32 keys");
  float amax = 0.0f;
#pragma unroll
  for (int chunk = 0; chunk < kKeys / 16; ++chunk) {
    uint32_t words[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int slot = chunk * 16 + w * 4;  // 4 slots per word, same 32-key group
      const int base = slot & ~31;
      auto val = [&](int s) {
        const float x = to_float(keys[base + permuted_key(s & 31)][d]);
        amax = fmaxf(amax, fabsf(x));
        return x * inv;
      };
      words[w] = ptx::cvt_e4m3x2(val(slot), val(slot + 1)) | uint32_t(ptx::cvt_e4m3x2(val(slot + 2), val(slot + 3))) << 16;
    }
    chunks[chunk] = make_uint4(words[0], words[1], words[2], words[3]);
  }
  return amax;
}

// kKeys keys of D channels of e4m3 bytes on their way out, as the rows of V^T they become.
// Lanes put whole 16-byte chunks of one channel in; `write` then stores whole rows, adjacent
// lanes on adjacent chunks. Against each lane storing its chunks straight into a row of V^T
// of its own (each 32-byte sector then written in two halves: ncu counted 25% of the sectors
// as excess), on H100 at B=4 H=32: v_fp8_kernel 81.8 -> 64.6 us at 4k hd128 (DRAM 2.30 ->
// 2.87 TB/s, ncu), the op 1.11-1.29x as fast over 1k-16k (measured while short sequences
// still took a thread-block-cluster path, since removed; bench/results/h100-ec7e999-v-row-stores-ab.txt).
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

// Keys [k0, k0 + kKeys) of the head (`rows` at its token 0, `out` at its V^T) to e4m3, this
// thread's channel scaled by 1 / `scale`; returns the |v| maximum of the thread's share of
// them. The threads issue all their loads at once (kKeys rows in flight), stage the keys in
// shared memory, then each encodes one channel's share of them (kKeys / (kThreads / D) keys)
// as permuted e4m3 bytes, which go out through a ByteTile in the keys' place; keys past the
// sequence end are written as zeros. Against 64 keys a CTA of 128 threads (at head dim 64
// half of them idle while writing), on H200 at B=4 H=32, before the ByteTile: the op 7.7%
// faster at hd64 16k and 2.0% at 8k, unchanged at hd128 4k-16k
// (bench/results/h200-7f5e090-v-pass-ab.txt).
template <typename T, int D>
__device__ __forceinline__ float encode_tile(const QuantVFp8Params& p, const T* rows, uint8_t* out, int k0, float scale,
                                             KeyTile<T, D, QuantVFp8Shape::kKeys>& keys) {
  using Shape = QuantVFp8Shape;
  using Rows = int8::RowChunk<D, Shape::kThreads, Shape::kKeys>;
  constexpr int kShares = Shape::kThreads / D, kShareKeys = Shape::kKeys / kShares;
  uint4 raw[Rows::kPasses];
  Rows::load(rows + int64_t(k0) * p.v_stride_n, p.v_stride_n, p.len - k0, threadIdx.x, raw);
#pragma unroll
  for (int i = 0; i < Rows::kPasses; ++i)
    *reinterpret_cast<uint4*>(&keys[Rows::row(threadIdx.x, i)][Rows::lane_in_row(threadIdx.x) * 8]) = raw[i];
  __syncthreads();

  const int d = threadIdx.x % D, share = threadIdx.x / D;
  uint4 chunks[kShareKeys / 16];
  const float amax = encode_channel<T, D, kShareKeys>(keys + share * kShareKeys, d, 1.0f / scale, chunks);
  using Bytes = ByteTile<D, Shape::kKeys>;
  static_assert(sizeof(Bytes) <= sizeof(keys), "the bytes fit where the keys were");
  auto& bytes = *reinterpret_cast<Bytes*>(&keys);
  __syncthreads();  // every key read
  bytes.put(d, share * kShareKeys, chunks);
  __syncthreads();
  bytes.template write<Shape::kThreads>(out + k0, p.padded_len, threadIdx.x);
  return amax;
}

// The e4m3 pass: one CTA per kKeys keys, after sample_limit_kernel; each channel's limit maps
// to 448. A thread whose share of the keys holds a value above the limit (the sample missed
// an outlier) records its largest, for v_fp8_repair_kernel.
template <typename T, int D>
__global__ void __launch_bounds__(QuantVFp8Shape::kThreads) v_fp8_kernel(const __grid_constant__ QuantVFp8Params p) {
  __shared__ __align__(16) KeyTile<T, D, QuantVFp8Shape::kKeys> keys;
  const int d = threadIdx.x % D;
  const int64_t bh = int64_t(blockIdx.z) * p.heads + blockIdx.y;
  ptx::wait_prior_grids();  // (launch_after)
  const float limit = p.limit[bh * D + d], scale = e4m3_scale(limit);
  if (blockIdx.x == 0 && threadIdx.x < D) p.scale[bh * D + d] = scale;
  uint8_t* out = static_cast<uint8_t*>(p.out) + bh * D * p.padded_len;
  const float amax = encode_tile<T, D>(p, v_rows<T>(p, blockIdx.z, blockIdx.y), out, blockIdx.x * QuantVFp8Shape::kKeys,
                                       scale, keys);
  if (amax > limit) int8::atomic_amax(&p.overflow[bh * D + d], amax);
}

// After the e4m3 pass, one CTA a (head, batch): a head with an overflow is encoded again,
// each channel with the scale of max(limit, overflow), so that no value saturates; a
// channel's scale is thus e4m3_scale(max(limit, |v| maximum)). Channels without an overflow
// are rewritten with the bytes they had. A launch of its own, 1.6 us on H100 when nothing
// overflowed: with the head's last CTA doing it instead (a fence and an atomic in every CTA,
// 47 registers) the pass took 72 us at 4k hd128, against 68.4 + 1.7 us for the two kernels
// (profiler, the H100s of two calls). Re-encoding a channel at a time from strided 2-byte
// loads instead took 2.1 ms at 4k hd128 with every channel repaired (78 us normally).
template <typename T, int D>
__global__ void __launch_bounds__(QuantVFp8Shape::kThreads) v_fp8_repair_kernel(const __grid_constant__ QuantVFp8Params p) {
  __shared__ __align__(16) KeyTile<T, D, QuantVFp8Shape::kKeys> keys;
  const int d = threadIdx.x % D;
  const int64_t bh = int64_t(blockIdx.y) * p.heads + blockIdx.x;
  ptx::wait_prior_grids();  // (launch_after)
  const float overflow = p.overflow[bh * D + d];
  if (!__syncthreads_or(overflow > 0.0f)) return;
  const float scale = e4m3_scale(fmaxf(p.limit[bh * D + d], overflow));
  const T* rows = v_rows<T>(p, blockIdx.y, blockIdx.x);
  uint8_t* out = static_cast<uint8_t*>(p.out) + bh * D * p.padded_len;
  for (int k0 = 0; k0 < p.padded_len; k0 += QuantVFp8Shape::kKeys) {
    encode_tile<T, D>(p, rows, out, k0, scale, keys);
    __syncthreads();  // the tile's bytes are written out before the next keys take their place
  }
  if (threadIdx.x < D) p.scale[bh * D + d] = scale;
}

}  // namespace sage
