// Host side of the attention kernels: argument checks, output allocation, launch.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "attention/attn_kernel.cuh"
#include "common/checks.h"
#include "common/dispatch.cuh"
#include "common/launch.cuh"

namespace sage {

// Launches `kernel` with Tr's CTA size and shared memory over `grid`, after the stream's
// previous kernel (launch_after).
template <class Tr, class Params>
void launch_kernel(void (*kernel)(const Params), const Params& p, dim3 grid, cudaStream_t stream) {
  // Per device (the current one); a cheap driver call, as in FlashAttention.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  launch_after(kernel, grid, Tr::kThreads, Tr::kSmemBytes, stream, p);
}

// The mma.sync kernels: one CTA per (query block, q head, batch), see CtaCoord.
template <class Tr>
void launch_attn(void (*kernel)(const AttnParams), const AttnParams& p, int batch, cudaStream_t stream) {
  launch_kernel<Tr>(kernel, p, dim3((p.q_len + Tr::kCtaQ - 1) / Tr::kCtaQ, p.q_heads, batch), stream);
}

// Checks of K, its scales and their agreement with Q's sizes `qs`; fills everything in
// AttnParams but Q and V.
inline AttnParams attn_keys(const Bhnd& qs, const at::Tensor& k, const at::Tensor& k_scale,
                            int64_t head_dim_v, bool is_causal) {
  check_cuda(k, "k", at::kChar);
  check_cuda(k_scale, "k_scale", at::kFloat);
  TORCH_CHECK(k.dim() == 4 && k.is_contiguous(), "k must be a contiguous [B, Hkv, Nk, D] int8 tensor");
  const int64_t Hkv = k.size(1), Nk = k.size(2);
  TORCH_CHECK(k.size(0) == qs.b && k.size(3) == qs.d, "k must be [", qs.b, ", Hkv, Nk, ", qs.d, "], got ", k.sizes());
  TORCH_CHECK(qs.d == head_dim_v, "q/k head dim ", qs.d, " != v head dim ", head_dim_v);
  TORCH_CHECK(Hkv > 0 && qs.h % Hkv == 0, "q heads (", qs.h, ") must be a multiple of kv heads (", Hkv, ")");
  TORCH_CHECK(Nk > 0, "k must hold at least one key");
  TORCH_CHECK(k_scale.sizes() == at::IntArrayRef({qs.b, Hkv, Nk}) && k_scale.is_contiguous(),
              "k_scale must be a contiguous [B, Hkv, Nk] tensor, got ", k_scale.sizes());
  TORCH_CHECK(qs.n < (1 << 30) && Nk < (1 << 30), "sequence too long");
  AttnParams p{};
  p.k = k.data_ptr<int8_t>();
  p.k_scale = k_scale.data_ptr<float>();
  p.q_heads = int(qs.h);
  p.kv_heads = int(Hkv);
  p.q_len = int(qs.n);
  p.kv_len = int(Nk);
  p.causal = is_causal;
  return p;
}

// attn_keys plus the checks of an int8 Q and its scales (the mma.sync kernels).
inline AttnParams attn_common(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_scale,
                              const at::Tensor& k_scale, int64_t head_dim_v, bool is_causal) {
  check_cuda(q, "q", at::kChar);
  check_cuda(q_scale, "q_scale", at::kFloat);
  TORCH_CHECK(q.dim() == 4 && q.is_contiguous(), "q must be a contiguous [B, Hq, Nq, D] int8 tensor");
  AttnParams p = attn_keys(bhnd(q, kHND, "q"), k, k_scale, head_dim_v, is_causal);
  TORCH_CHECK(q_scale.sizes() == at::IntArrayRef({q.size(0), q.size(1), q.size(2)}) && q_scale.is_contiguous(),
              "q_scale must be a contiguous [B, Hq, Nq] tensor, got ", q_scale.sizes());
  p.q = q.data_ptr<int8_t>();
  p.q_scale = q_scale.data_ptr<float>();
  return p;
}

// Output in the caller's layout, and the LSE buffer (or an empty tensor).
inline std::tuple<at::Tensor, at::Tensor> attn_outputs(AttnParams& p, const Bhnd& qs, const at::TensorOptions& like,
                                                       int64_t layout, at::ScalarType dtype, bool return_lse) {
  const auto opts = like.dtype(dtype);
  at::Tensor out = layout == kHND ? at::empty({qs.b, qs.h, qs.n, qs.d}, opts) : at::empty({qs.b, qs.n, qs.h, qs.d}, opts);
  const Bhnd o = bhnd(out, layout, "out");
  p.out = out.data_ptr();
  p.o_stride_b = o.stride_b;
  p.o_stride_h = o.stride_h;
  p.o_stride_n = o.stride_n;
  at::Tensor lse = return_lse ? at::empty({qs.b, qs.h, qs.n}, like.dtype(at::kFloat))
                              : at::empty({0}, like.dtype(at::kFloat));
  p.lse = return_lse ? lse.data_ptr<float>() : nullptr;
  return {out, lse};
}

// A device attribute, read once per (attribute, device).
template <cudaDeviceAttr kAttr>
inline int device_attribute(int device) {
  static std::optional<int> cache[64];
  TORCH_CHECK(device >= 0 && device < 64, "device index out of range: ", device);
  if (!cache[device]) {
    int value = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, device));
    cache[device] = value;
  }
  return *cache[device];
}

// Compute capability as major * 10 + minor.
inline int device_capability(int device) {
  return device_attribute<cudaDevAttrComputeCapabilityMajor>(device) * 10 +
         device_attribute<cudaDevAttrComputeCapabilityMinor>(device);
}

inline int sm_count(int device) { return device_attribute<cudaDevAttrMultiProcessorCount>(device); }

}  // namespace sage
