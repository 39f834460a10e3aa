// Small host helpers shared by the .cu files.
#ifndef VOSRT_KERNELS_LAUNCH_H
#define VOSRT_KERNELS_LAUNCH_H

#include <cuda_runtime_api.h>

#include "vosrt_kernels.h"

namespace vosrt {

inline unsigned ceil_div(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

// Status of the launches made so far on this thread.
inline vosrtStatus_t launch_status() {
  return cudaGetLastError() == cudaSuccess ? VOSRT_SUCCESS : VOSRT_ERROR_CUDA;
}

inline size_t element_size(vosrtDataType_t dtype) { return dtype == VOSRT_FLOAT16 ? 2 : 4; }

inline bool known_dtype(vosrtDataType_t dtype) { return dtype == VOSRT_FLOAT32 || dtype == VOSRT_FLOAT16; }

}  // namespace vosrt

#endif  // VOSRT_KERNELS_LAUNCH_H
