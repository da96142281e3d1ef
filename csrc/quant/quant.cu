// Host launchers of the quantization kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "common/dispatch.cuh"
#include "ops.h"
#include "quant/quant_cluster.cuh"
#include "quant/quant_int8.cuh"
#include "quant/quant_v_fp8.cuh"

namespace sage {
namespace {

bool is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

// A CTA stages at most this much, so that three share an SM and one's loads overlap
// another's stores (see quant_cluster.cuh for what larger shares measured).
constexpr size_t kClusterStageBytes = 72 * 1024;

// A launch of one cluster per (head, batch), each CTA staging `units` units (chunks of K
// rows, tiles of V keys).
struct ClusterLaunch {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute cluster{};
  int units = 0;

  template <class Params>
  void operator()(void (*kernel)(const Params, int), const Params& p) {
    config.attrs = &cluster;  // (this object may have been copied since it was made)
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p, units));
  }
};

// Whether `kernel` can run with `config` (one cluster of gridDim.x CTAs per head) on the
// current device: it needs sm_90 machine code (its body is empty otherwise: the check is
// on the code loaded for this GPU) and a GPC that fits such a cluster. The answer is kept
// per (kernel, device, shared memory, CTAs): asked on every call, the driver queries cost
// 1.3 us of the 10-12 us a CPU-bound call of either op took on H200 (B=1 H=1 hd128). The
// kernel's dynamic shared memory limit is raised to kClusterStageBytes on first use.
template <class Params>
bool cluster_fits(void (*kernel)(const Params, int), const cudaLaunchConfig_t& config) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t, unsigned>, bool> known;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key =
      std::make_tuple(reinterpret_cast<const void*>(kernel), device, config.dynamicSmemBytes, config.gridDim.x);
  if (auto it = known.find(key); it != known.end()) return it->second;
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int clusters = 0;
  if (attr.binaryVersion >= 90) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kClusterStageBytes)));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
  }
  return known[key] = clusters > 0;
}

// The cluster launch covering `rows` rows of each of `s`'s heads in units of `unit_rows`
// rows and `unit_bytes` bytes, or none where a CTA's share exceeds kClusterStageBytes or
// the GPU cannot run such clusters (cluster_fits).
template <class Params>
std::optional<ClusterLaunch> cluster_launch(void (*kernel)(const Params, int), int64_t rows, const Bhnd& s,
                                            int unit_rows, size_t unit_bytes, cudaStream_t stream) {
  if (rows == 0) return std::nullopt;
  const int64_t units = (rows + unit_rows - 1) / unit_rows;
  const int64_t per_cta = (units + ClusterQuantShape::kMaxCtas - 1) / ClusterQuantShape::kMaxCtas;
  if (size_t(per_cta) * unit_bytes > kClusterStageBytes) return std::nullopt;
  ClusterLaunch launch;
  launch.units = int(per_cta);
  const int ctas = int((units + per_cta - 1) / per_cta);
  launch.config.gridDim = dim3(ctas, s.h, s.b);
  launch.config.blockDim = dim3(ClusterQuantShape::kThreads);
  launch.config.dynamicSmemBytes = size_t(per_cta) * unit_bytes;
  launch.config.stream = stream;
  launch.cluster.id = cudaLaunchAttributeClusterDimension;
  launch.cluster.val.clusterDim.x = ctas;
  launch.cluster.val.clusterDim.y = launch.cluster.val.clusterDim.z = 1;
  launch.config.attrs = &launch.cluster;
  launch.config.numAttrs = 1;
  if (!cluster_fits(kernel, launch.config)) return std::nullopt;
  return launch;
}

// Checks shared by quant_int8 and quant_int8_smooth.
void check_groups(int64_t group_block, int64_t group_stride) {
  TORCH_CHECK(is_pow2(group_block) && group_block <= QuantInt8Shape::kChunkRows,
              "group_block must be a power of two <= ", QuantInt8Shape::kChunkRows, ", got ", group_block);
  TORCH_CHECK(is_pow2(group_stride) && group_stride <= group_block,
              "group_stride must be a power of two <= group_block, got ", group_stride);
}

QuantInt8Params int8_params(const at::Tensor& x, const Bhnd& s, const at::Tensor& out, const at::Tensor& scale,
                            int64_t group_block, int64_t group_stride, double scale_mult) {
  QuantInt8Params p{};
  p.x = x.data_ptr();
  p.x_stride_b = s.stride_b;
  p.x_stride_h = s.stride_h;
  p.x_stride_n = s.stride_n;
  p.out = out.data_ptr<int8_t>();
  p.scale = scale.data_ptr<float>();
  p.heads = int(s.h);
  p.len = int(s.n);
  p.group_block = int(group_block);
  p.group_stride = int(group_stride);
  p.scale_mult = float(scale_mult);
  return p;
}

void launch_quant_int8(const QuantInt8Params& p, at::ScalarType dtype, const Bhnd& s, cudaStream_t stream) {
  const dim3 grid((s.n + QuantInt8Shape::kChunkRows - 1) / QuantInt8Shape::kChunkRows, s.h, s.b);
  dispatch_half_hd(dtype, s.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    quant_int8_kernel<T, head_dim()><<<grid, QuantInt8Shape::kThreads, 0, stream>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quant_int8(const at::Tensor& x_in, const std::optional<at::Tensor>& mean,
                                              int64_t tensor_layout, int64_t group_block,
                                              int64_t group_stride, double scale_mult) {
  check_half(x_in, "x");
  const at::Tensor x = aligned16(x_in, tensor_layout, "x");
  const Bhnd s = bhnd(x, tensor_layout, "x");
  check_groups(group_block, group_stride);
  TORCH_CHECK(scale_mult > 0, "scale_mult must be positive, got ", scale_mult);
  const c10::cuda::CUDAGuard guard(x.device());

  at::Tensor out = at::empty({s.b, s.h, s.n, s.d}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({s.b, s.h, s.n}, x.options().dtype(at::kFloat));
  at::Tensor mean_c;
  if (mean.has_value()) {
    check_cuda(*mean, "mean", at::kFloat);
    TORCH_CHECK(mean->sizes() == at::IntArrayRef({s.b, s.h, s.d}), "mean must have shape [B, H, D] = [",
                s.b, ", ", s.h, ", ", s.d, "], got ", mean->sizes());
    mean_c = mean->contiguous();
  }
  if (s.n == 0 || s.b == 0 || s.h == 0) return {out, scale};

  QuantInt8Params p = int8_params(x, s, out, scale, group_block, group_stride, scale_mult);
  p.mean = mean_c.defined() ? mean_c.data_ptr<float>() : nullptr;
  launch_quant_int8(p, x.scalar_type(), s, c10::cuda::getCurrentCUDAStream());
  return {out, scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quant_int8_smooth(const at::Tensor& x_in, int64_t tensor_layout,
                                                                 int64_t group_block, int64_t group_stride) {
  check_half(x_in, "x");
  const at::Tensor x = aligned16(x_in, tensor_layout, "x");
  const Bhnd s = bhnd(x, tensor_layout, "x");
  check_groups(group_block, group_stride);
  TORCH_CHECK(s.n > 0, "x must hold at least one token (its mean over tokens is taken)");
  const c10::cuda::CUDAGuard guard(x.device());

  at::Tensor out = at::empty({s.b, s.h, s.n, s.d}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({s.b, s.h, s.n}, x.options().dtype(at::kFloat));
  at::Tensor mean = at::empty({s.b, s.h, s.d}, x.options().dtype(at::kFloat));
  if (s.b == 0 || s.h == 0) return {out, scale, mean};
  QuantInt8Params p = int8_params(x, s, out, scale, group_block, group_stride, 1.0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_half_hd(x.scalar_type(), s.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    using Chunk = StagedChunk<T, head_dim()>;
    auto* kernel = quant_int8_smooth_cluster_kernel<T, head_dim()>;
    const size_t chunk_bytes = Chunk::kSlots * sizeof(uint4) + QuantInt8Shape::kChunkRows * sizeof(float);
    if (auto launch = cluster_launch(kernel, s.n, s, QuantInt8Shape::kChunkRows, chunk_bytes, stream)) {
      p.mean_out = mean.data_ptr<float>();
      (*launch)(kernel, p);
      return;
    }
    // Two passes: torch's mean (written in place), then quant_int8's kernel.
    at::mean_out(mean, x, {tensor_layout == kHND ? 2 : 1}, /*keepdim=*/false, at::kFloat);
    p.mean = mean.data_ptr<float>();
    launch_quant_int8(p, x.scalar_type(), s, stream);
  });
  return {out, scale, mean};
}

std::tuple<at::Tensor, at::Tensor> quant_v_fp8(const at::Tensor& v_in, int64_t tensor_layout) {
  check_half(v_in, "v");
  const at::Tensor v = aligned16(v_in, tensor_layout, "v");
  const Bhnd s = bhnd(v, tensor_layout, "v");
  const c10::cuda::CUDAGuard guard(v.device());
  // 128: a multiple of every key block size of the attention kernels (and of the e4m3 pass's CTA).
  const int64_t padded = (s.n + 127) / 128 * 128;
  at::Tensor out = at::empty({s.b, s.h, s.d, padded}, v.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor scale = at::empty({s.b, s.h, s.d}, v.options().dtype(at::kFloat));
  if (s.b == 0 || s.h == 0) return {out, scale};

  QuantVFp8Params p{v.data_ptr(), s.stride_b, s.stride_h, s.stride_n, nullptr, scale.data_ptr<float>(),
                    out.data_ptr(), int(s.h), int(s.n), int(padded)};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_half_hd(v.scalar_type(), s.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    constexpr int D = head_dim();
    auto* cluster_kernel = quant_v_fp8_cluster_kernel<T, D>;
    constexpr size_t kTileBytes = sizeof(KeyTile<T, D>);
    if (auto launch = cluster_launch(cluster_kernel, padded, s, QuantVFp8Shape::kKeys, kTileBytes, stream)) {
      (*launch)(cluster_kernel, p);
      return;
    }
    const at::Tensor amax = at::zeros({s.b, s.h, s.d}, v.options().dtype(at::kFloat));  // pass 1's
    p.amax = amax.data_ptr<float>();
    const int amax_blocks = std::max<int64_t>(1, (s.n + QuantVFp8Shape::kAmaxRows - 1) / QuantVFp8Shape::kAmaxRows);
    v_amax_kernel<T, D><<<dim3(amax_blocks, s.h, s.b), QuantVFp8Shape::kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    v_fp8_kernel<T, D><<<dim3(padded / QuantVFp8Shape::kPassKeys, s.h, s.b), QuantVFp8Shape::kPassThreads, 0,
                         stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, scale};
}

}  // namespace sage
