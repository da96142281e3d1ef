// Host launchers of the quantization kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/dispatch.cuh"
#include "ops.h"
#include "quant/quant_int8.cuh"
#include "quant/quant_v_fp8.cuh"

namespace sage {
namespace {

bool is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> quant_int8(const at::Tensor& x_in, const std::optional<at::Tensor>& mean,
                                              int64_t tensor_layout, int64_t group_block,
                                              int64_t group_stride, double scale_mult) {
  check_half(x_in, "x");
  const at::Tensor x = aligned16(x_in, tensor_layout, "x");
  const Bhnd s = bhnd(x, tensor_layout, "x");
  TORCH_CHECK(is_pow2(group_block) && group_block <= QuantInt8Shape::kChunkRows,
              "group_block must be a power of two <= ", QuantInt8Shape::kChunkRows, ", got ", group_block);
  TORCH_CHECK(is_pow2(group_stride) && group_stride <= group_block,
              "group_stride must be a power of two <= group_block, got ", group_stride);
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

  QuantInt8Params p{x.data_ptr(), s.stride_b, s.stride_h, s.stride_n,
                    mean_c.defined() ? mean_c.data_ptr<float>() : nullptr,
                    out.data_ptr<int8_t>(), scale.data_ptr<float>(),
                    int(s.h), int(s.n), int(group_block), int(group_stride), float(scale_mult)};
  const dim3 grid((s.n + QuantInt8Shape::kChunkRows - 1) / QuantInt8Shape::kChunkRows, s.h, s.b);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_half_hd(x.scalar_type(), s.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    quant_int8_kernel<T, head_dim()><<<grid, QuantInt8Shape::kThreads, 0, stream>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, scale};
}

std::tuple<at::Tensor, at::Tensor> quant_v_fp8(const at::Tensor& v_in, int64_t tensor_layout) {
  check_half(v_in, "v");
  const at::Tensor v = aligned16(v_in, tensor_layout, "v");
  const Bhnd s = bhnd(v, tensor_layout, "v");
  const c10::cuda::CUDAGuard guard(v.device());
  // 128: a multiple of every key block size of the attention kernels.
  const int64_t padded = (s.n + 127) / 128 * 128;
  at::Tensor out = at::empty({s.b, s.h, s.d, padded}, v.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor amax = at::zeros({s.b, s.h, s.d}, v.options().dtype(at::kFloat));
  at::Tensor scale = at::empty({s.b, s.h, s.d}, v.options().dtype(at::kFloat));
  if (s.b == 0 || s.h == 0) return {out, scale};

  QuantVFp8Params p{v.data_ptr(), s.stride_b, s.stride_h, s.stride_n,
                    amax.data_ptr<float>(), scale.data_ptr<float>(),
                    out.data_ptr(), int(s.h), int(s.n), int(padded)};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int amax_blocks = std::max<int64_t>(1, (s.n + QuantVFp8Shape::kAmaxRows - 1) / QuantVFp8Shape::kAmaxRows);
  dispatch_half_hd(v.scalar_type(), s.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    constexpr int D = head_dim();
    v_amax_kernel<T, D><<<dim3(amax_blocks, s.h, s.b), QuantVFp8Shape::kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    v_fp8_kernel<T, D><<<dim3(padded / QuantVFp8Shape::kKeys, s.h, s.b), QuantVFp8Shape::kThreads, 0,
                         stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, scale};
}

}  // namespace sage
