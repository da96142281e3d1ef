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

}  // namespace sage
