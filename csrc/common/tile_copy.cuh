// Global -> shared tile copies with cp.async into the swizzled layouts of smem_layout.cuh.
#pragma once
#include <cstdint>

#include "common/ptx.cuh"

namespace sage {

// Copies a kRows-row tile from global memory (rows `row_stride` bytes apart) into a
// swizzled shared tile with cp.async, 16 bytes a thread per step. Rows at and past
// `valid_rows` are zero-filled. The source pointer advances by addition and the
// destination by a constant, so no per-chunk address stays live in a register.
template <class Tile, int kRows, int kThreads>
__device__ __forceinline__ void load_tile(uint8_t* smem, const uint8_t* src, int64_t row_stride,
                                          int valid_rows) {
  static_assert(kThreads % Tile::kChunks == 0, "whole rows per step");
  constexpr int kRowsPerStep = kThreads / Tile::kChunks;
  static_assert(kRows % kRowsPerStep == 0 && kRowsPerStep % 8 == 0, "swizzle-aligned steps");
  const int row = threadIdx.x / Tile::kChunks, chunk = threadIdx.x % Tile::kChunks;
  const uint32_t dst = ptx::smem_addr(smem) + Tile::offset(row, chunk);
  const uint8_t* from = src + row * row_stride + chunk * 16;
#pragma unroll
  for (int step = 0; step < kRows / kRowsPerStep; ++step) {
    const bool valid = row + step * kRowsPerStep < valid_rows;
    ptx::cp_async_16(dst + step * kRowsPerStep * Tile::kRowBytes, valid ? from : src, valid);
    from += kRowsPerStep * row_stride;
  }
}

}  // namespace sage
