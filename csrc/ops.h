// Host entry points of the CUDA ops. Schemas, CPU and fake implementations live in
// sageattention/_ops.py; ops.cpp registers these as the CUDA implementations.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace sage {

// -> (x_int8 [B, H, N, D], scale [B, H, N]); see quant/quant_int8.cuh.
std::tuple<at::Tensor, at::Tensor> quant_int8(const at::Tensor& x, const std::optional<at::Tensor>& mean,
                                              int64_t tensor_layout, int64_t group_block,
                                              int64_t group_stride, double scale_mult);

// quant_int8 of x minus its mean over a sample of its tokens -> (x_int8, scale, mean
// [B, H, D] fp32); one read of x (quant/token_sample.cuh).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quant_int8_smooth(const at::Tensor& x, int64_t tensor_layout,
                                                                 int64_t group_block, int64_t group_stride);

// x's fp32 mean over its token sample [B, H, D] (quant_int8_smooth's mean; not an op).
at::Tensor sample_mean(const at::Tensor& x, int64_t tensor_layout);

// -> (v_fp8 [B, H, D, N_pad], v_scale [B, H, D]); see quant/quant_v_fp8.cuh.
std::tuple<at::Tensor, at::Tensor> quant_v_fp8(const at::Tensor& v, int64_t tensor_layout);

// -> (out in tensor_layout, lse [B, Hq, Nq] or [0]); see attention/attn_kernel.cuh.
std::tuple<at::Tensor, at::Tensor> attn_fp16pv(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const at::Tensor& q_scale,
                                               const at::Tensor& k_scale, int64_t tensor_layout,
                                               bool is_causal, bool return_lse);

std::tuple<at::Tensor, at::Tensor> attn_fp8pv(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& q_scale,
                                              const at::Tensor& k_scale, const at::Tensor& v_scale,
                                              int64_t tensor_layout, at::ScalarType out_dtype,
                                              bool is_causal, bool return_lse);

// Hopper kernel: q is 16-bit in tensor_layout, quantized inside the kernel by
// quant_int8's group rule; v is V itself (16-bit, tensor_layout) or quant_v_fp8's output
// (e4m3, with v_scale). Registered from sm90/attn_sm90.cu, which is built only for sm_90a.
std::tuple<at::Tensor, at::Tensor> attn_sm90(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const at::Tensor& k_scale, const std::optional<at::Tensor>& v_scale,
                                             int64_t tensor_layout, int64_t q_group_block, int64_t q_group_stride,
                                             double q_scale_mult, bool is_causal, bool return_lse);

// The Hopper e4m3 path from 16-bit q, k and v (tensor_layout): K to INT8 (K's groups of 64 keys,
// group stride 1 or 8; smoothed by its sample mean if smooth_k), V to e4m3, attention -> (out,
// lse, k_mean [B, Hkv, D] fp32, or [0] without smooth_k); see sm90/attn_sm90.cu.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_sm90_fp8(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, int64_t tensor_layout,
                                                             int64_t k_group_stride, bool smooth_k,
                                                             int64_t q_group_block, int64_t q_group_stride,
                                                             double q_scale_mult, bool is_causal, bool return_lse);

}  // namespace sage
