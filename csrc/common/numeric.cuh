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

// 2^a and 2^b as an f16x2 (2^a in the low half), two at a time on the FP16 FMA and ALU
// pipes: 9 instructions a pair, instead of two issues of MUFU (16 lanes a clock an SM), as
// FlashAttention-4 spreads exp2s over idle pipes.
// Precise enough for P rounded to e4m3 (3 mantissa bits, steps of 6-12%): the arguments
// rounded to fp16 (at most 2^-8 off up to 8.8) and a degree-2 minimax polynomial in the
// fraction (2.8e-3 relative, fp16 Horner) stay under 0.6%. Arguments must be at most 15;
// below -14 they are taken as -14 (2^-14 rounds to zero in e4m3, whose smallest
// subnormal is 2^-9).
__device__ __forceinline__ uint32_t exp2_f16x2_poly(float a, float b) {
  uint32_t h, t, n, f, p, r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(h) : "f"(b), "f"(a));
  asm("max.f16x2 %0, %1, %2;\n" : "=r"(h) : "r"(h), "r"(0xCB00CB00u));  // -14
  // 1536 + x rounds x to an integer k, exactly: its bits are 0x6600 + k (fp16's ulp is 1 there).
  asm("add.rn.f16x2 %0, %1, %2;\n" : "=r"(t) : "r"(h), "r"(0x66006600u));
  asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(n) : "r"(t), "r"(0x66006600u));
  asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(f) : "r"(h), "r"(n));  // x - k, in [-0.5, 0.5]
  // 2^f ~ 1 + f (0.70361 + 0.23840 f)
  asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(p) : "r"(f), "r"(0x33A133A1u), "r"(0x39A139A1u));
  asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(p) : "r"(f), "r"(p), "r"(0x3C003C00u));
  // 2^k as fp16: exponent field 15 + k, in 1 .. 30, so neither half borrows nor carries.
  const uint32_t two_k = (t - 0x65F165F1u) << 10;
  asm("mul.rn.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(p), "r"(two_k));
  return r;
}

}  // namespace sage
