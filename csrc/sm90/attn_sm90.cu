// Host side of the Hopper kernel. Built only when the arch list has sm_90a, and it
// registers its own op implementation, so builds without it simply lack the op.
#include <torch/library.h>

#include "attention/attn_launch.cuh"
#include "ops.h"
#include "sm90/attn_sm90.cuh"

namespace sage {

std::tuple<at::Tensor, at::Tensor> attn_sm90(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& q_scale,
                                             const at::Tensor& k_scale, const std::optional<at::Tensor>& v_scale,
                                             int64_t tensor_layout, at::ScalarType out_dtype,
                                             bool is_causal, bool return_lse) {
  const bool fp8 = v.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK(v.is_cuda() && (fp8 || v.scalar_type() == out_dtype),
              "v must be quant_v_fp8's e4m3 output or transpose_v's output in out_dtype, got ", v.scalar_type());
  TORCH_CHECK(out_dtype == at::kHalf || out_dtype == at::kBFloat16, "out_dtype must be float16 or bfloat16");
  TORCH_CHECK(fp8 == v_scale.has_value(), "v_scale is required with (and only with) an e4m3 v");
  TORCH_CHECK(v.dim() == 4 && v.is_contiguous(), "v must be a contiguous [B, Hkv, D, N_pad] tensor");
  const int64_t D = v.size(2), padded = v.size(3);
  AttnParams p = attn_common(q, k, q_scale, k_scale, D, is_causal);
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == k.size(1) && padded % 128 == 0 && padded >= k.size(2),
              "v must be [B, Hkv, D, N_pad] with N_pad a multiple of 128 covering the keys, got ", v.sizes());
  if (fp8) {
    check_cuda(*v_scale, "v_scale", at::kFloat);
    TORCH_CHECK(v_scale->sizes() == at::IntArrayRef({v.size(0), v.size(1), D}) && v_scale->is_contiguous(),
                "v_scale must be a contiguous [B, Hkv, D] tensor");
    p.v_scale = v_scale->data_ptr<float>();
  }
  const c10::cuda::CUDAGuard guard(q.device());
  const int cc = device_capability(q.get_device());
  TORCH_CHECK(cc == 90, "the Hopper kernel runs on sm_90 only; this GPU is sm_", cc);
  p.v = v.data_ptr();
  p.v_padded_len = int(padded);
  auto result = attn_outputs(p, q, tensor_layout, out_dtype, return_lse);
  if (q.size(0) == 0 || q.size(1) == 0 || q.size(2) == 0) return result;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_half_hd(out_dtype, D, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    auto go = [&](auto traits) {
      using Tr = decltype(traits);
      launch_attn<Tr>(sm90::attn_sm90_kernel<Tr>, p, int(q.size(0)), stream);
    };
    if (fp8)
      go(sm90::Sm90Traits<head_dim(), PV::kFp8, T>{});
    else
      go(sm90::Sm90Traits<head_dim(), PV::kFp16, T>{});
  });
  return result;
}

}  // namespace sage

TORCH_LIBRARY_IMPL(sageattention, CUDA, m) { m.impl("attn_sm90", &sage::attn_sm90); }
