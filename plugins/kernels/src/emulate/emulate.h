// Host emulation of the few CUDA features the fp32 kernels use, so that CI (no GPU) can run the kernels'
// own code — indexing, tiling, shared-memory staging, barriers, atomics, the host-side orchestration —
// on the CPU: every block runs as blockDim std::threads meeting at a std::barrier for __syncthreads().
// Warp-collective WMMA is modelled by its meaning, not its register layout: every lane loads the whole
// 16×16 operands and computes and stores its own eighth of the result (so the callers'
// __syncwarp/__syncthreads still matter). cp.async copies land only when the kernel waits for them.
// fp16 is GCC's _Float16. Slow by design; small shapes only.
// Included instead of the CUDA headers when VOSRT_EMULATE is defined (see libvosrt_kernels_emu).
#ifndef VOSRT_EMULATE_H
#define VOSRT_EMULATE_H

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "vosrt_kernels.h"  // cudaStream_t (built with VOSRT_KERNELS_NO_CUDA_RUNTIME)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace vosrt_emu {
// cudaGetLastError's state, per host thread as in CUDA; tests set it (stale errors) and make launches fail
// (vosrtEmuSetLastError, vosrtEmuFailLaunch in api_emu.cpp).
inline thread_local int last_error = 0;
inline thread_local int launches_until_failure = 0;  // 0: never fail; n: the n-th launch from now fails
inline thread_local dim3 thread_index, block_index;
inline dim3 grid_dim, block_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::barrier<>*> warp_barriers;
// A launch's dynamic shared memory: exactly the bytes it asked for, 128-byte aligned, so a read or write past
// its end is outside the allocation (AddressSanitizer reports it), as it is outside the block's on a GPU.
struct SharedFree {
  void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(128)); }
};
inline std::unique_ptr<unsigned char[], SharedFree> dynamic_shared;
inline unsigned char* dynamic_shared_base = nullptr;
// A fault inside a kernel thread (a misaligned cp.async): the launch then reports it as CUDA would.
inline std::atomic<int> kernel_fault{0};

// cp.async (cuda_pipeline.h): a thread's copies are queued in commit groups and land only when
// __pipeline_wait_prior lets their group complete, so a kernel that reads a stage before waiting for it
// reads stale shared memory, as it may on a GPU.
struct AsyncCopy {
  void* dst;
  const void* src;
  size_t bytes, zfill;
};
inline thread_local std::vector<AsyncCopy> open_copies;
inline thread_local std::vector<std::vector<AsyncCopy>> committed_copies;  // oldest first
// Test hooks (api_emu.cpp): cp.async copies issued, by size in bytes, and the opt-in shared-memory limit.
inline std::atomic<long long> async_copies[17];
inline int shared_limit = 227 * 1024;  // an H100's or H200's
inline int device_id = 0;              // a new "device" each time the test hooks change its shared limit
// cudaFuncAttributeMaxDynamicSharedMemorySize of each kernel (by address) that set one; 48 KB otherwise.
inline std::mutex function_limits_lock;
inline std::map<const void*, int> function_limits;
inline int dynamic_shared_limit(const void* kernel) {
  std::lock_guard<std::mutex> hold(function_limits_lock);
  const auto found = function_limits.find(kernel);
  return found == function_limits.end() ? 48 * 1024 : found->second;
}

// Schedules of a block's warps (test hook vosrtEmuSetSchedule). 0, the default: all threads of a block run
// at once, interleaved as the OS pleases, meeting at std::barriers. 1, 2, 3: between two __syncthreads the
// warps run one after another (each warp's lanes together), in ascending, descending, or a fresh
// pseudo-random order every phase. Then a warp sees every shared-memory write of the warps before it in its
// phase and none of those after it: the orderings that show a missing barrier (a read of another warp's
// data before the barrier that publishes it, or an overwrite while another warp still reads), which free
// host threads, released together from each barrier, almost never produce.
inline int schedule = 0;
// Eager copies (same hook): a cp.async also lands as soon as it is issued, as it may on a GPU, not only when
// its group is waited for: an overwrite of a stage that another warp still reads then shows.
inline bool eager_copies = false;

struct WarpTurns {
  std::mutex lock;
  std::condition_variable changed;
  std::vector<int> order, live, pending;  // run order of the warps; lanes alive; lanes yet to arrive
  size_t pos = 0;                         // order[pos] runs now
  unsigned long long phase = 0;

  explicit WarpTurns(unsigned threads) {
    for (unsigned w = 0; w < threads; w += 32) live.push_back((int)std::min(32u, threads - w));
    order.resize(live.size());
    pending.resize(live.size());
    start_phase();
  }
  void start_phase() {  // lock held (or not yet shared)
    const int warps = (int)live.size();
    for (int w = 0; w < warps; ++w) {
      order[w] = schedule == 2 ? warps - 1 - w : w;
      pending[w] = live[w];
    }
    if (schedule == 3) {
      std::mt19937 rng((unsigned)(phase * 2654435761u + 12345u));
      std::shuffle(order.begin(), order.end(), rng);
    }
    pos = 0;
    skip_done();
  }
  void skip_done() {
    while (pos < order.size() && pending[order[pos]] == 0) ++pos;
  }
  // Thread start: wait for the warp's turn in the first phase.
  void begin(int warp) {
    std::unique_lock<std::mutex> hold(lock);
    changed.wait(hold, [&] { return pos < order.size() && order[pos] == warp; });
  }
  // A lane of `warp` reaches __syncthreads (or ends: exiting); returns when its warp's turn comes in the
  // next phase.
  void arrive(int warp, bool exiting) {
    std::unique_lock<std::mutex> hold(lock);
    const unsigned long long mine = phase;
    if (exiting) --live[warp];
    if (--pending[warp] == 0) {
      skip_done();
      if (pos == order.size()) {  // every live thread is at the barrier: the next phase begins
        ++phase;
        start_phase();
      }
      changed.notify_all();
    }
    if (exiting) return;
    changed.wait(hold, [&] { return phase != mine && pos < order.size() && order[pos] == warp; });
  }
};
inline WarpTurns* warp_turns = nullptr;

// Runs kernel(args...) over the grid, one block at a time, blockDim threads per block.
template <typename Kernel>
struct Launch {
  Kernel kernel;
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;  // launches run synchronously, in order
  template <typename... Args>
  void operator()(Args... args) const {
    if (launches_until_failure > 0 && --launches_until_failure == 0) {
      last_error = 719;  // cudaErrorLaunchFailure; the kernel does not run
      return;
    }
    // The launch limits a GPU enforces: grid and block sizes, and dynamic shared memory above the
    // kernel's limit (48 KB unless cudaFuncSetAttribute raised it).
    if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535 ||
        block.x * block.y * block.z < 1 || block.x * block.y * block.z > 1024 || block.z > 64) {
      last_error = 9;  // cudaErrorInvalidConfiguration
      return;
    }
    if (shared_bytes > (size_t)dynamic_shared_limit(reinterpret_cast<const void*>(kernel))) {
      last_error = 1;  // cudaErrorInvalidValue
      return;
    }
    grid_dim = grid;
    block_dim = block;
    dynamic_shared.reset(
        static_cast<unsigned char*>(::operator new[](std::max<size_t>(shared_bytes, 1), std::align_val_t(128))));
    std::memset(dynamic_shared.get(), 0xFF, shared_bytes);  // NaN-filled: reading unwritten shared memory shows
    dynamic_shared_base = dynamic_shared.get();
    const unsigned threads = block.x * block.y * block.z;
    kernel_fault = 0;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          std::barrier<> barrier((std::ptrdiff_t)threads);
          block_barrier = &barrier;
          std::vector<std::unique_ptr<std::barrier<>>> warps;
          warp_barriers.clear();
          for (unsigned w = 0; w < threads; w += 32) {
            warps.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, threads - w)));
            warp_barriers.push_back(warps.back().get());
          }
          std::unique_ptr<WarpTurns> turns(schedule != 0 ? new WarpTurns(threads) : nullptr);
          warp_turns = turns.get();
          std::vector<std::thread> pool;
          pool.reserve(threads);
          for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
              block_index = dim3(bx, by, bz);
              thread_index = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              if (warp_turns) warp_turns->begin((int)(t / 32));
              kernel(args...);
              // a finished thread no longer holds back the others' barriers
              if (warp_turns) warp_turns->arrive((int)(t / 32), true);
              barrier.arrive_and_drop();
              warp_barriers[t / 32]->arrive_and_drop();
            });
          for (auto& th : pool) th.join();
          warp_turns = nullptr;
        }
    if (kernel_fault != 0) last_error = kernel_fault;
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
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define VOSRT_DYNAMIC_SHARED(name) unsigned char* name = vosrt_emu::dynamic_shared_base
#define VOSRT_LAUNCH(kernel, grid, block, shared, stream) \
  vosrt_emu::Launch<decltype(kernel)>{kernel, dim3(grid), dim3(block), (size_t)(shared), stream}

inline void __syncthreads() {
  if (vosrt_emu::warp_turns) vosrt_emu::warp_turns->arrive((int)(threadIdx.x / 32), false);
  else vosrt_emu::block_barrier->arrive_and_wait();
}
inline void __syncwarp() { vosrt_emu::warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

namespace vosrt_emu {
inline void land(const AsyncCopy& c) {
  std::memcpy(c.dst, c.src, c.bytes - c.zfill);
  std::memset(static_cast<unsigned char*>(c.dst) + (c.bytes - c.zfill), 0, c.zfill);
}
}  // namespace vosrt_emu
inline void __pipeline_memcpy_async(void* dst, const void* src, size_t size_and_align, size_t zfill = 0) {
  const bool size_ok = size_and_align == 4 || size_and_align == 8 || size_and_align == 16;
  if (!size_ok || zfill > size_and_align || reinterpret_cast<size_t>(dst) % size_and_align != 0 ||
      reinterpret_cast<size_t>(src) % size_and_align != 0) {
    vosrt_emu::kernel_fault = 716;  // cudaErrorMisalignedAddress
    return;
  }
  vosrt_emu::open_copies.push_back({dst, src, size_and_align, zfill});
  if (vosrt_emu::eager_copies) vosrt_emu::land(vosrt_emu::open_copies.back());
  ++vosrt_emu::async_copies[size_and_align];
}
inline void __pipeline_commit() {
  vosrt_emu::committed_copies.push_back(std::move(vosrt_emu::open_copies));
  vosrt_emu::open_copies.clear();
}
// Completes every committed group but the newest `prior`. With eager copies the groups still in flight (and
// the copies not yet committed) land again after them: on a GPU they may complete in any order, so also last.
inline void __pipeline_wait_prior(size_t prior) {
  auto& groups = vosrt_emu::committed_copies;
  while (groups.size() > prior) {
    for (const auto& c : groups.front()) vosrt_emu::land(c);
    groups.erase(groups.begin());
  }
  if (vosrt_emu::eager_copies) {
    for (const auto& group : groups)
      for (const auto& c : group) vosrt_emu::land(c);
    for (const auto& c : vosrt_emu::open_copies) vosrt_emu::land(c);
  }
}
using std::max;
using std::min;

// ---- fp16 and WMMA (16×16×16, fp32 accumulators) ----
using __half = _Float16;
inline float __half2float(__half v) { return (float)v; }
inline __half __float2half_rn(float v) { return (__half)v; }

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

// A fragment of a 16×16×K tile; element (r, c) of the logical matrix is x[r·cols + c].
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && (K == 16 || K == 8), "only 16x16x16 and 16x16x8 are emulated");
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  using element_type = typename std::conditional<std::is_same<T, precision::tf32>::value, float, T>::type;
  element_type x[rows * cols];
};

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
}
template <int K>
inline void fill_fragment(fragment<accumulator, 16, 16, K, float>& f, float value) {
  for (auto& v : f.x) v = value;
}

// TF32: 10 explicit mantissa bits, rounded to nearest.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  unsigned bits;
  std::memcpy(&bits, &v, 4);
  bits = (bits + 0x1000u) & 0xFFFFE000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

// Lane l owns row l/2, columns 8·(l%2) .. +7 of the 16×16 result, as in a real fragment each lane holds
// a distinct eighth; it computes and stores only those (callers sync the warp before reading them).
inline int lane_row() { return (int)(threadIdx.x % 32) / 2; }
inline int lane_col0() { return (int)(threadIdx.x % 2) * 8; }

template <int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, K, float>& d, const fragment<matrix_a, 16, 16, K, T, LA>& a,
                     const fragment<matrix_b, 16, 16, K, T, LB>& b, const fragment<accumulator, 16, 16, K, float>& c) {
  // Products exact, their sum with c truncated to fp32 (rounded toward zero), as tensor cores accumulate
  // (Fasi et al. 2021): a long sum kept in the accumulator drifts toward zero here as it does on a GPU.
  const int i = lane_row();
  for (int j = lane_col0(); j < lane_col0() + 8; ++j) {
    double sum = c.x[i * 16 + j];
    for (int k = 0; k < K; ++k) sum += (double)(float)a.x[i * K + k] * (double)(float)b.x[k * 16 + j];
    float r = (float)sum;
    if (std::fabs((double)r) > std::fabs(sum)) r = std::nextafter(r, 0.f);
    d.x[i * 16 + j] = r;
  }
}
template <int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, K, float>& f, unsigned ldm,
                              layout_t layout) {
  const int i = lane_row();
  for (int j = lane_col0(); j < lane_col0() + 8; ++j)
    (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.x[i * 16 + j];
}
}  // namespace wmma
}  // namespace nvcuda

// The CUDA runtime calls the kernels' host code makes.
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;   // the runtime's value
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
struct cudaFuncAttributes {
  size_t sharedSizeBytes;  // static shared memory: none in the kernels that ask (their tiles are dynamic)
};
// Four "SMs": small enough that the readout splits N even for the small test shapes.
inline cudaError_t cudaGetDevice(int* device) { *device = vosrt_emu::device_id; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? 4 : vosrt_emu::shared_limit;
  return cudaSuccess;
}
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void*) {
  attributes->sharedSizeBytes = 0;
  return cudaSuccess;
}
// As on a GPU, the limit may not exceed the opt-in limit less the kernel's static shared memory (none here).
inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute, int value) {
  if (value < 0 || value > vosrt_emu::shared_limit) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> hold(vosrt_emu::function_limits_lock);
  vosrt_emu::function_limits[kernel] = value;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t error = vosrt_emu::last_error;
  vosrt_emu::last_error = cudaSuccess;
  return error;
}

#endif  // VOSRT_EMULATE_H
