// K to INT8 and V to e4m3 by one warp in each scheduler quarter of every SM, running beside the
// Hopper e4m3 kernel.
//
// Why: the fp8 path's K and V passes read 16-bit K and V once each at DRAM bandwidth, and the
// attention kernel waits for them, compute-bound, leaving the memory idle. On H100 at B=4 H=32
// hd64 4k causal they are 69 of about 630 us (bench/results/h100-3a100bc-call-gaps.txt). The
// persistent e4m3 hd64 CTA, launched at 160 registers a thread (Sm90Kernel::kLaunchRegs), leaves
// 1024 registers in each of an SM's four scheduler quarters: one warp at 32 (a warp's registers
// come from its quarter's file; at 168 a quarter kept 256, and the two kernels ran one after the
// other). This kernel's CTA is those four warps on every SM, each a worker of its own (its own
// stage ring, its own units): launched first, it lets the attention kernel launch at once
// (griddepcontrol.launch_dependents right after its own wait) and publishes each KV head once its
// K and V are written; the attention kernel's producer waits for a head before it loads the
// head's first block (sm90/attn_sm90.cuh, kv_ready).
//
// No deadlock: the attention kernel launches only once every CTA of this kernel has started,
// and this kernel waits for nothing the attention kernel does. If the two cannot share an SM
// (registers, shared memory), the attention CTAs start as these end: serial, as before.
//
// Work: chunks of kKeys keys of one KV head, of K or of V, in units of kUnit chunks of one head,
// the units in head order (the attention kernel's tiles run in runs of heads, so the first heads
// are ready first); worker i (of W, kWarps an SM) takes units i, i + W, i + 2W, ... Each chunk
// arrives by TMA (rows past the sequence as zeros) into the worker's ring of stages, with its
// head's parameters (K's mean, V's scales and limits) by bulk copy beside it, so that the warp
// never waits on a global load: alone on an SM a warp is bound by memory round trips, and beside
// the attention kernel those took 3-4x longer (h100-1159570-kv-stream-160-registers-ab.txt: 7 us
// a chunk, 900 us in all at hd64 4k, where a global load and a fence + atomic each chunk made
// four round trips). A unit ends with one fence and one atomic for its kUnit chunks. With both
// and one warp an SM, a chunk took ~4.6 us beside the kernel, and at hd64 4k causal the stream
// (573 us) lasted about as long as the kernel: the call gained 1-3% over the passes
// (h100-b57ebec-kv-stream-units-ab.txt). Four workers end the stream at ~180 us, so the kernel
// never waits for heads after its first ones, but the call is no faster: what slows the kernel
// is the stream's work, whenever it runs. At 1980 MHz the stream adds ~64 us to a ~555 us
// kernel: ~31 its stores, ~29 its loads, ~6 its arithmetic, ~6 its signals; the passes add ~72
// (h100-6d7c9c4-kv-stream-interference.txt). Paced over the whole kernel, with the kernel
// dropping each head's output from L2 after its last read (never written back to DRAM), it
// cost the kernel the same (h100-8b28177-kv-stream-paced-l2-discard-ab.txt).
// - K: the rule of quant_int8 with a smoothing vector (the sample mean, rounded to K's type:
//   any vector cancels in softmax, and the caller's LSE term uses the same), one scale per
//   64-key group or per key residue mod 8 inside it (the attention kernel's two granularities).
// - V: quant_v_fp8's rule: V^T with keys permuted, each channel's scale from the sample's limit,
//   values above it recorded; the head's last chunk re-encodes the channels that overflowed, with
//   their maximum, before it publishes the head.
#pragma once
#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

#include <cstdint>

#include "common/numeric.cuh"
#include "common/ptx.cuh"
#include "quant/int8_rows.cuh"
#include "quant/quant_v_fp8.cuh"
#include "quant/token_sample.cuh"
#include "sm90/async.cuh"

namespace sage {

struct KvStreamParams {
  CUtensorMap k_map;  // 16-bit K: (D, keys, Hkv, B), box (D, kKeys, 1, 1), no swizzle
  CUtensorMap v_map;  // 16-bit V, the same
  const void* k;        // 16-bit K through element strides (kv_stats_kernel's sample)
  int64_t k_stride_b, k_stride_h, k_stride_n;
  float* k_mean;        // [B * Hkv][D]: K's smoothing vector (values of K's type), or nullptr: none
  float* v_limit;       // [B * Hkv][D]: kHeadroom x the sample's |v| maximum
  float* v_overflow;    // [B * Hkv][D]: zero at launch; a channel's |v| maximum above its limit
  float* v_scale;       // [B * Hkv][D]: e4m3_scale(limit) at launch; final once the head is ready
  int8_t* k_out;        // [B * Hkv][len][D]
  float* k_scale;       // [B * Hkv][len]
  uint8_t* v_out;       // [B * Hkv][D][padded_len] e4m3
  int* done;            // [B * Hkv]: zero at launch; units of the head written
  int* ready;           // [B * Hkv]: zero at launch; 1 once the head's K and V are written
  const void* v;        // 16-bit V through element strides (the sample; the repair reads it too)
  int64_t v_stride_b, v_stride_h, v_stride_n;
  int batch, heads, len, padded_len;
  int* clear;  // kv_stats_kernel zeroes clear[0 .. clear_count) too (the attention kernel's counters)
  int clear_count;
};

// Sampled row `row` of a head (`head`: its token 0, `stride` elements a token) into L2.
// kv_stats_kernel's CTAs become resident on the SMs the previous attention kernel's tail frees
// and wait there (launch_after); these prefetches run during that wait, so that the loads after
// it find the rows in L2 instead of DRAM. They may precede the wait: a prefetch accesses nothing
// (common/launch.cuh's rule), and L2 is where every SM's writes to the rows meet.
template <typename T, int D>
__device__ void prefetch_sample_row(const token_sample::Sample& sample, const T* head, int64_t stride, int row) {
  static_assert(D * sizeof(T) % 16 == 0, "rows of whole 16-byte pieces");
  if (row < sample.count) sm90::bulk_prefetch_l2(head + sample.tokens[row] * stride, D * sizeof(T));
}

// Before kv_stream_kernel, one CTA a (head, batch), from the head's token sample
// (token_sample.cuh, as quant_int8_smooth and quant_v_fp8): K's smoothing vector, the sample
// mean rounded to K's type (kv_stream subtracts it in that type, and the caller's LSE term must
// use what was subtracted); V's limits and their e4m3 scales; the head's overflow, done and
// ready cleared. CTA (0, 0) also clears p.clear.
template <typename T, int D>
__global__ void __launch_bounds__(token_sample::SampleTile<T, D>::kThreads)
    kv_stats_kernel(const __grid_constant__ KvStreamParams p, const __grid_constant__ token_sample::Sample sample) {
  __shared__ __align__(16) token_sample::SampleTile<T, D> k_tile, v_tile;
  const int head = blockIdx.x, batch = blockIdx.y, bh = batch * p.heads + head;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_stride_b + head * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_stride_b + head * p.v_stride_h;
  // K's rows by threads 0 .. kTokens, V's by the next kTokens.
  const bool of_k = threadIdx.x < token_sample::kTokens;
  if (of_k ? p.k_mean != nullptr : threadIdx.x < 2 * token_sample::kTokens)
    prefetch_sample_row<T, D>(sample, of_k ? k : v, of_k ? p.k_stride_n : p.v_stride_n,
                              threadIdx.x % token_sample::kTokens);
  ptx::wait_prior_grids();  // (launch_after)
  if (p.k_mean != nullptr) k_tile.load(sample, k, p.k_stride_n);
  v_tile.load(sample, v, p.v_stride_n);
  if (bh == 0)
    for (int i = threadIdx.x; i < p.clear_count; i += blockDim.x) p.clear[i] = 0;
  if (threadIdx.x == 0) {
    p.done[bh] = 0;
    p.ready[bh] = 0;
  }
  __syncthreads();
  if (threadIdx.x < D) {
    const int i = bh * D + threadIdx.x;
    if (p.k_mean != nullptr) {
      const float sum = k_tile.fold(sample, threadIdx.x, 0.0f, [](float a, float b) { return a + b; });
      p.k_mean[i] = to_float(T(sum / float(sample.count)));
    }
    const float amax = v_tile.fold(sample, threadIdx.x, 0.0f, [](float a, float b) { return fmaxf(a, fabsf(b)); });
    p.v_limit[i] = QuantVFp8Shape::kHeadroom * amax;
    p.v_scale[i] = e4m3_scale(QuantVFp8Shape::kHeadroom * amax);
    p.v_overflow[i] = 0.0f;
  }
}

template <typename T, int D, bool kPerThread>
struct KvStream {
  static constexpr int kKeys = 64;  // a chunk: one K scale group block
  static constexpr int kChunkBytes = kKeys * D * 2;
  static constexpr int kUnit = 4;  // chunks a unit: K, V, K, V of 128 keys (padded_len's multiple)
  static constexpr int kStages = 4;
  // Workers a CTA: one warp in each scheduler quarter (the 1024 registers the attention CTA
  // leaves there).
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  // A worker's shared memory: its stages' chunks, their parameters ([2][D] floats: K's mean, or
  // V's scales then limits), their mbarriers.
  static constexpr int kParamBytes = 2 * D * 4;
  static constexpr int kParamsAt = kStages * kChunkBytes;
  static constexpr int kBarriersAt = kParamsAt + kStages * kParamBytes;
  static constexpr int kWorkerSmemBytes = (kBarriersAt + kStages * 8 + 127) / 128 * 128;
  static constexpr int kSmemBytes = kWarps * kWorkerSmemBytes;
  static constexpr int kSlices = D / 8;             // 16-byte slices of a row
  static constexpr int kRowsPerPass = 32 / kSlices;  // rows a warp covers with one slice a lane
  // K's groups inside a chunk: rows congruent mod 8 (per_thread) or all 64 (per_warp). A lane's
  // rows are r0 + kRowsPerPass i: kLaneGroups of them distinct mod 8 (per_thread).
  static constexpr int kLaneGroups = kPerThread ? 8 / kRowsPerPass : 1;
  static_assert(D / 2 <= 64, "a bit for each channel pair in encode_v's `only`");
  using H2 = typename Half2<T>::type;

  __device__ static int chunks_per_head(const KvStreamParams& p) { return 2 * (p.padded_len / kKeys); }
  // Worker `worker`'s n-th chunk, of `workers`.
  __device__ static int chunk_of(int worker, int workers, int n) {
    return (worker + n / kUnit * workers) * kUnit + n % kUnit;
  }

  // ---------------------------------------------------------------- K
  // Chunk rows [kKeys][D] of 16-bit K at `rows` (shared), keys k0 .. of head bh. A lane holds
  // 8 channels (slice) of rows r0 + kRowsPerPass i.
  // `mean`: K's mean (shared), or nullptr.
  __device__ static void encode_k(const KvStreamParams& p, const uint4* rows, const float* mean, int bh, int k0,
                                  int lane) {
    if constexpr (!Half2<T>::kBf16)
      if (encode_k_f16(p, rows, mean, bh, k0, lane)) return;
    encode_k_f32(p, rows, mean, bh, k0, lane);
  }

  // The group maxima of this lane's rows below `rows` (those past the sequence, zeros from the
  // TMA, are not keys), reduced over the lanes that share its groups.
  template <typename Amax>
  __device__ static void group_maxima(float (&amax)[kLaneGroups], Amax row_amax, int r0, int rows) {
#pragma unroll
    for (int g = 0; g < kLaneGroups; ++g) amax[g] = 0.0f;
#pragma unroll 4
    for (int i = 0; i < kKeys / kRowsPerPass; ++i) {
      const int r = r0 + kRowsPerPass * i;
      if (r < rows) amax[i % kLaneGroups] = fmaxf(amax[i % kLaneGroups], row_amax(r));
    }
#pragma unroll
    for (int g = 0; g < kLaneGroups; ++g)
      // per_thread: the lanes of one r0 share their groups; per_warp: all lanes share the one.
#pragma unroll
      for (int off = 1; off < (kPerThread ? kSlices : 32); off *= 2)
        amax[g] = fmaxf(amax[g], __shfl_xor_sync(0xffffffffu, amax[g], off));
  }

  // fp16 K: k - mean and the rounding to INT8 in f16x2 (an FMA with 1536 leaves the nearest
  // integer in a half's low byte: 4 instructions for 8 values, against 8 conversions, 8
  // subtractions, 16 multiply-adds and 3 permutes in fp32; this warp shares its scheduler with
  // the attention kernel's). Returns false, having written nothing, where a group's maximum is
  // out of its reach (|k - mean| above 65504, or 127 / maximum above 32768).
  __device__ static bool encode_k_f16(const KvStreamParams& p, const uint4* rows, const float* k_mean, int bh, int k0,
                                      int lane) {
    const int slice = lane % kSlices, r0 = lane / kSlices;
    __half2 mean[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      mean[j] = k_mean ? __floats2half2_rn(k_mean[8 * slice + 2 * j], k_mean[8 * slice + 2 * j + 1])
                       : __float2half2_rn(0.0f);
    auto centered = [&](int r, int j) {
      const uint4 raw = rows[r * kSlices + slice];
      return __hsub2(reinterpret_cast<const __half2*>(&raw)[j], mean[j]);
    };
    const int rows_here = min(kKeys, p.len - k0);
    float amax[kLaneGroups];
    group_maxima(amax, [&](int r) {
      __half2 m = __habs2(centered(r, 0));
#pragma unroll
      for (int j = 1; j < 4; ++j) m = __hmax2(m, __habs2(centered(r, j)));
      return fmaxf(__low2float(m), __high2float(m));
    }, r0, rows_here);
    bool ok = true;
#pragma unroll
    for (int g = 0; g < kLaneGroups; ++g) ok &= amax[g] == 0.0f || (amax[g] <= 65504.0f && amax[g] >= 127.0f / 32768.0f);
    if (!__all_sync(0xffffffffu, ok)) return false;
    __half2 mult[kLaneGroups];
    float scale[kLaneGroups];  // what dequantizes: 1 / the multiplier as rounded
#pragma unroll
    for (int g = 0; g < kLaneGroups; ++g) {
      mult[g] = __float2half2_rn(amax[g] > 0.0f ? 127.0f / amax[g] : 1.0f);
      scale[g] = 1.0f / __low2float(mult[g]);
    }
    int8_t* out = p.k_out + (int64_t(bh) * p.len + k0) * D + 8 * slice;
    store_scales(p.k_scale + int64_t(bh) * p.len + k0, scale, rows_here, lane);
    const __half2 bias = __float2half2_rn(1536.0f);
#pragma unroll 4
    for (int i = 0; i < kKeys / kRowsPerPass; ++i) {
      const int r = r0 + kRowsPerPass * i;
      if (r >= rows_here) break;
      uint32_t q[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const __half2 t = __hfma2(centered(r, j), mult[i % kLaneGroups], bias);
        q[j] = *reinterpret_cast<const uint32_t*>(&t);
      }
      *reinterpret_cast<uint2*>(out + r * D) = make_uint2(__byte_perm(q[0], q[1], 0x6420), __byte_perm(q[2], q[3], 0x6420));
    }
    return true;
  }

  // The chunk's key scales, `scale` holding this lane's groups' (group_maxima's order): lane L
  // writes keys L and L + 32, which share their group, so that each store covers whole
  // 32-byte sectors (one key a store from the lanes of slice 0 wrote each sector in parts).
  __device__ static void store_scales(float* out, const float (&scale)[kLaneGroups], int rows, int lane) {
    // Key k's group is this lane array's k % 8 / kRowsPerPass (per_thread), held by the lanes
    // of r0 = k % kRowsPerPass.
    float mine = scale[0];
    if constexpr (kPerThread) {
      const int m = lane % 8;
#pragma unroll
      for (int g = 0; g < kLaneGroups; ++g) {
        const float s = __shfl_sync(0xffffffffu, scale[g], m % kRowsPerPass * kSlices);
        if (g == m / kRowsPerPass) mine = s;
      }
    }
    if (lane < rows) out[lane] = mine;
    if (lane + 32 < rows) out[lane + 32] = mine;
  }

  // quant_int8's arithmetic: k - mean and the scaling in fp32 (bf16 K, and fp16 K out of
  // encode_k_f16's reach).
  __device__ static void encode_k_f32(const KvStreamParams& p, const uint4* rows, const float* k_mean, int bh, int k0,
                                      int lane) {
    const int slice = lane % kSlices, r0 = lane / kSlices;
    const float* mean = k_mean ? k_mean + 8 * slice : nullptr;
    auto centered = [&](int r, float (&v)[8]) {
      int8::unpack<T>(rows[r * kSlices + slice], v);
      if (mean)
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] -= mean[j];
    };
    const int rows_here = min(kKeys, p.len - k0);
    float amax[kLaneGroups];
    group_maxima(amax, [&](int r) {
      float v[8];
      centered(r, v);
      return int8::lane_amax(v);
    }, r0, rows_here);
    float scale[kLaneGroups];
#pragma unroll
    for (int g = 0; g < kLaneGroups; ++g) scale[g] = int8::scale_of(amax[g]);
    store_scales(p.k_scale + int64_t(bh) * p.len + k0, scale, rows_here, lane);
    int8_t* out = p.k_out + (int64_t(bh) * p.len + k0) * D + 8 * slice;
#pragma unroll 4
    for (int i = 0; i < kKeys / kRowsPerPass; ++i) {
      const int r = r0 + kRowsPerPass * i;
      if (r >= rows_here) break;
      float v[8];
      centered(r, v);
      *reinterpret_cast<uint2*>(out + r * D) = int8::quantize(v, scale[i % kLaneGroups]);
    }
  }

  // ---------------------------------------------------------------- V
  // Keys [k0, k0 + kKeys) of V (rows of D 16-bit channels; row(k, c): the channel pair c of
  // key k0 + k as a word) as permuted e4m3 bytes of V^T: word w of a 32-key group holds keys
  // b, b + 1, b + 8, b + 9 (b = 16 (w / 4) + 2 (w % 4)), quant_v_fp8.cuh's permutation. Lanes
  // 2j and 2j + 1 take channels 2c, 2c + 1 for c = j, j + 16, ..., lane 2j the first 16 keys of
  // each 32-key group and lane 2j + 1 the other 16, so that the two store whole 32-byte sectors
  // of V^T's rows. (A lane with all the keys of its channels wrote each sector in two halves.
  // Beside the attention kernel the stream's stores cost it about as much as the stream's loads
  // and arithmetic together; whole sectors ran the call 0.3-1% faster:
  // bench/results/h100-6d7c9c4-kv-stream-interference.txt.) `only` (the
  // repair): just the pairs c whose bit it sets. `scale`, `limit`: the head's channel scales and
  // limits. Each channel's |v| maximum above its limit goes to v_overflow.
  template <typename Row>
  __device__ static void encode_v(const KvStreamParams& p, Row row, int bh, int k0, int lane, const float* scale,
                                  const float* limit, uint64_t only = ~0ull) {
    uint8_t* out = p.v_out + int64_t(bh) * D * p.padded_len + k0;
    const int half = lane % 2;
    const unsigned pair = 3u << (lane - half);  // the two lanes of this lane's channels
#pragma unroll 1
    for (int c = lane / 2; c < D / 2; c += 16) {
      if (!(only >> c & 1)) continue;
      const float inv0 = 1.0f / scale[2 * c], inv1 = 1.0f / scale[2 * c + 1];
      // fp16 V times the inverse scale in f16x2, then e4m3 from f16x2: half the instructions of
      // fp32, where the inverse fits (the product's double rounding is far below e4m3's step).
      uint8_t* rows = out + 2 * c * int64_t(p.padded_len);
      float2 a = !Half2<T>::kBf16 && fmaxf(inv0, inv1) <= 32768.0f
                     ? encode_pair<true>(row, c, half, inv0, inv1, rows, p.padded_len)
                     : encode_pair<false>(row, c, half, inv0, inv1, rows, p.padded_len);
      a.x = fmaxf(a.x, __shfl_xor_sync(pair, a.x, 1));
      a.y = fmaxf(a.y, __shfl_xor_sync(pair, a.y, 1));
      if (half == 0 && a.x > limit[2 * c]) int8::atomic_amax(&p.v_overflow[bh * D + 2 * c], a.x);
      if (half == 0 && a.y > limit[2 * c + 1]) int8::atomic_amax(&p.v_overflow[bh * D + 2 * c + 1], a.y);
    }
  }
  // Channels 2c, 2c + 1 of half `half` of each 32-key group of the chunk to rows `out` and
  // `out + stride` of V^T; returns their |v| maxima over those keys.
  template <bool kF16, typename Row>
  __device__ static float2 encode_pair(Row row, int c, int half, float inv0, float inv1, uint8_t* out, int stride) {
    const __half2 inv = __floats2half2_rn(inv0, inv1);
    H2 amax = Half2<T>::from_floats(0.0f, 0.0f);  // channel 2c in the low half
#pragma unroll 1
    for (int q = half; q < kKeys / 16; q += 2) {  // 16 keys: words 4 (q % 2) .. + 3 of 32-key group q / 2
      uint32_t w0[4], w1[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int b = 32 * (q / 2) + 16 * (q % 2) + 2 * i;
        const uint32_t r0 = row(b, c), r1 = row(b + 1, c), r8 = row(b + 8, c), r9 = row(b + 9, c);
        amax = __hmax2(amax, __hmax2(__hmax2(habs(r0), habs(r1)), __hmax2(habs(r8), habs(r9))));
        const uint32_t x0 = __byte_perm(r0, r1, 0x5410), x1 = __byte_perm(r0, r1, 0x7632);
        const uint32_t y0 = __byte_perm(r8, r9, 0x5410), y1 = __byte_perm(r8, r9, 0x7632);
        if constexpr (kF16) {
          w0[i] = e4m3x4_f16(x0, y0, __low2half2(inv));
          w1[i] = e4m3x4_f16(x1, y1, __high2half2(inv));
        } else {
          w0[i] = e4m3x4_f32(x0, y0, inv0);
          w1[i] = e4m3x4_f32(x1, y1, inv1);
        }
      }
      *reinterpret_cast<uint4*>(out + 16 * q) = make_uint4(w0[0], w0[1], w0[2], w0[3]);
      *reinterpret_cast<uint4*>(out + stride + 16 * q) = make_uint4(w1[0], w1[1], w1[2], w1[3]);
    }
    return Half2<T>::to_floats(amax);
  }
  __device__ static H2 habs(uint32_t pair) { return __habs2(*reinterpret_cast<const H2*>(&pair)); }
  // Keys (b, b + 1) in `lo` and (b + 8, b + 9) in `hi`, one channel, as a word of 4 e4m3 bytes.
  __device__ static uint32_t e4m3x4_f16(uint32_t lo, uint32_t hi, __half2 inv) {
    const __half2 a = __hmul2(*reinterpret_cast<const __half2*>(&lo), inv);
    const __half2 b = __hmul2(*reinterpret_cast<const __half2*>(&hi), inv);
    return ptx::cvt_e4m3x2_from_f16x2(*reinterpret_cast<const uint32_t*>(&a)) |
           uint32_t(ptx::cvt_e4m3x2_from_f16x2(*reinterpret_cast<const uint32_t*>(&b))) << 16;
  }
  __device__ static uint32_t e4m3x4_f32(uint32_t lo, uint32_t hi, float inv) {
    const float2 a = Half2<T>::to_floats(*reinterpret_cast<const H2*>(&lo));
    const float2 b = Half2<T>::to_floats(*reinterpret_cast<const H2*>(&hi));
    return ptx::cvt_e4m3x2(a.x * inv, a.y * inv) | uint32_t(ptx::cvt_e4m3x2(b.x * inv, b.y * inv)) << 16;
  }

  // The head's last chunk: channels that overflowed are encoded again with their maximum (from
  // V in global memory: rare), then every scale is final and the head is published.
  __device__ static void finish_head(const KvStreamParams& p, int bh, int lane) {
    uint64_t redo = 0;  // bit c: channel pair c overflowed (the same in every lane)
    for (int c = lane; c < D / 2; c += 32) {
      const int i = bh * D + 2 * c;
      const float o0 = ld_relaxed(p.v_overflow + i), o1 = ld_relaxed(p.v_overflow + i + 1);
      redo |= uint64_t(__ballot_sync(0xffffffffu, o0 > 0.0f || o1 > 0.0f)) << (c - lane);
      p.v_scale[i] = e4m3_scale(fmaxf(p.v_limit[i], o0));
      p.v_scale[i + 1] = e4m3_scale(fmaxf(p.v_limit[i + 1], o1));
    }
    if (redo != 0) {
      __syncwarp();  // the scales just written, to the lanes that encode with them
      const T* v = static_cast<const T*>(p.v) + (bh / p.heads) * p.v_stride_b + (bh % p.heads) * p.v_stride_h;
      for (int k0 = 0; k0 < p.padded_len; k0 += kKeys) {
        auto row = [&](int k, int c) -> uint32_t {
          return k0 + k < p.len ? *reinterpret_cast<const uint32_t*>(v + (k0 + k) * p.v_stride_n + 2 * c) : 0u;
        };
        encode_v(p, row, bh, k0, lane, p.v_scale + bh * D, p.v_limit + bh * D, redo);
      }
    }
    __syncwarp();
    if (lane == 0) {
      __threadfence();
      asm volatile("st.release.gpu.global.s32 [%0], 1;\n" ::"l"(p.ready + bh) : "memory");
    }
  }
  __device__ static float ld_relaxed(const float* x) {
    float v;
    asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];\n" : "=f"(v) : "l"(x) : "memory");
    return v;
  }

  // ---------------------------------------------------------------- a worker
  __device__ static void run(const KvStreamParams& p) {
    extern __shared__ __align__(128) uint8_t cta_smem[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int worker = blockIdx.x * kWarps + warp, workers = gridDim.x * kWarps;
    uint8_t* const smem = cta_smem + warp * kWorkerSmemBytes;
    const uint32_t stages = ptx::smem_addr(smem), full = stages + kBarriersAt;
    if (lane < kStages) ptx::mbar_init(full + 8 * lane, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncwarp();
    ptx::wait_prior_grids();  // (launch_after) and lets the attention kernel launch now
    const int per_head = chunks_per_head(p), total = per_head * p.heads * p.batch;
    auto issue = [&](int n) {  // this worker's n-th chunk and its parameters into stage n % kStages
      const int chunk = chunk_of(worker, workers, n);
      if (lane != 0 || chunk >= total) return;
      const int bh = chunk / per_head, j = chunk % per_head, s = n % kStages;
      const uint32_t bar = full + 8 * s, params = stages + kParamsAt + s * kParamBytes;
      const bool v = j % 2, mean = !v && p.k_mean != nullptr;
      sm90::mbar_arrive_expect_tx(bar, kChunkBytes + (v ? 2 : mean) * D * 4);
      sm90::tma_load_4d(stages + s * kChunkBytes, v ? &p.v_map : &p.k_map, bar, 0, (j / 2) * kKeys, bh % p.heads,
                        bh / p.heads);
      if (v) {
        sm90::bulk_load(params, p.v_scale + bh * D, D * 4, bar);
        sm90::bulk_load(params + D * 4, p.v_limit + bh * D, D * 4, bar);
      } else if (mean) {
        sm90::bulk_load(params, p.k_mean + bh * D, D * 4, bar);
      }
    };
    for (int n = 0; n < kStages - 1; ++n) issue(n);
    for (int n = 0;; ++n) {
      const int chunk = chunk_of(worker, workers, n);
      if (chunk >= total) break;
      issue(n + kStages - 1);
      const int s = n % kStages;
      ptx::mbar_wait(full + 8 * s, (n / kStages) & 1);
      const int bh = chunk / per_head, j = chunk % per_head, k0 = (j / 2) * kKeys;
      const uint4* rows = reinterpret_cast<const uint4*>(smem + s * kChunkBytes);
      const float* params = reinterpret_cast<const float*>(smem + kParamsAt + s * kParamBytes);
      if (j % 2 == 0) {
        if (k0 < p.len) encode_k(p, rows, p.k_mean ? params : nullptr, bh, k0, lane);
      } else {
        const uint32_t* words = reinterpret_cast<const uint32_t*>(rows);
        encode_v(p, [&](int k, int c) { return words[k * (D / 2) + c]; }, bh, k0, lane, params, params + D);
      }
      __syncwarp();  // every lane is done with the stage (it is loaded again next) and has written
      if (n % kUnit != kUnit - 1) continue;
      int last = 0;
      if (lane == 0) {
        __threadfence();
        last = atomicAdd(p.done + bh, 1) == per_head / kUnit - 1;
      }
      if (__shfl_sync(0xffffffffu, last, 0)) {
        __threadfence();  // every unit's writes (their atomics: v_overflow) before the head's are read
        finish_head(p, bh, lane);
      }
    }
  }
};

// kWarps warps an SM, at most 32 registers each: what the attention kernel's CTA leaves in each
// scheduler quarter's register file (384 threads at 160).
template <typename T, int D, bool kPerThread>
__global__ void __maxnreg__(32) kv_stream_kernel(const __grid_constant__ KvStreamParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  KvStream<T, D, kPerThread>::run(p);
#endif
}

}  // namespace sage
