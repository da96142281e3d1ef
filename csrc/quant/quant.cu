// Host launchers of the quantization kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <tuple>

#include "common/checks.h"
#include "common/dispatch.cuh"
#include "common/launch.cuh"
#include "ops.h"
#include "quant/quant_int8.cuh"
#include "quant/quant_v_fp8.cuh"

namespace sage {
namespace {

bool is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

// Checks shared by quant_int8 and quant_int8_smooth.
void check_groups(int64_t group_block, int64_t group_stride) {
  TORCH_CHECK(is_pow2(group_block) && group_block <= QuantInt8Shape::kChunkRows,
              "group_block must be a power of two <= ", QuantInt8Shape::kChunkRows, ", got ", group_block);
  TORCH_CHECK(is_pow2(group_stride) && group_stride <= group_block,
              "group_stride must be a power of two <= group_block, got ", group_stride);
}

// What every kernel of quant_int8.cuh reads of its input: x, its strides, the head count.
QuantInt8Params input_params(const at::Tensor& x, const Bhnd& s) {
  QuantInt8Params p{};
  p.x = x.data_ptr();
  p.x_stride_b = s.stride_b;
  p.x_stride_h = s.stride_h;
  p.x_stride_n = s.stride_n;
  p.heads = int(s.h);
  return p;
}

QuantInt8Params int8_params(const at::Tensor& x, const Bhnd& s, const at::Tensor& out, const at::Tensor& scale,
                            int64_t group_block, int64_t group_stride, double scale_mult) {
  QuantInt8Params p = input_params(x, s);
  p.out = out.data_ptr<int8_t>();
  p.scale = scale.data_ptr<float>();
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
    launch_after(quant_int8_kernel<T, head_dim()>, grid, QuantInt8Shape::kThreads, 0, stream, p);
  });
}

// sample_mean_kernel: x's fp32 mean over its token sample into mean [B, H, D].
void launch_sample_mean(const at::Tensor& x, const Bhnd& s, float* mean, cudaStream_t stream) {
  const QuantInt8Params p = input_params(x, s);
  dispatch_half_hd(x.scalar_type(), s.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    launch_after(sample_mean_kernel<T, head_dim()>, dim3(s.h, s.b), token_sample::SampleTile<T, head_dim()>::kThreads,
                 0, stream, p, token_sample::draw(int(s.n)), mean);
  });
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
  launch_sample_mean(x, s, mean.data_ptr<float>(), stream);
  p.mean = mean.data_ptr<float>();
  launch_quant_int8(p, x.scalar_type(), s, stream);
  return {out, scale, mean};
}

at::Tensor sample_mean(const at::Tensor& x_in, int64_t tensor_layout) {
  check_half(x_in, "x");
  const at::Tensor x = aligned16(x_in, tensor_layout, "x");
  const Bhnd s = bhnd(x, tensor_layout, "x");
  TORCH_CHECK(s.n > 0, "x must hold at least one token (its mean over tokens is taken)");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor mean = at::empty({s.b, s.h, s.d}, x.options().dtype(at::kFloat));
  if (s.b == 0 || s.h == 0) return mean;
  launch_sample_mean(x, s, mean.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  return mean;
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
  if (s.n == 0) return {out, scale.fill_(1.0f)};  // no value: quant_v_fp8's scale of an all-zero channel

  // The e4m3 pass's working state (quant_v_fp8.cuh): each channel's limit and overflow.
  at::Tensor state = at::empty({2, s.b, s.h, s.d}, v.options().dtype(at::kFloat));
  const QuantVFp8Params p{v.data_ptr(), s.stride_b, s.stride_h, s.stride_n, state[0].data_ptr<float>(),
                          state[1].data_ptr<float>(), scale.data_ptr<float>(), out.data_ptr(), int(s.h), int(s.n),
                          int(padded)};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_half_hd(v.scalar_type(), s.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    constexpr int D = head_dim();
    launch_after(sample_limit_kernel<T, D>, dim3(s.h, s.b), token_sample::SampleTile<T, D>::kThreads, 0, stream, p,
                 token_sample::draw(int(s.n)));
    launch_after(v_fp8_kernel<T, D>, dim3(padded / QuantVFp8Shape::kKeys, s.h, s.b), QuantVFp8Shape::kThreads, 0,
                 stream, p);
    launch_after(v_fp8_repair_kernel<T, D>, dim3(s.h, s.b), QuantVFp8Shape::kThreads, 0, stream, p);
  });
  return {out, scale};
}

}  // namespace sage
