// Rows of O from the m16n8 accumulator layout to memory, shared by the sm80 and sm90
// kernels. A lane (4g + t) holds channels 8 nt + 2t, 8 nt + 2t + 1 of its rows: stored
// as they lie, a warp store writes 4 bytes a lane, 16 of each of 8 rows. The quad's lanes
// trade words first, so that a lane stores 16 contiguous bytes, 64 of each row a store
// (on H200 the Hopper kernels ran 1-5% faster).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sage {

// Lane t of a quad holds word t (channels 2t, 2t + 1) of each of four n8 tiles; returns
// tile t's four words (its 8 channels): a 4x4 transpose over the quad in two exchanges,
// with lane t ^ 1, then t ^ 2, of two words each.
__device__ __forceinline__ uint4 quad_transpose(uint32_t (&w)[4], int t) {
#pragma unroll
  for (int bit = 1; bit <= 2; bit *= 2)
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int lo = bit == 1 ? 2 * k : k, hi = lo + bit;  // the pairs (0, 1), (2, 3), then (0, 2), (1, 3)
      const bool upper = t & bit;                          // keeps w[hi], trades w[lo]
      const uint32_t got = __shfl_xor_sync(0xffffffffu, upper ? w[lo] : w[hi], bit);
      (upper ? w[lo] : w[hi]) = got;
    }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Stores one row of a quad: words[nt] is this lane's pair of 16-bit channels of n8 tile
// nt; `row` points at the row's channel 0 (16-byte aligned). Every lane of the warp
// calls it (the trades are warp-wide shuffles); only those with `valid` store.
template <int kTiles>
__device__ __forceinline__ void store_quad_row(void* row, const uint32_t (&words)[kTiles], int t, bool valid) {
  static_assert(kTiles % 4 == 0, "quads of n8 tiles");
#pragma unroll
  for (int b = 0; b < kTiles / 4; ++b) {
    uint32_t w[4] = {words[4 * b], words[4 * b + 1], words[4 * b + 2], words[4 * b + 3]};
    const uint4 v = quad_transpose(w, t);
    if (valid) reinterpret_cast<uint4*>(row)[4 * b + t] = v;
  }
}

}  // namespace sage
