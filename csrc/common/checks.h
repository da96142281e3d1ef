// Argument checks shared by the host launchers. Messages name the argument and what
// was expected, because they surface in Python as RuntimeError.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace sage {

// Layout codes of the `tensor_layout` argument: HND = [B, H, N, D], NHD = [B, N, H, D].
enum Layout : int64_t { kHND = 0, kNHD = 1 };

struct Bhnd {  // sizes and element strides of a 4-D tensor, read through its layout
  int64_t b, h, n, d;
  int64_t stride_b, stride_h, stride_n;
};

inline Bhnd bhnd(const at::Tensor& t, int64_t layout, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D, got ", t.dim(), "-D");
  TORCH_CHECK(layout == kHND || layout == kNHD, "tensor_layout must be 0 (HND) or 1 (NHD), got ", layout);
  TORCH_CHECK(t.stride(3) == 1, name, ": the head dimension must be contiguous");
  const int hd = layout == kHND ? 1 : 2, nd = layout == kHND ? 2 : 1;
  return {t.size(0), t.size(hd), t.size(nd), t.size(3), t.stride(0), t.stride(hd), t.stride(nd)};
}

inline void check_cuda(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

inline void check_half(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, name,
              " must be float16 or bfloat16, got ", t.scalar_type());
}

// 16-byte vector loads need 16-byte aligned rows.
inline bool rows_aligned16(const at::Tensor& t, const Bhnd& s) {
  const int64_t e = t.element_size();
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && (s.stride_b * e) % 16 == 0 &&
         (s.stride_h * e) % 16 == 0 && (s.stride_n * e) % 16 == 0;
}

template <class T>
struct TypeTag {
  using type = T;
};

// `t` itself when the kernels' 16-byte row loads can read it, else an aligned copy.
// (A contiguous view at an odd storage offset stays misaligned under .contiguous().)
inline at::Tensor aligned16(const at::Tensor& t, int64_t layout, const char* name) {
  return rows_aligned16(t, bhnd(t, layout, name)) ? t : t.clone(at::MemoryFormat::Contiguous);
}

}  // namespace sage
