// INT8 Q·K^T, e4m3 P·V with fp32 accumulation (sm_89 and newer).
#include "attention/attn_launch.cuh"
#include "ops.h"

namespace sage {

std::tuple<at::Tensor, at::Tensor> attn_fp8pv(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& q_scale,
                                              const at::Tensor& k_scale, const at::Tensor& v_scale,
                                              int64_t tensor_layout, at::ScalarType out_dtype,
                                              bool is_causal, bool return_lse) {
  check_cuda(v, "v", at::kFloat8_e4m3fn);
  check_cuda(v_scale, "v_scale", at::kFloat);
  TORCH_CHECK(out_dtype == at::kHalf || out_dtype == at::kBFloat16, "out_dtype must be float16 or bfloat16");
  TORCH_CHECK(v.dim() == 4 && v.is_contiguous(), "v must be the contiguous [B, Hkv, D, N_pad] output of quant_v_fp8");
  const int64_t D = v.size(2), padded = v.size(3);
  AttnParams p = attn_common(q, k, q_scale, k_scale, D, is_causal);
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == k.size(1) && padded % 128 == 0 && padded >= k.size(2),
              "v must be [B, Hkv, D, N_pad] with N_pad a multiple of 128 covering the keys, got ", v.sizes());
  TORCH_CHECK(v_scale.sizes() == at::IntArrayRef({v.size(0), v.size(1), D}) && v_scale.is_contiguous(),
              "v_scale must be a contiguous [B, Hkv, D] tensor");
  const c10::cuda::CUDAGuard guard(q.device());
  const int cc = device_capability(q.get_device());
  TORCH_CHECK(cc >= 89, "the fp8 P·V kernel needs sm_89 or newer; this GPU is sm_", cc);
  p.v = v.data_ptr();
  p.v_scale = v_scale.data_ptr<float>();
  p.v_padded_len = int(padded);
  auto result = attn_outputs(p, bhnd(q, kHND, "q"), q.options(), tensor_layout, out_dtype, return_lse);
  if (q.size(0) == 0 || q.size(1) == 0 || q.size(2) == 0) return result;
  dispatch_half_hd(out_dtype, D, [&](auto elem, auto head_dim) {
    using Tr = AttnTraits<head_dim(), PV::kFp8, typename decltype(elem)::type>;
    launch_attn<Tr>(attn_kernel<Tr>, p, int(q.size(0)), c10::cuda::getCurrentCUDAStream());
  });
  return result;
}

}  // namespace sage
