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
// chunk twice, once for the maxima and once to quantize, cost 1.6x the time on H100.)
// Shared memory, not registers: held in registers the chunk took 95 registers a thread
// at head dim 128, two CTAs an SM, too few bytes in flight for the memory (2.0 TB/s on
// H200); staged, no register holds it and six CTAs fit.
#pragma once
#include <cuda_runtime.h>

#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "quant/int8_rows.cuh"

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
  static constexpr int kChunkRows = 128;  // tokens per CTA; groups never straddle CTAs
};

template <typename T, int D>
__global__ void __launch_bounds__(QuantInt8Shape::kThreads)
    quant_int8_kernel(const __grid_constant__ QuantInt8Params p) {
  using Chunk = int8::RowChunk<D, QuantInt8Shape::kThreads, QuantInt8Shape::kChunkRows>;
  __shared__ float group_amax[QuantInt8Shape::kChunkRows];
  __shared__ uint4 rows_smem[QuantInt8Shape::kChunkRows * Chunk::kLanesPerRow];  // 8 channels a slot

  const int t0 = blockIdx.x * QuantInt8Shape::kChunkRows, head = blockIdx.y, batch = blockIdx.z;
  const int lane_in_row = Chunk::lane_in_row(threadIdx.x);
  const int rows = min(QuantInt8Shape::kChunkRows, p.len - t0);
  const int64_t bh = int64_t(batch) * p.heads + head;
  // A thread stages, and later reads, only its own slots: the cp.async wait suffices.
  auto slot = [&](int i) -> const uint4& {
    return rows_smem[Chunk::row(threadIdx.x, i) * Chunk::kLanesPerRow + lane_in_row];
  };
  {
    const T* x = static_cast<const T*>(p.x) + batch * p.x_stride_b + head * p.x_stride_h + t0 * p.x_stride_n +
                 lane_in_row * 8;
#pragma unroll
    for (int i = 0; i < Chunk::kPasses; ++i) {
      const int r = Chunk::row(threadIdx.x, i);
      ptx::cp_async_16(ptx::smem_addr(&slot(i)), r < rows ? x + r * p.x_stride_n : x, r < rows);
    }
    ptx::cp_async_commit();
  }
  if (threadIdx.x < QuantInt8Shape::kChunkRows) group_amax[threadIdx.x] = 0.0f;
  float mean[8] = {};
  if (p.mean != nullptr)
#pragma unroll
    for (int i = 0; i < 8; ++i) mean[i] = p.mean[bh * D + lane_in_row * 8 + i];
  ptx::cp_async_wait<0>();
  __syncthreads();

  auto values = [&](int i, float (&v)[8]) {
    int8::unpack<T>(slot(i), v);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] -= mean[j];
  };
  auto local_group = [&](int r) { return int8::group_of(r, p.group_block, p.group_stride); };

  // Group maxima: each row reduced across its lanes, then merged per group.
#pragma unroll
  for (int i = 0; i < Chunk::kPasses; ++i) {
    const int r = Chunk::row(threadIdx.x, i);
    float v[8];
    values(i, v);
    const float amax = int8::row_amax<Chunk::kLanesPerRow>(v);
    if (lane_in_row == 0 && r < rows) int8::atomic_amax(&group_amax[local_group(r)], amax);
  }
  __syncthreads();

  // Quantize and write each token's scale.
#pragma unroll
  for (int i = 0; i < Chunk::kPasses; ++i) {
    const int r = Chunk::row(threadIdx.x, i);
    if (r >= rows) break;
    const float scale = int8::scale_of(group_amax[local_group(r)]);
    float v[8];
    values(i, v);
    const int64_t token = bh * p.len + t0 + r;
    *reinterpret_cast<uint2*>(p.out + token * D + lane_in_row * 8) = int8::quantize(v, scale);
    if (lane_in_row == 0) p.scale[token] = scale * p.scale_mult;
  }
}

}  // namespace sage
