/* vosrt CUDA kernels: a plain C API for the two custom operators of vosrt.
 *
 *   D2Conv3D         dynamic dilated 3D convolution (D2Conv3D paper, Eq. 3), forward and backward
 *   L2MemoryReadout  STCN top-k L2 memory read, fused (the N x M affinity never reaches memory)
 *
 * Semantics are the contract in shared/ARCHITECTURE.md (operators 1 and 2). Every pointer is a device
 * pointer to a dense, contiguous, row-major tensor; all tensors of one call share one data type.
 * Every function is asynchronous on `stream` and returns VOSRT_ERROR_CUDA if one of its launches failed;
 * an error left pending by earlier, unrelated CUDA work on the calling thread is cleared on entry, not
 * reported.
 * The TensorRT plugins (plugins/trt/) are thin shells around these functions.
 */
#ifndef VOSRT_KERNELS_H
#define VOSRT_KERNELS_H

#include <stddef.h>
#ifdef VOSRT_KERNELS_NO_CUDA_RUNTIME
/* Host-only users (the CPU driver) need the parameter structs, not the CUDA runtime. */
typedef struct CUstream_st* cudaStream_t;
#else
#include <cuda_runtime_api.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define VOSRT_KERNELS_VERSION 1

/* Largest top_k the fused readout holds on chip; top_k = 0 (all N) has no limit. */
#define VOSRT_L2_READOUT_MAX_TOP_K 64

typedef enum {
  VOSRT_SUCCESS = 0,
  VOSRT_ERROR_INVALID_VALUE = 1,
  VOSRT_ERROR_NOT_SUPPORTED = 2,
  VOSRT_ERROR_CUDA = 3,
  VOSRT_ERROR_WORKSPACE = 4,
  VOSRT_ERROR_HOST_RESOURCES = 5 /* host memory or threads could not be had; the output is incomplete */
} vosrtStatus_t;

/* All tensors of one call share it. */
typedef enum { VOSRT_FLOAT32 = 0, VOSRT_FLOAT16 = 1 } vosrtDataType_t;

/* ------------------------------------------------------------------------------------------------ */
/* D2Conv3D                                                                                          */
/*   X [N, C, T, H, W], D [N, 3, To, Ho, Wo] (t, y, x), M [N, K, To, Ho, Wo] (optional, K = kt*kh*kw),  */
/*   Wt [Cout, C/groups, kt, kh, kw], B [Cout] (optional)  ->  Y [N, Cout, To, Ho, Wo]                */
/* ------------------------------------------------------------------------------------------------ */
typedef struct {
  int batch, in_channels, in_t, in_h, in_w;                  /* X [N, C, T, H, W] */
  int out_channels, groups;
  int kernel[3]; int stride[3]; int pad[3]; int dilation[3]; /* (t, h, w) */
  int has_modulation, has_bias;
} vosrtD2Conv3DParams;

/* To, Ho, Wo = (size + 2*pad - dilation*(k-1) - 1) / stride + 1. */
vosrtStatus_t vosrtD2Conv3DOutputShape(const vosrtD2Conv3DParams* p, int out_thw[3]);
/* VOSRT_SUCCESS if the parameters describe a valid convolution with a non-empty output. */
vosrtStatus_t vosrtD2Conv3DValidate(const vosrtD2Conv3DParams* p);
/* Bytes of device workspace Forward prefers: one column tile of at most 64 MiB, independent of T, H, W. */
size_t vosrtD2Conv3DWorkspaceSize(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype);
/* The least workspace Forward accepts (one tile of 128 output positions). Forward uses all the workspace
 * it is given, up to the preferred size: less workspace means narrower tiles and more launches. */
size_t vosrtD2Conv3DMinWorkspaceSize(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype);
vosrtStatus_t vosrtD2Conv3DForward(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype,
    const void* x, const void* dilation, const void* modulation /* may be NULL */, const void* weight,
    const void* bias /* may be NULL */, void* y, void* workspace, size_t workspace_bytes, cudaStream_t stream);
/* Gradients are overwritten (not accumulated). Any output gradient may be NULL (not computed). */
vosrtStatus_t vosrtD2Conv3DBackward(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype,
    const void* x, const void* dilation, const void* modulation, const void* weight, const void* grad_y,
    void* grad_x, void* grad_dilation, void* grad_modulation, void* grad_weight, void* grad_bias, /* any may be NULL */
    void* workspace, size_t workspace_bytes, cudaStream_t stream);
size_t vosrtD2Conv3DBackwardWorkspaceSize(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype);

/* ------------------------------------------------------------------------------------------------ */
/* L2MemoryReadout                                                                                   */
/*   mem_key [B, Ck, N], query_key [B, Ck, M], mem_value [B, V, N] -> out [B, V, M]                   */
/*   top_k 0 = all N (online softmax); 1 <= top_k <= VOSRT_L2_READOUT_MAX_TOP_K otherwise;            */
/*   top_k > N behaves as N. scale <= 0 -> 1/sqrt(Ck).                                                */
/* ------------------------------------------------------------------------------------------------ */
typedef struct { int batch, key_dim, mem_size, query_size, value_dim, top_k; float scale; } vosrtL2ReadoutParams;

vosrtStatus_t vosrtL2ReadoutValidate(const vosrtL2ReadoutParams* p);
size_t vosrtL2ReadoutWorkspaceSize(const vosrtL2ReadoutParams* p, vosrtDataType_t dtype);
vosrtStatus_t vosrtL2ReadoutForward(const vosrtL2ReadoutParams* p, vosrtDataType_t dtype,
    const void* mem_key, const void* query_key, const void* mem_value, void* out,
    void* workspace, size_t workspace_bytes, cudaStream_t stream);
/* Whether the current device's shared memory holds a block of Forward at p's key width (Ck): VOSRT_SUCCESS,
 * or VOSRT_ERROR_NOT_SUPPORTED where Forward would return it for that reason (the other Validate errors as
 * Validate; VOSRT_ERROR_CUDA where the device cannot be asked). *needed and *available (either may be NULL)
 * receive a block's bytes and the device's bytes for one. For a build step that has the device but runs no
 * forward (a TensorRT plugin's configurePlugin). */
vosrtStatus_t vosrtL2ReadoutDeviceCheck(const vosrtL2ReadoutParams* p, vosrtDataType_t dtype,
    size_t* needed, size_t* available);

/* ------------------------------------------------------------------------------------------------ */
const char* vosrtGetStatusString(vosrtStatus_t status);
/* VOSRT_KERNELS_VERSION of the built library. */
int vosrtKernelsVersion(void);
/* VOSRT_L2_READOUT_MAX_TOP_K of the built library. */
int vosrtL2ReadoutMaxTopK(void);

#ifdef __cplusplus
}
#endif

#endif /* VOSRT_KERNELS_H */
