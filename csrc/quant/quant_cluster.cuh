// K smoothing + INT8, and V to e4m3, each in one read of memory: a thread-block cluster
// per (batch, head) holds the head's whole sequence in its CTAs' shared memory (sm_90+).
//
// Both need a reduction over all tokens before any token can be quantized (K's channel
// means, V's channel maxima), which the two-pass path pays for with a pass of its own
// (torch's mean before quant_int8_kernel, v_amax_kernel before v_fp8_kernel). Here each CTA
// stages its slice of tokens once (cp.async), the CTAs exchange their partial sums or
// maxima through distributed shared memory, and each quantizes what it holds, with the
// same rules and outputs as the two-pass kernels.
//
// quant.cu takes this path only while a CTA stages at most 72 KB (sequences up to 2048
// tokens at head dim 128, 4096 at 64), where it measured faster on H200 (B=4 H=32 fp16):
// K 39.9 -> 31.9 us at N=1k hd128, V 38.4 -> 31.3 us. With a CTA's share at 128-216 KB
// (one CTA an SM, its loads and stores never overlapping) K took 1.6x the two passes at
// N=4k hd128 (1.2x with 1024-thread CTAs) and V 1.1x; 16-CTA clusters of 64-68 KB CTAs
// matched them for K, V 1.13x.
// V is staged by cp.async: through registers, in batches of a tile, it took 2.0x.
// Streaming a larger share through 72 KB twice (the second read from L2, last window
// first) was no faster at 4k and 12% slower at 16k hd128 than the two passes
// (bench/results/h200-1378cda-quant-windows.txt).
#pragma once
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "quant/quant_int8.cuh"
#include "quant/quant_v_fp8.cuh"

namespace sage {

struct ClusterQuantShape {
  static constexpr int kThreads = 256;
  static constexpr int kMaxCtas = 8;  // the portable cluster size
};

// cta[i] reduced over the cluster's CTAs (after a cluster.sync()).
template <class Cluster, typename Op>  // Cluster: cooperative_groups::cluster_group (sm_90+ only)
__device__ __forceinline__ float cluster_reduce(Cluster& cluster, float* cta, int i, Op op) {
  float acc = *cluster.map_shared_rank(cta + i, 0);
  for (unsigned r = 1; r < cluster.num_blocks(); ++r) acc = op(acc, *cluster.map_shared_rank(cta + i, r));
  return acc;
}

// K: CTA r of a cluster stages chunks [r * chunks, (r + 1) * chunks) of kChunkRows tokens
// (so quant_int8's groups never straddle CTAs), the cluster sums its channels, and each
// CTA quantizes its chunks exactly as quant_int8_kernel would with that mean.
template <typename T, int D>
__global__ void __launch_bounds__(ClusterQuantShape::kThreads)
    quant_int8_smooth_cluster_kernel(const __grid_constant__ QuantInt8Params p, int chunks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Chunk = StagedChunk<T, D>;
  constexpr int kRows = QuantInt8Shape::kChunkRows;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ uint4 staged[];  // [chunks][Chunk::kSlots], then group maxima [chunks][kRows]
  __shared__ float partial[ClusterQuantShape::kThreads][8];
  __shared__ float cta_sum[D], mean_smem[D];
  float* group_amax = reinterpret_cast<float*>(staged + chunks * Chunk::kSlots);

  const int head = blockIdx.y, batch = blockIdx.z, t0 = int(cluster.block_rank()) * chunks * kRows;
  const int64_t bh = int64_t(batch) * p.heads + head;
  const T* x = head_rows<T>(p, batch, head);
  auto chunk = [&](int c) { return Chunk{staged + c * Chunk::kSlots, min(kRows, p.len - (t0 + c * kRows))}; };
  for (int c = 0; c < chunks; ++c) chunk(c).stage(x + min(t0 + c * kRows, p.len - 1) * p.x_stride_n, p.x_stride_n);
  ptx::cp_async_commit();
  for (int i = threadIdx.x; i < chunks * kRows; i += ClusterQuantShape::kThreads) group_amax[i] = 0.0f;
  ptx::cp_async_wait<0>();

  float sum[8] = {};
  for (int c = 0; c < chunks; ++c) chunk(c).add_channels(sum);
#pragma unroll
  for (int j = 0; j < 8; ++j) partial[threadIdx.x][j] = sum[j];
  __syncthreads();
  if (threadIdx.x < D)
    cta_sum[threadIdx.x] = reduce_channel<D, ClusterQuantShape::kThreads>(partial, [](float a, float b) { return a + b; });
  cluster.sync();
  if (threadIdx.x < D) {
    const float m = cluster_reduce(cluster, cta_sum, threadIdx.x, [](float a, float b) { return a + b; }) / float(p.len);
    mean_smem[threadIdx.x] = m;
    if (cluster.block_rank() == 0) p.mean_out[bh * D + threadIdx.x] = m;
  }
  __syncthreads();
  float mean[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) mean[j] = mean_smem[Chunk::lane_in_row() * 8 + j];

  for (int c = 0; c < chunks; ++c) chunk(c).group_maxima(p, mean, group_amax + c * kRows);
  __syncthreads();
  for (int c = 0; c < chunks; ++c) chunk(c).quantize(p, mean, group_amax + c * kRows, bh * p.len + t0 + c * kRows);
  cluster.sync();  // cta_sum stays readable until every CTA of the cluster has read it
#endif
}

// V: CTA r stages key tiles [r * tiles, (r + 1) * tiles) of kKeys keys (zeros past the
// end), the cluster takes its channel maxima, and each CTA writes its tiles' permuted
// e4m3 channels exactly as v_fp8_kernel would (through ByteTiles as well).
template <typename T, int D>
__global__ void __launch_bounds__(ClusterQuantShape::kThreads)
    quant_v_fp8_cluster_kernel(const __grid_constant__ QuantVFp8Params p, int tiles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kKeys = QuantVFp8Shape::kKeys, kLanesPerRow = D / 8;
  constexpr int kRowsPerPass = ClusterQuantShape::kThreads / kLanesPerRow;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ uint4 staged_raw[];
  auto keys = reinterpret_cast<T(*)[D + 8]>(staged_raw);  // [tiles * kKeys][D + 8]
  __shared__ float partial[ClusterQuantShape::kThreads][8];
  __shared__ float cta_amax[D], inv_smem[D];

  const int k0 = int(cluster.block_rank()) * tiles * kKeys;
  const int64_t bh = int64_t(blockIdx.z) * p.heads + blockIdx.y;
  const T* v = v_rows<T>(p);
  const int lane_in_row = threadIdx.x % kLanesPerRow;

  float amax[8] = {};
  for (int r = threadIdx.x / kLanesPerRow; r < tiles * kKeys; r += kRowsPerPass) {
    const int key = k0 + r;
    const T* src = v + min(key, p.len - 1) * p.v_stride_n + lane_in_row * 8;
    ptx::cp_async_16(ptx::smem_addr(&keys[r][lane_in_row * 8]), src, key < p.len);
  }
  ptx::cp_async_commit();
  ptx::cp_async_wait<0>();
  for (int r = threadIdx.x / kLanesPerRow; r < tiles * kKeys; r += kRowsPerPass)
    merge_amax<T>(*reinterpret_cast<const uint4*>(&keys[r][lane_in_row * 8]), amax);
#pragma unroll
  for (int j = 0; j < 8; ++j) partial[threadIdx.x][j] = amax[j];
  __syncthreads();
  if (threadIdx.x < D)
    cta_amax[threadIdx.x] = reduce_channel<D, ClusterQuantShape::kThreads>(partial, [](float a, float b) { return fmaxf(a, b); });
  cluster.sync();
  if (threadIdx.x < D) {
    const float scale = e4m3_scale(cluster_reduce(cluster, cta_amax, threadIdx.x, [](float a, float b) { return fmaxf(a, b); }));
    inv_smem[threadIdx.x] = 1.0f / scale;
    if (cluster.block_rank() == 0) p.scale[bh * D + threadIdx.x] = scale;
  }
  __syncthreads();

  // kGroupTiles tiles at a time, one channel of one tile a thread; a tile's bytes go out
  // through a ByteTile in the place of its keys.
  using Bytes = ByteTile<D, kKeys>;
  static_assert(sizeof(Bytes) <= sizeof(KeyTile<T, D>), "a tile's bytes fit where its keys were");
  constexpr int kGroupTiles = ClusterQuantShape::kThreads / D;
  auto bytes = [&](int t) -> Bytes& { return *reinterpret_cast<Bytes*>(keys + t * kKeys); };
  const int my_tiles = min(tiles, (p.padded_len - k0) / kKeys);  // the last CTA may reach past the padding
  const int d = threadIdx.x % D;
  uint8_t* out = static_cast<uint8_t*>(p.out) + bh * D * p.padded_len + k0;
  for (int group = 0; group < my_tiles; group += kGroupTiles) {
    const int t = group + threadIdx.x / D;
    uint4 chunks[kKeys / 16];
    if (t < my_tiles) encode_channel<T, D>(keys + t * kKeys, d, inv_smem[d], chunks);
    __syncthreads();  // the group's keys are read
    if (t < my_tiles) bytes(t).put(d, 0, chunks);
    __syncthreads();
    for (int u = group; u < min(my_tiles, group + kGroupTiles); ++u)
      bytes(u).template write<ClusterQuantShape::kThreads>(out + u * kKeys, p.padded_len, threadIdx.x);
  }
  cluster.sync();  // cta_amax stays readable until every CTA of the cluster has read it
#endif
}

}  // namespace sage
