// Programmatic dependent launch (sm_90 and newer): the quantization passes and the Hopper
// kernel run back to back, and each launch otherwise leaves the GPU idle between the end of
// one kernel and the start of the next (launch latency, the last CTAs draining). A kernel
// launched by launch_after may start while the stream's previous kernel finishes: its CTAs
// become resident and do their setup, then ptx::wait_prior_grids() blocks until the previous
// kernel has completed and its memory operations are visible.
//
// The rule every kernel launched this way keeps: it touches no global memory before
// wait_prior_grids() (not even its inputs: their buffers may still be read or written by
// the previous kernel, the caching allocator having reused them; an L2 prefetch, which reads
// nothing into the kernel, may: kv_stream.cuh's prefetch_sample_row). wait_prior_grids() then
// lets the next kernel launch.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <utility>

namespace sage {

// Whether `kernel` runs code built for sm_90 or newer on the current device, and so calls
// the griddepcontrol instructions: a build without sm_90 code, JIT-compiled from older
// PTX, leaves them out and must be launched normally. Asked once per kernel and device.
inline bool has_grid_dependency_control(const void* kernel) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, bool> known;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(kernel, device);
  auto it = known.find(key);
  if (it == known.end()) {
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    it = known.emplace(key, attributes.ptxVersion >= 90).first;
  }
  return it->second;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent launch
// where the kernel supports it (see the rules above), else as a normal launch.
template <typename... Params, typename... Args>
void launch_after(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                  Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed =
      has_grid_dependency_control(reinterpret_cast<const void*>(kernel));
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace sage
