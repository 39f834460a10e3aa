/* vosrt CPU operators: fast host implementations of the two custom operators, plain C API.
 *
 *   D2Conv3D         dynamic dilated 3D convolution: trilinear sampled columns, then a GEMM, in tiles
 *   L2MemoryReadout  STCN top-k L2 memory read, fused: affinity tile -> top-k -> softmax -> gather;
 *                    the N x M affinity is never materialised
 *
 * Semantics are those of shared/ARCHITECTURE.md (operators 1 and 2) and of the CUDA kernels, whose
 * __host__ __device__ math headers (plugins/kernels/src, the _math.h files) this library compiles as well.
 * Pointers are host pointers to dense, contiguous, row-major float32 tensors; shapes and parameter
 * structs are those of vosrt_kernels.h. `threads` <= 0 uses every hardware thread. Calls are
 * synchronous and thread-safe; no state is kept between calls.
 *
 * ONNX Runtime runs these through operators that need no ONNX Runtime headers (vosrt.sdk.cpu_ops).
 */
#ifndef VOSRT_CPU_OPS_H
#define VOSRT_CPU_OPS_H

#ifndef VOSRT_KERNELS_NO_CUDA_RUNTIME
#define VOSRT_KERNELS_NO_CUDA_RUNTIME 1
#endif
#include "vosrt_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VOSRT_CPU_OPS_VERSION 1

int vosrtCpuOpsVersion(void);
vosrtStatus_t vosrtCpuOpsD2Conv3DOutputShape(const vosrtD2Conv3DParams* p, int out_thw[3]);
vosrtStatus_t vosrtCpuOpsD2Conv3DForward(const vosrtD2Conv3DParams* p, const float* x, const float* dilation,
    const float* modulation /* may be NULL */, const float* weight, const float* bias /* may be NULL */,
    float* y, int threads);
/* top_k 0 (or >= N) reads all N entries with an online softmax; 1..VOSRT_L2_READOUT_MAX_TOP_K otherwise. */
vosrtStatus_t vosrtCpuOpsL2ReadoutForward(const vosrtL2ReadoutParams* p, const float* mem_key,
    const float* query_key, const float* mem_value, float* out, int threads);

#ifdef __cplusplus
}
#endif

#endif /* VOSRT_CPU_OPS_H */
