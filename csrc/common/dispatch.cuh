// Runtime (dtype, head dim) -> compile-time kernel template arguments.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "common/checks.h"

namespace sage {

// fp16 or bf16 (callers have checked it is one of them) -> f(TypeTag<T>).
template <class F>
void dispatch_half(at::ScalarType dtype, F&& f) {
  if (dtype == at::kBFloat16)
    f(TypeTag<__nv_bfloat16>{});
  else
    f(TypeTag<__half>{});
}

template <class F>
void dispatch_half_hd(at::ScalarType dtype, int64_t head_dim, F&& f) {
  TORCH_CHECK(head_dim == 64 || head_dim == 128, "head_dim must be 64 or 128, got ", head_dim);
  dispatch_half(dtype, [&](auto elem) {
    if (head_dim == 64)
      f(elem, std::integral_constant<int, 64>{});
    else
      f(elem, std::integral_constant<int, 128>{});
  });
}

}  // namespace sage
