/* CPU driver of the vosrt kernels (libvosrt_kernels_cpu.so): the same index, interpolation, top-k and
 * softmax math as the CUDA kernels (shared __host__ __device__ headers in src/), run on host fp32 arrays.
 * It exists so that CI, without a GPU, checks the kernels' arithmetic against the PyTorch references.
 * Slow by design (naive loops); not a CPU backend. Shapes and layouts are those of vosrt_kernels.h.
 */
#ifndef VOSRT_KERNELS_CPU_H
#define VOSRT_KERNELS_CPU_H

#include "vosrt_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

vosrtStatus_t vosrtCpuD2Conv3DOutputShape(const vosrtD2Conv3DParams* p, int out_thw[3]);
vosrtStatus_t vosrtCpuD2Conv3DForward(const vosrtD2Conv3DParams* p, const float* x, const float* dilation,
    const float* modulation /* may be NULL */, const float* weight, const float* bias /* may be NULL */, float* y);
/* Gradients are overwritten; any may be NULL. */
vosrtStatus_t vosrtCpuD2Conv3DBackward(const vosrtD2Conv3DParams* p, const float* x, const float* dilation,
    const float* modulation, const float* weight, const float* grad_y, float* grad_x, float* grad_dilation,
    float* grad_modulation, float* grad_weight, float* grad_bias);
vosrtStatus_t vosrtCpuL2ReadoutForward(const vosrtL2ReadoutParams* p, const float* mem_key, const float* query_key,
    const float* mem_value, float* out);

#ifdef __cplusplus
}
#endif

#endif /* VOSRT_KERNELS_CPU_H */
