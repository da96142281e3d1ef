// Q and K to INT8 with one scale per group of tokens, K optionally smoothed first.
//
// Token t of a (batch, head) belongs to group (t / group_block) * group_stride +
// t % group_stride: per_warp granularity is a plain block of rows, per_thread
// interleaves rows with the MMA fragment layout (rows congruent mod 8 share a lane).
// Every token gets its group's scale written out, so the attention kernel needs no
// notion of granularity: it dequantizes with scale[row] * scale[col].
//
// One pass over memory: a CTA stages its whole chunk of rows in shared memory
// (cp.async), reduces the group maxima there and quantizes what it holds. (Reading the
// chunk twice, once for the maxima and once to quantize, cost 1.6x the time on H100.) K's
// smoothing vector comes from a sample of its tokens (token_sample.cuh), not a pass of its own.
// Shared memory, not registers: held in registers the chunk took 95 registers a thread
// at head dim 128, two CTAs an SM, too few bytes in flight for the memory (2.0 TB/s on
// H200); staged, no register holds it and six CTAs fit.
#pragma once
#include <cuda_runtime.h>

#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "quant/int8_rows.cuh"
#include "quant/token_sample.cuh"

namespace sage {

struct QuantInt8Params {
  const void* x;  // [B, H, N, D] addressed through strides (elements)
  int64_t x_stride_b, x_stride_h, x_stride_n;
  const float* mean;  // [B, H, D] or nullptr
  int8_t* out;        // [B, H, N, D] contiguous
  float* scale;       // [B, H, N]
  int heads, len;
  int group_block, group_stride;
  float scale_mult;  // folded into the written scale (sm_scale * log2 e for Q)
};

struct QuantInt8Shape {
  static constexpr int kThreads = 256;
  static constexpr int kChunkRows = 128;  // tokens per chunk; groups never straddle chunks
};

// One chunk of kChunkRows tokens staged in shared memory, each thread holding (staging,
// reading back) only its own 16-byte slots, so the cp.async wait alone orders them.
template <typename T, int D>
struct StagedChunk {
  using Rows = int8::RowChunk<D, QuantInt8Shape::kThreads, QuantInt8Shape::kChunkRows>;
  static constexpr int kSlots = QuantInt8Shape::kChunkRows * Rows::kLanesPerRow;  // uint4 each
  uint4* slots;
  int rows;  // tokens of the chunk inside the sequence

  __device__ static int lane_in_row() { return Rows::lane_in_row(threadIdx.x); }
  __device__ uint4& slot(int i) const { return slots[Rows::row(threadIdx.x, i) * Rows::kLanesPerRow + lane_in_row()]; }

  // Issues the copies of rows [0, rows) of `x` (the chunk's first row, `stride` elements
  // apart); the rest read as zeros. Completes at the caller's cp_async_wait.
  __device__ void stage(const T* x, int64_t stride) const {
    x += lane_in_row() * 8;
#pragma unroll
    for (int i = 0; i < Rows::kPasses; ++i) {
      const int r = Rows::row(threadIdx.x, i);
      ptx::cp_async_16(ptx::smem_addr(&slot(i)), r < rows ? x + r * stride : x, r < rows);
    }
  }

  __device__ void values(int i, const float (&mean)[8], float (&v)[8]) const {
    int8::unpack<T>(slot(i), v);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] -= mean[j];
  }

  // Merges each row's |x - mean| maximum into group_amax[group] (zeroed beforehand).
  __device__ void group_maxima(const QuantInt8Params& p, const float (&mean)[8], float* group_amax) const {
#pragma unroll
    for (int i = 0; i < Rows::kPasses; ++i) {
      const int r = Rows::row(threadIdx.x, i);
      float v[8];
      values(i, mean, v);
      const float amax = int8::row_amax<Rows::kLanesPerRow>(v);
      if (lane_in_row() == 0 && r < rows) int8::atomic_amax(&group_amax[int8::group_of(r, p.group_block, p.group_stride)], amax);
    }
  }

  // Quantizes the rows by their group maxima (complete: after a barrier) and writes them
  // and each token's scale; `token0` is the chunk's first token in [B * H * N].
  __device__ void quantize(const QuantInt8Params& p, const float (&mean)[8], const float* group_amax,
                           int64_t token0) const {
#pragma unroll
    for (int i = 0; i < Rows::kPasses; ++i) {
      const int r = Rows::row(threadIdx.x, i);
      if (r >= rows) break;
      const float scale = int8::scale_of(group_amax[int8::group_of(r, p.group_block, p.group_stride)]);
      float v[8];
      values(i, mean, v);
      const int64_t token = token0 + r;
      *reinterpret_cast<uint2*>(p.out + token * D + lane_in_row() * 8) = int8::quantize(v, scale);
      if (lane_in_row() == 0) p.scale[token] = scale * p.scale_mult;
    }
  }
};

template <typename T>
__device__ __forceinline__ const T* head_rows(const QuantInt8Params& p, int batch, int head) {
  return static_cast<const T*>(p.x) + batch * p.x_stride_b + head * p.x_stride_h;
}

// K's smoothing vector: each channel's fp32 mean over the head's token sample, summed in
// sample order. One CTA a (head, batch).
template <typename T, int D>
__global__ void __launch_bounds__(token_sample::SampleTile<T, D>::kThreads)
    sample_mean_kernel(const __grid_constant__ QuantInt8Params p, const __grid_constant__ token_sample::Sample sample,
                       float* mean) {
  __shared__ __align__(16) token_sample::SampleTile<T, D> tile;
  const int head = blockIdx.x, batch = blockIdx.y;
  ptx::wait_prior_grids();  // (launch_after)
  tile.load(sample, head_rows<T>(p, batch, head), p.x_stride_n);
  __syncthreads();
  if (threadIdx.x < D) {
    const float sum = tile.fold(sample, threadIdx.x, 0.0f, [](float a, float b) { return a + b; });
    mean[(int64_t(batch) * p.heads + head) * D + threadIdx.x] = sum / float(sample.count);
  }
}

// One CTA a chunk; the mean, if any, comes from p.mean.
template <typename T, int D>
__global__ void __launch_bounds__(QuantInt8Shape::kThreads)
    quant_int8_kernel(const __grid_constant__ QuantInt8Params p) {
  using Chunk = StagedChunk<T, D>;
  __shared__ float group_amax[QuantInt8Shape::kChunkRows];
  __shared__ uint4 slots[Chunk::kSlots];  // 8 channels a slot

  const int t0 = blockIdx.x * QuantInt8Shape::kChunkRows, head = blockIdx.y, batch = blockIdx.z;
  const Chunk chunk{slots, min(QuantInt8Shape::kChunkRows, p.len - t0)};
  ptx::wait_prior_grids();  // (launch_after)
  chunk.stage(head_rows<T>(p, batch, head) + t0 * p.x_stride_n, p.x_stride_n);
  ptx::cp_async_commit();
  if (threadIdx.x < QuantInt8Shape::kChunkRows) group_amax[threadIdx.x] = 0.0f;
  const int64_t bh = int64_t(batch) * p.heads + head;
  float mean[8] = {};
  if (p.mean != nullptr)
#pragma unroll
    for (int i = 0; i < 8; ++i) mean[i] = p.mean[bh * D + Chunk::lane_in_row() * 8 + i];
  ptx::cp_async_wait<0>();
  __syncthreads();
  chunk.group_maxima(p, mean, group_amax);
  __syncthreads();
  chunk.quantize(p, mean, group_amax, bh * p.len + t0);
}

}  // namespace sage
