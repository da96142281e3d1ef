// Shared-memory tiles are row-major arrays of 16-byte chunks. Eight consecutive rows
// read through ldmatrix touch the same logical chunk, so chunks are XOR-swizzled with
// the row index: the eight rows land in eight different 16-byte bank groups.
#pragma once
#include <cstdint>

namespace sage {

template <int kRowBytes_>
struct SwizzledTile {
  static constexpr int kRowBytes = kRowBytes_;
  static_assert(kRowBytes == 64 || kRowBytes % 128 == 0, "rows of 64 bytes or multiples of 128");
  static constexpr int kChunks = kRowBytes / 16;

  // Byte offset of (row, 16-byte chunk).
  __device__ __forceinline__ static uint32_t offset(int row, int chunk) {
    if constexpr (kRowBytes == 64) {
      // Two rows share a 128-byte line: swizzle with row/2 across the four chunks.
      return row * kRowBytes + ((chunk ^ ((row >> 1) & 3)) << 4);
    } else {
      return row * kRowBytes + ((chunk ^ (row & 7)) << 4);
    }
  }

  // Fragment loops walk a tile in steps of whole 16-row groups and of chunk pairs. With
  // the rows a multiple of 8 apart the swizzle term is unchanged, and a chunk step of
  // 2 * c flips address bits 5 and up, so a step is `base + rows * kRowBytes ^ (c << 5)`:
  // one register per operand instead of one per unrolled fragment. Requires the tile
  // to start 128-byte aligned.
  __device__ __forceinline__ static uint32_t step(uint32_t base, int rows, int chunk_pairs) {
    return (base + rows * kRowBytes) ^ (chunk_pairs << 5);
  }
};

}  // namespace sage
