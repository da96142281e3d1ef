// Host side of the Hopper kernel. Built only when the arch list has sm_90a, and it
// registers its own op implementation, so builds without it simply lack the op.
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <functional>

#include "attention/attn_launch.cuh"
#include "common/launch.cuh"
#include "ops.h"
#include "quant/kv_stream.cuh"
#include "sm90/attn_sm90.cuh"

namespace sage {
namespace {

// cuTensorMapEncodeTiled, from the driver through the runtime (no link to libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    TORCH_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
                "the CUDA driver does not provide cuTensorMapEncodeTiled (needed by the Hopper kernel)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// A TMA descriptor of a rank-R tensor of bytes or 16-bit elements: sizes and box
// innermost first, byte strides of dimensions 1 .. R-1, a swizzle of 64 or 128 bytes or
// none (0). Out-of-range rows read as zeros.
template <int R>
CUtensorMap tensor_map(const void* base, int elem_bytes, std::array<int64_t, R> dims,
                       std::array<int64_t, R - 1> byte_strides, std::array<int, R> box, int swizzle_bytes) {
  std::array<cuuint64_t, R> d;
  std::array<cuuint64_t, R - 1> st;
  std::array<cuuint32_t, R> b, ones;
  for (int i = 0; i < R; ++i) {
    d[i] = cuuint64_t(dims[i]);
    b[i] = cuuint32_t(box[i]);
    ones[i] = 1;
  }
  for (int i = 0; i < R - 1; ++i) st[i] = cuuint64_t(byte_strides[i]);
  CUtensorMap map;
  const CUresult r = tensor_map_encoder()(
      &map, elem_bytes == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_UINT16, R,
      const_cast<void*>(base), d.data(), st.data(), b.data(), ones.data(), CU_TENSOR_MAP_INTERLEAVE_NONE,
      swizzle_bytes == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
      : swizzle_bytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                            : CU_TENSOR_MAP_SWIZZLE_NONE,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (error ", int(r), ")");
  return map;
}

// Query tiles of q (Bhnd) for traits Tr, and whether their grid runs persistent: one CTA an
// SM at a time either way (registers, shared memory), persistent once every SM has at least
// two tiles; on smaller grids it has nothing to overlap (Sm90Kernel). attn_sm90_fp8 asks too:
// only persistent grids take the stream.
template <class Tr>
int64_t query_tiles(const Bhnd& q) {
  return q.b * q.h * ((q.n + Tr::kCtaQ - 1) / Tr::kCtaQ);
}
inline bool runs_persistent(int64_t tiles, int sms) { return tiles >= 2 * sms; }

// A 16-bit [B, H, N, D] tensor (its Bhnd strides) as TMA's (D, N, H, B), boxes of `rows` whole
// rows, no swizzle: Q tiles for the kernel, K and V chunks for kv_stream_kernel.
CUtensorMap rows_map(const at::Tensor& x, const Bhnd& s, int rows) {
  return tensor_map<4>(x.data_ptr(), 2, {s.d, s.n, s.h, s.b}, {s.stride_n * 2, s.stride_h * 2, s.stride_b * 2},
                       {int(s.d), rows, 1, 1}, 0);
}

// The tail split of a persistent grid (Sm90Kernel::work). Without a causal mask every
// tile takes as long, so the last wave's tiles % sms tiles would run while the other SMs
// idle. Each is split into as many key ranges as keep the last wave within one CTA an SM,
// of at least kMinChunkBlocks key blocks each: a chunk also pays for its Q's
// quantization, its first block, its part's store and (the last one) the merge, together
// a few blocks' time on H100 (bench/results/h100-9952d4d-phases.txt). Under a causal mask
// the tiles run longest first and the short ones already fill the tail. On H100 the 16-bit
// hd64 kernel ran 3.4% faster at 4k (2816 tiles: 21 waves and 44 tiles); at hd128 4k
// (31 waves and 4 tiles) nothing measurable: CTAs claiming tiles drift apart over 31
// tiles, so 4 tiles never cost a whole tile-time (bench/results/h100-6baa061-tail-split-ab.txt).
struct TailSplit {
  int64_t first;  // the first split tile (= tiles: none)
  int chunks;
};
inline TailSplit tail_split(int64_t tiles, int sms, int64_t key_blocks, bool causal) {
  constexpr int64_t kMinChunkBlocks = 4;
  const int64_t rest = tiles % sms;
  const int64_t chunks = rest == 0 ? 1 : std::min(sms / rest, key_blocks / kMinChunkBlocks);
  if (causal || chunks < 2) return {tiles, 1};
  return {tiles - rest, int(chunks)};
}

}  // namespace

// Launches kv_stats_kernel and kv_stream_kernel before a persistent e4m3 grid (attn_sm90_fp8):
// given the attention kernel's counters to clear, returns its kv_ready.
using BeforePersistent = std::function<const int*(int* clear, int clear_count)>;

std::tuple<at::Tensor, at::Tensor> run_attn_sm90(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v_in,
                                                 const at::Tensor& k_scale, const std::optional<at::Tensor>& v_scale,
                                                 int64_t tensor_layout, int64_t q_group_block, int64_t q_group_stride,
                                                 double q_scale_mult, bool is_causal, bool return_lse,
                                                 const BeforePersistent& before_persistent) {
  check_half(q_in, "q");
  const at::ScalarType dtype = q_in.scalar_type();
  const bool fp8 = v_in.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK(v_in.is_cuda() && (fp8 || v_in.scalar_type() == dtype),
              "v must be quant_v_fp8's e4m3 output or V itself in q's dtype, got ", v_in.scalar_type());
  TORCH_CHECK(fp8 == v_scale.has_value(), "v_scale is required with (and only with) an e4m3 v");
  using Tile = sm90::Sm90Traits<128, PV::kFp16, __half>;  // key blocks and consumer rows: the same for all
  TORCH_CHECK(q_group_block > 0 && Tile::kWgQ % q_group_block == 0 && q_group_stride > 0 &&
                  q_group_block % q_group_stride == 0,
              "q_group_block must divide ", Tile::kWgQ, " and q_group_stride must divide it, got ", q_group_block,
              " and ", q_group_stride);
  TORCH_CHECK(q_scale_mult > 0, "q_scale_mult must be positive, got ", q_scale_mult);
  const at::Tensor q = aligned16(q_in, tensor_layout, "q");
  const Bhnd qs = bhnd(q, tensor_layout, "q");
  sm90::Sm90Params p{};
  const at::Tensor v = fp8 ? v_in : aligned16(v_in, tensor_layout, "v");
  if (fp8) {
    TORCH_CHECK(v.dim() == 4 && v.is_contiguous(), "an e4m3 v must be a contiguous [B, Hkv, D, N_pad] tensor");
    const int64_t D = v.size(2), padded = v.size(3);
    static_cast<AttnParams&>(p) = attn_keys(qs, k, k_scale, D, is_causal);
    TORCH_CHECK(v.size(0) == qs.b && v.size(1) == k.size(1) && padded % 128 == 0 && padded >= k.size(2),
                "v must be [B, Hkv, D, N_pad] with N_pad a multiple of 128 covering the keys, got ", v.sizes());
    check_cuda(*v_scale, "v_scale", at::kFloat);
    TORCH_CHECK(v_scale->sizes() == at::IntArrayRef({v.size(0), v.size(1), D}) && v_scale->is_contiguous(),
                "v_scale must be a contiguous [B, Hkv, D] tensor");
    p.v_scale = v_scale->data_ptr<float>();
    p.v_padded_len = int(padded);
  } else {
    const Bhnd vs = bhnd(v, tensor_layout, "v");
    static_cast<AttnParams&>(p) = attn_keys(qs, k, k_scale, vs.d, is_causal);
    TORCH_CHECK(vs.b == qs.b && vs.h == k.size(1) && vs.n == k.size(2),
                "v must match k: batch ", k.size(0), ", heads ", k.size(1), ", keys ", k.size(2));
    p.v_stride_b = vs.stride_b;
    p.v_stride_h = vs.stride_h;
    p.v_stride_n = vs.stride_n;
  }
  p.v = v.data_ptr();
  p.q_in = q.data_ptr();
  p.q_stride_b = qs.stride_b;
  p.q_stride_h = qs.stride_h;
  p.q_stride_n = qs.stride_n;
  p.q_group_block = int(q_group_block);
  p.q_group_stride = int(q_group_stride);
  p.q_scale_mult = float(q_scale_mult);
  const c10::cuda::CUDAGuard guard(q.device());
  const int cc = device_capability(q.get_device());
  TORCH_CHECK(cc == 90, "the Hopper kernel runs on sm_90 only; this GPU is sm_", cc);
  auto result = attn_outputs(p, qs, q.options(), tensor_layout, dtype, return_lse);
  if (qs.b == 0 || qs.h == 0 || qs.n == 0) return result;
  p.batch = int(qs.b);
  TORCH_CHECK(qs.d == 64 || qs.d == 128, "the Hopper kernel supports head dims 64 and 128, got ", qs.d);
  // TMA boxes: one key block of K (D bytes a row), of V in 64-channel atoms, of V^T.
  const int64_t D = qs.d, keys = p.kv_len, kv_rows = qs.b * p.kv_heads;
  p.k_map = tensor_map<3>(k.data_ptr(), 1, {D, keys, kv_rows}, {D, keys * D}, {int(D), Tile::kCtaK, 1}, int(D));
  if (fp8)
    p.v_map = tensor_map<3>(v.data_ptr(), 1, {p.v_padded_len, D, kv_rows}, {p.v_padded_len, D * p.v_padded_len},
                            {Tile::kCtaK, int(D), 1}, 128);
  else
    p.v_map = tensor_map<4>(v.data_ptr(), 2, {D, keys, p.kv_heads, qs.b},
                            {p.v_stride_n * 2, p.v_stride_h * 2, p.v_stride_b * 2}, {64, Tile::kCtaK, 1, 1}, 128);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_half_hd(dtype, qs.d, [&](auto elem, auto head_dim) {
    using T = typename decltype(elem)::type;
    auto go = [&](auto traits) {
      using Tr = decltype(traits);
      const int64_t tiles = query_tiles<Tr>(qs);
      if constexpr (Tr::kOBySmem)
        p.o_map = tensor_map<4>(p.out, 2, {D, qs.n, qs.h, qs.b}, {p.o_stride_n * 2, p.o_stride_h * 2, p.o_stride_b * 2},
                                {64, Tr::kWgQ, 1, 1}, 128);
      TORCH_CHECK(tiles < (int64_t(1) << 30), "too many query tiles: ", tiles);
      // Only persistent grids split their tail (Sm90Kernel::work).
      const int sms = sm_count(q.get_device());
      const bool persistent = runs_persistent(tiles, sms);
      const TailSplit split = persistent ? tail_split(tiles, sms, (keys + Tile::kCtaK - 1) / Tile::kCtaK, is_causal)
                                         : TailSplit{tiles, 1};
      const int64_t tail_tiles = tiles - split.first, parts = tail_tiles * split.chunks;
      p.tail_first = int(split.first);
      p.tail_chunks = split.chunks;
      if (!persistent) {
        launch_kernel<Tr>(sm90::attn_sm90_kernel<Tr, false>, p, dim3(tiles), stream);
        return;
      }
      // Scratch: the tile counter and the tail tiles' chunk counts (zeros), the parts.
      const int64_t count_words = 1 + tail_tiles * Tr::kConsumerThreads / 32;
      const at::Tensor counts = before_persistent ? at::empty({count_words}, q.options().dtype(at::kInt))
                                                  : at::zeros({count_words}, q.options().dtype(at::kInt));
      p.tile_counter = counts.data_ptr<int>();
      p.part_done = p.tile_counter + 1;
      at::Tensor part_buf;
      if (parts > 0) {
        part_buf = at::empty({parts * Tr::kCtaQ * (D + 1)}, q.options().dtype(at::kFloat));
        p.part_o = part_buf.data_ptr<float>();
        p.part_lse = p.part_o + parts * Tr::kCtaQ * D;
      }
      p.q_map = rows_map(q, qs, Tr::kCtaQ);
      if (before_persistent) p.kv_ready = before_persistent(p.tile_counter, int(count_words));
      launch_kernel<Tr>(sm90::attn_sm90_kernel<Tr, true>, p, dim3(sms), stream);
    };
    if (fp8)
      go(sm90::Sm90Traits<head_dim(), PV::kFp8, T>{});
    else
      go(sm90::Sm90Traits<head_dim(), PV::kFp16, T>{});
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor> attn_sm90(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const at::Tensor& k_scale, const std::optional<at::Tensor>& v_scale,
                                             int64_t tensor_layout, int64_t q_group_block, int64_t q_group_stride,
                                             double q_scale_mult, bool is_causal, bool return_lse) {
  return run_attn_sm90(q, k, v, k_scale, v_scale, tensor_layout, q_group_block, q_group_stride, q_scale_mult,
                       is_causal, return_lse, nullptr);
}

// The whole e4m3 path from 16-bit Q, K and V. Persistent grids get K and V from
// kv_stream_kernel, beside the attention kernel (quant/kv_stream.cuh); smaller ones from the
// quantization passes before it, as the ops would run them one by one.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_sm90_fp8(const at::Tensor& q, const at::Tensor& k_in,
                                                             const at::Tensor& v_in, int64_t tensor_layout,
                                                             int64_t k_group_stride, bool smooth_k,
                                                             int64_t q_group_block, int64_t q_group_stride,
                                                             double q_scale_mult, bool is_causal, bool return_lse) {
  check_half(q, "q");
  check_half(k_in, "k");
  check_half(v_in, "v");
  TORCH_CHECK(k_in.scalar_type() == q.scalar_type() && v_in.scalar_type() == q.scalar_type(),
              "q, k and v must have one dtype");
  TORCH_CHECK(k_group_stride == 1 || k_group_stride == 8, "k_group_stride must be 1 (per_warp) or 8 (per_thread), got ",
              k_group_stride);
  constexpr int64_t kKeyBlock = 64;  // sageattention.quant.CTA_K: K's group block
  const at::Tensor k = aligned16(k_in, tensor_layout, "k"), v = aligned16(v_in, tensor_layout, "v");
  const Bhnd qs = bhnd(q, tensor_layout, "q"), ks = bhnd(k, tensor_layout, "k"), vs = bhnd(v, tensor_layout, "v");
  TORCH_CHECK(vs.b == ks.b && vs.h == ks.h && vs.n == ks.n && vs.d == ks.d, "v must have k's shape");
  const c10::cuda::CUDAGuard guard(q.device());
  // Streamed where the attention kernel runs persistent and leaves an SM room for the stream's
  // warps: e4m3 at hd64 (Sm90Kernel::kBesideKvStream). At hd128 its CTA leaves no warp's
  // registers, and the stream would run before it, four warps an SM: slower than the passes.
  constexpr int kStreamHd = 64;
  using StreamTraits = sm90::Sm90Traits<kStreamHd, PV::kFp8, __half>;
  static_assert(sm90::Sm90Kernel<StreamTraits, true>::kBesideKvStream, "room for the stream's warps");
  using Stream = KvStream<__half, kStreamHd, true>;
  static_assert(StreamTraits::kSmemBytes + Stream::kSmemBytes + 2 * 1024 <= 228 * 1024,
                "the stream's CTA fits an SM's shared memory beside the attention CTA (1 KB reserved each)");
  const bool streamed = runs_persistent(query_tiles<StreamTraits>(qs), sm_count(q.get_device())) && ks.n > 0 &&
                        ks.h > 0 && ks.b > 0 && qs.d == kStreamHd && ks.d == kStreamHd;
  if (!streamed) {
    // The mean rounded to K's type, as kv_stats_kernel gives it.
    const at::Tensor k_mean = smooth_k ? sample_mean(k, tensor_layout).to(k.scalar_type()).to(at::kFloat)
                                       : at::empty({0}, q.options().dtype(at::kFloat));
    const auto [k_int8, k_scale] = quant_int8(k, smooth_k ? std::optional<at::Tensor>(k_mean) : std::nullopt,
                                              tensor_layout, kKeyBlock, k_group_stride, 1.0);
    const auto [v_fp8, v_scale] = quant_v_fp8(v, tensor_layout);
    const auto [out, lse] = attn_sm90(q, k_int8, v_fp8, k_scale, v_scale, tensor_layout, q_group_block,
                                      q_group_stride, q_scale_mult, is_causal, return_lse);
    return {out, lse, k_mean};
  }
  const auto f32 = q.options().dtype(at::kFloat);
  const int64_t D = ks.d, heads = ks.b * ks.h, padded = (ks.n + 127) / 128 * 128;
  const at::Tensor k_int8 = at::empty({ks.b, ks.h, ks.n, D}, q.options().dtype(at::kChar));
  const at::Tensor k_scale = at::empty({ks.b, ks.h, ks.n}, f32);
  const at::Tensor k_mean = smooth_k ? at::empty({ks.b, ks.h, D}, f32) : at::empty({0}, f32);
  const at::Tensor v_fp8 = at::empty({ks.b, ks.h, D, padded}, q.options().dtype(at::kFloat8_e4m3fn));
  const at::Tensor v_scale = at::empty({ks.b, ks.h, D}, f32);
  const at::Tensor v_state = at::empty({2, heads, D}, f32);                      // limit, overflow
  const at::Tensor flags = at::empty({2, heads}, q.options().dtype(at::kInt));  // done, ready
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const BeforePersistent before = [&](int* clear, int clear_count) -> const int* {
    KvStreamParams s{};
    s.k_map = rows_map(k, ks, Stream::kKeys);
    s.v_map = rows_map(v, vs, Stream::kKeys);
    s.k = k.data_ptr();
    s.k_stride_b = ks.stride_b;
    s.k_stride_h = ks.stride_h;
    s.k_stride_n = ks.stride_n;
    s.k_mean = smooth_k ? k_mean.data_ptr<float>() : nullptr;
    s.v_limit = v_state[0].data_ptr<float>();
    s.v_overflow = v_state[1].data_ptr<float>();
    s.v_scale = v_scale.data_ptr<float>();
    s.k_out = k_int8.data_ptr<int8_t>();
    s.k_scale = k_scale.data_ptr<float>();
    s.v_out = static_cast<uint8_t*>(v_fp8.data_ptr());
    s.done = flags[0].data_ptr<int>();
    s.ready = flags[1].data_ptr<int>();
    s.v = v.data_ptr();
    s.v_stride_b = vs.stride_b;
    s.v_stride_h = vs.stride_h;
    s.v_stride_n = vs.stride_n;
    s.batch = int(ks.b);
    s.heads = int(ks.h);
    s.len = int(ks.n);
    s.padded_len = int(padded);
    s.clear = clear;
    s.clear_count = clear_count;
    dispatch_half(q.scalar_type(), [&](auto elem) {
      using T = typename decltype(elem)::type;
      constexpr int HD = kStreamHd;
      launch_after(kv_stats_kernel<T, HD>, dim3(ks.h, ks.b), token_sample::SampleTile<T, HD>::kThreads, 0, stream, s,
                   token_sample::draw(int(ks.n)));
      auto go = [&](auto kernel, int smem) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        // An SM changes its L1 / shared memory split only while idle: set up for this CTA's
        // 137 KB alone, it would leave no room for the attention CTA beside it.
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                            cudaSharedmemCarveoutMaxShared));
        launch_after(kernel, dim3(sm_count(q.get_device())), Stream::kThreads, smem, stream, s);
      };
      if (k_group_stride == 8)
        go(kv_stream_kernel<T, HD, true>, KvStream<T, HD, true>::kSmemBytes);
      else
        go(kv_stream_kernel<T, HD, false>, KvStream<T, HD, false>::kSmemBytes);
    });
    return s.ready;
  };
  const auto [out, lse] = run_attn_sm90(q, k_int8, v_fp8, k_scale, v_scale, tensor_layout, q_group_block,
                                        q_group_stride, q_scale_mult, is_causal, return_lse, before);
  return {out, lse, k_mean};
}

}  // namespace sage

TORCH_LIBRARY_IMPL(sageattention, CUDA, m) {
  m.impl("attn_sm90", &sage::attn_sm90);
  m.impl("attn_sm90_fp8", &sage::attn_sm90_fp8);
}
