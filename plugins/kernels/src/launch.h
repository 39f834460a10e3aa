// Small host helpers shared by the .cu files.
#ifndef VOSRT_KERNELS_LAUNCH_H
#define VOSRT_KERNELS_LAUNCH_H

#include "vosrt_kernels.h"

#if defined(VOSRT_EMULATE)
#include "emulate/emulate.h"
#else
#include <cuda_runtime_api.h>
// kernel must name a function pointer: VOSRT_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...)
#define VOSRT_LAUNCH(kernel, grid, block, shared, stream) kernel<<<grid, block, shared, stream>>>
#define VOSRT_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace vosrt {

inline unsigned ceil_div(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

// Status of the launches made since the last check on this thread (cudaGetLastError also resets it).
inline vosrtStatus_t launch_status() {
  return cudaGetLastError() == cudaSuccess ? VOSRT_SUCCESS : VOSRT_ERROR_CUDA;
}

// Every entry point calls this before its first launch: an error left behind by unrelated earlier work
// on this thread (a failed cudaMalloc of the host program, say) must not be reported as ours. A sticky
// error (a crashed context) cannot be cleared; the launches then fail and are reported.
inline void clear_stale_error() { (void)cudaGetLastError(); }

inline size_t element_size(vosrtDataType_t dtype) { return dtype == VOSRT_FLOAT16 ? 2 : 4; }

inline bool known_dtype(vosrtDataType_t dtype) { return dtype == VOSRT_FLOAT32 || dtype == VOSRT_FLOAT16; }

}  // namespace vosrt

#endif  // VOSRT_KERNELS_LAUNCH_H
