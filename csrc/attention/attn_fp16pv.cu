// INT8 Q·K^T, fp16/bf16 P·V with fp32 accumulation (sm_80 and newer).
#include "attention/attn_launch.cuh"
#include "ops.h"

namespace sage {

std::tuple<at::Tensor, at::Tensor> attn_fp16pv(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v_in, const at::Tensor& q_scale,
                                               const at::Tensor& k_scale, int64_t tensor_layout,
                                               bool is_causal, bool return_lse) {
  check_half(v_in, "v");
  const at::Tensor v = aligned16(v_in, tensor_layout, "v");
  const Bhnd vs = bhnd(v, tensor_layout, "v");
  AttnParams p = attn_common(q, k, q_scale, k_scale, vs.d, is_causal);
  TORCH_CHECK(vs.b == q.size(0) && vs.h == k.size(1) && vs.n == k.size(2),
              "v must match k: batch ", k.size(0), ", heads ", k.size(1), ", keys ", k.size(2));
  const c10::cuda::CUDAGuard guard(q.device());
  p.v = v.data_ptr();
  p.v_stride_b = vs.stride_b;
  p.v_stride_h = vs.stride_h;
  p.v_stride_n = vs.stride_n;
  auto result = attn_outputs(p, bhnd(q, kHND, "q"), q.options(), tensor_layout, v.scalar_type(), return_lse);
  if (q.size(0) == 0 || q.size(1) == 0 || q.size(2) == 0) return result;
  dispatch_half_hd(v.scalar_type(), vs.d, [&](auto elem, auto head_dim) {
    using Tr = AttnTraits<head_dim(), PV::kFp16, typename decltype(elem)::type>;
    launch_attn<Tr>(attn_kernel<Tr>, p, int(q.size(0)), c10::cuda::getCurrentCUDAStream());
  });
  return result;
}

}  // namespace sage
