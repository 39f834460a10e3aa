// Helpers shared by the CUDA kernels and the CPU driver: one spelling of loads, stores and
// accumulation for fp32 and fp16, so the same __host__ __device__ math runs on either side.
#ifndef VOSRT_KERNELS_COMMON_H
#define VOSRT_KERNELS_COMMON_H

#include <math.h>
#include <stddef.h>

#if defined(VOSRT_EMULATE)
#include "emulate/emulate.h"
#endif

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define VOSRT_HD __host__ __device__ __forceinline__
#else
#define VOSRT_HD inline
#endif

// Full unrolling keeps small fixed-size arrays (corners, top-k lists, register tiles) in registers.
// (nvcc's host pass gets nothing: its front end rejects the GCC spelling and gcc the CUDA one.)
#if defined(__CUDA_ARCH__)
#define VOSRT_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define VOSRT_UNROLL
#else
#define VOSRT_UNROLL _Pragma("GCC unroll 64")
#endif
// A loop with a long body that must stay rolled (register pressure).
#if defined(__CUDA_ARCH__)
#define VOSRT_NO_UNROLL _Pragma("unroll 1")
#else
#define VOSRT_NO_UNROLL
#endif

namespace vosrt {

VOSRT_HD float to_float(float v) { return v; }
VOSRT_HD void store(float* dst, float v) { *dst = v; }

#if defined(__CUDACC__) || defined(VOSRT_EMULATE)
VOSRT_HD float to_float(__half v) { return __half2float(v); }
VOSRT_HD void store(__half* dst, float v) { *dst = __float2half_rn(v); }
#endif

// Scatter-add of a gradient: an atomic on the device (many threads hit one voxel), a plain add on the host.
VOSRT_HD void accumulate(float* dst, float v) {
#if defined(__CUDA_ARCH__) || defined(VOSRT_EMULATE)
  atomicAdd(dst, v);
#else
  *dst += v;
#endif
}

}  // namespace vosrt

#endif  // VOSRT_KERNELS_COMMON_H
