// Tile shapes of the INT8-QK attention kernels (sm_80 and newer, mma.sync).
//
// One CTA owns kCtaQ query rows of one (batch, head) and walks the keys kCtaK at a
// time. Each warp owns kWarpQ = 32 rows (two m16 MMA tiles), so every K or V fragment
// it loads from shared memory feeds two MMAs: at 16 rows a warp the kernel would be
// bound by shared-memory bandwidth on H100, not by the tensor cores.
#pragma once
#include "common/smem_layout.cuh"

namespace sage {

enum class PV { kFp16, kFp8 };  // precision of the P·V product

template <int kHeadDim_, PV kPV_, typename Elem_>
struct AttnTraits {
  using Elem = Elem_;  // fp16 or bf16: output type, and V/P type of the kFp16 path
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr PV kPV = kPV_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128");

  static constexpr int kCtaQ = 128;
  static constexpr int kWarpQ = 32;
  static constexpr int kCtaK = 64;
  static constexpr int kWarps = kCtaQ / kWarpQ;
  static constexpr int kThreads = kWarps * 32;

  static constexpr int kMTiles = kWarpQ / 16;        // m16 tiles a warp owns
  static constexpr int kSTiles = kCtaK / 8;          // n8 tiles of S = Q K^T
  static constexpr int kOTiles = kHeadDim / 8;       // n8 tiles of O
  static constexpr int kQKSteps = kHeadDim / 32;     // k32 steps of Q K^T (int8)
  // Q's A fragments stay in registers at head dim 64; at 128 they would push the O
  // accumulators (128 registers) into local memory, so they are re-read from shared
  // memory each block (4 KB a warp, a sixth of what K and V cost).
  static constexpr bool kQInRegs = kHeadDim <= 64;

  // Q and K tiles: int8 rows of kHeadDim bytes. V: [keys][head_dim] 16-bit rows for
  // the fp16 path; [head_dim][keys] e4m3 rows for the fp8 path (pre-transposed so
  // that ldmatrix yields the k-major B fragments of the fp8 MMA).
  using QKTile = SwizzledTile<kHeadDim>;
  using VTile = SwizzledTile<kPV == PV::kFp8 ? kCtaK : kHeadDim * 2>;
  static constexpr int kQBytes = kCtaQ * kHeadDim;
  static constexpr int kKBytes = kCtaK * kHeadDim;
  static constexpr int kVBytes = kCtaK * kHeadDim * (kPV == PV::kFp8 ? 1 : 2);
  static constexpr int kStages = 2;  // K and V double-buffered
  static constexpr int kSmemBytes = kQBytes + kStages * (kKBytes + kVBytes + kCtaK * 4);
};

// What the launcher hands the kernel. Q and K are int8, contiguous [B, H, N, D];
// V and O are addressed through strides so that HND and NHD need no copies.
struct AttnParams {
  const int8_t* q;
  const int8_t* k;
  const void* v;
  const float* q_scale;  // [B, Hq, Nq], includes sm_scale * log2(e)
  const float* k_scale;  // [B, Hkv, Nk]
  const float* v_scale;  // [B, Hkv, D] (fp8 path only)
  void* out;
  float* lse;  // [B, Hq, Nq] or nullptr
  int q_heads, kv_heads, q_len, kv_len;
  int v_padded_len;  // fp8 path: keys per (b, h) row of the transposed V
  int64_t v_stride_b, v_stride_h, v_stride_n;  // elements (fp16 path)
  int64_t o_stride_b, o_stride_h, o_stride_n;  // elements
  bool causal;
};

// Which rows, head and batch a CTA owns.
struct CtaCoord {
  int batch, head, kv_head, q0;
  int64_t bh, bkv;  // flat (batch, head) and (batch, kv head) indices

  __device__ static CtaCoord at(const AttnParams& p, int batch, int head, int q0) {
    CtaCoord c;
    c.batch = batch;
    c.head = head;
    c.q0 = q0;
    c.kv_head = head / (p.q_heads / p.kv_heads);
    c.bh = int64_t(batch) * p.q_heads + head;
    c.bkv = int64_t(batch) * p.kv_heads + c.kv_head;
    return c;
  }

  // The mma.sync kernels' grid (query blocks, q heads, batch). Query blocks run in
  // reverse order so that under a causal mask the longest rows start first.
  __device__ static CtaCoord from_grid(const AttnParams& p, int cta_q) {
    return at(p, blockIdx.z, blockIdx.y, (gridDim.x - 1 - blockIdx.x) * cta_q);
  }

  // Key blocks of cta_k keys this CTA visits (causal: none right of its last row's
  // diagonal); blocks below `n_unmasked` lie inside the sequence and left of every
  // row's diagonal, so they need no mask.
  struct KeyBlocks {
    int n_blocks, n_unmasked;
    int begin = 0;  // visits blocks begin .. n_blocks - 1 (the Hopper kernel's tail split)
  };
  __device__ KeyBlocks key_blocks(const AttnParams& p, int cta_q, int cta_k) const {
    const int kv_end = p.causal ? min(p.kv_len, q0 + cta_q) : p.kv_len;
    return {(kv_end + cta_k - 1) / cta_k, min(p.kv_len, p.causal ? q0 + 1 : p.kv_len) / cta_k};
  }
};

}  // namespace sage
