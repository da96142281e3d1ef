// Runtime (dtype, head dim) -> compile-time kernel template arguments.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "common/checks.h"

namespace sage {

template <class F>
void dispatch_half_hd(at::ScalarType dtype, int64_t head_dim, F&& f) {
  TORCH_CHECK(head_dim == 64 || head_dim == 128, "head_dim must be 64 or 128, got ", head_dim);
  auto with_hd = [&](auto elem) {
    if (head_dim == 64)
      f(elem, std::integral_constant<int, 64>{});
    else
      f(elem, std::integral_constant<int, 128>{});
  };
  if (dtype == at::kBFloat16)
    with_hd(TypeTag<__nv_bfloat16>{});
  else
    with_hd(TypeTag<__half>{});
}

}  // namespace sage
