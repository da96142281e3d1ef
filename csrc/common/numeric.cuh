// Element types of the 16-bit inputs and the conversions the kernels need.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace sage {

template <typename T>
struct Half2;
template <>
struct Half2<__half> {
  using type = __half2;
  static constexpr bool kBf16 = false;
  __device__ static __half2 from_floats(float lo, float hi) { return __floats2half2_rn(lo, hi); }
  __device__ static float2 to_floats(__half2 v) { return __half22float2(v); }
};
template <>
struct Half2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static constexpr bool kBf16 = true;
  __device__ static __nv_bfloat162 from_floats(float lo, float hi) {
    return __floats2bfloat162_rn(lo, hi);
  }
  __device__ static float2 to_floats(__nv_bfloat162 v) { return __bfloat1622float2(v); }
};

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  auto v = Half2<T>::from_floats(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Exact int32 -> float for |x| < 2^22 with one integer add: x + 0x4B400000 read as a
// float is 1.5 * 2^23 + x. The caller folds the -1.5 * 2^23 into its next FMA. This
// keeps the conversion on the full-rate pipes instead of the quarter-rate I2F.
constexpr float kMagicBias = 12582912.0f;  // 1.5 * 2^23
__device__ __forceinline__ float biased_int_to_float(int32_t x) {
  return __int_as_float(x + 0x4B400000);
}

// 2^x on the FMA and ALU pipes, for x in [-126, 128) (less is taken as -126): 2^floor(x)
// times a cubic in the fraction, relative error below 9e-5 (e4m3 and fp16 keep 2^-4 and
// 2^-11). The exp2 unit (MUFU) takes 16 lanes a clock an SM: replacing some of a
// softmax's exp2s by this spreads them over idle pipes, as FlashAttention-4 does.
__device__ __forceinline__ float exp2_poly3(float x) {
  x = fmaxf(x, -126.0f);
  const float t = __fadd_rd(x, kMagicBias);  // 1.5 * 2^23 + floor(x), exactly
  const float f = x - (t - kMagicBias);      // [0, 1)
  const float p = fmaf(fmaf(fmaf(0.0770703927f, f, 0.227647409f), f, 0.695113242f), f, 1.0f);
  // t's bits are 0x4B400000 + floor(x); shifted into the exponent field the constant falls off.
  return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

}  // namespace sage
