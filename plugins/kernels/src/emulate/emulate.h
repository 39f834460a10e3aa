// Host emulation of the few CUDA features the fp32 kernels use, so that CI (no GPU) can run the kernels'
// own code — indexing, tiling, shared-memory staging, barriers, atomics, the host-side orchestration —
// on the CPU: every block runs as blockDim std::threads meeting at a std::barrier for __syncthreads().
// Slow by design; small shapes only. The fp16 paths (tensor cores) are not emulated.
// Included instead of the CUDA headers when VOSRT_EMULATE is defined (see libvosrt_kernels_emu).
#ifndef VOSRT_EMULATE_H
#define VOSRT_EMULATE_H

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <thread>
#include <vector>

#include "vosrt_kernels.h"  // cudaStream_t (built with VOSRT_KERNELS_NO_CUDA_RUNTIME)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};

namespace vosrt_emu {
inline thread_local dim3 thread_index, block_index;
inline dim3 grid_dim, block_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<unsigned char> dynamic_shared;  // 128-byte aligned by allocation below
inline unsigned char* dynamic_shared_base = nullptr;

// Runs kernel(args...) over the grid, one block at a time, blockDim threads per block.
template <typename Kernel>
struct Launch {
  Kernel kernel;
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;  // launches run synchronously, in order
  template <typename... Args>
  void operator()(Args... args) const {
    grid_dim = grid;
    block_dim = block;
    dynamic_shared.assign(shared_bytes + 256, 0);
    const size_t addr = reinterpret_cast<size_t>(dynamic_shared.data());
    dynamic_shared_base = dynamic_shared.data() + ((128 - addr % 128) % 128);
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          std::barrier<> barrier((std::ptrdiff_t)threads);
          block_barrier = &barrier;
          std::vector<std::thread> pool;
          pool.reserve(threads);
          for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
              block_index = dim3(bx, by, bz);
              thread_index = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              kernel(args...);
              barrier.arrive_and_drop();  // a finished thread no longer holds back the others' barriers
            });
          for (auto& th : pool) th.join();
        }
  }
};
}  // namespace vosrt_emu

#define threadIdx vosrt_emu::thread_index
#define blockIdx vosrt_emu::block_index
#define blockDim vosrt_emu::block_dim
#define gridDim vosrt_emu::grid_dim
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define VOSRT_DYNAMIC_SHARED(name) unsigned char* name = vosrt_emu::dynamic_shared_base
#define VOSRT_LAUNCH(kernel, grid, block, shared, stream) \
  vosrt_emu::Launch<decltype(kernel)>{kernel, dim3(grid), dim3(block), (size_t)(shared), stream}

inline void __syncthreads() { vosrt_emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp() {}
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
using std::max;
using std::min;

// The CUDA runtime calls the kernels' host code makes.
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
// Four "SMs": small enough that the readout splits N even for the small test shapes.
inline cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? 4 : 227 * 1024;
  return cudaSuccess;
}
inline cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

#endif  // VOSRT_EMULATE_H
