/* Attribute and shape translation for the vosrt TensorRT plugins, with no TensorRT dependency.
 *
 * The plugin shells (d2conv3d_plugin.cpp, l2_readout_plugin.cpp) only move data between TensorRT's
 * descriptors and the kernels' parameter structs; every rule they apply lives here so that it can be
 * compiled with a plain C++ compiler and tested from Python (tests/test_trt_translation.py):
 *   - which input index holds which operand of D2Conv3D (M and B are optional),
 *   - the output shape of each operator (one template, used numerically here and symbolically through
 *     TensorRT's IExprBuilder in the plugins),
 *   - node attributes + input shapes -> vosrtD2Conv3DParams / vosrtL2ReadoutParams, with validation.
 * All entry points return VOSRT_SUCCESS or VOSRT_ERROR_INVALID_VALUE / VOSRT_ERROR_NOT_SUPPORTED and,
 * on failure, a human-readable reason from vosrtTrtLastError() (thread-local).
 */
#ifndef VOSRT_TRT_TRANSLATE_H
#define VOSRT_TRT_TRANSLATE_H

#include <stdint.h>

#include "vosrt_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ONNX node attributes of D2Conv3D (ARCHITECTURE.md, operator 1); (t, h, w) order. */
typedef struct {
  int kernel_shape[3];
  int strides[3];
  int pads[3];
  int dilations[3];
  int group;
} vosrtD2Conv3DAttributes;

/* Input index of each operand of a D2Conv3D node; -1 for an absent optional operand. */
typedef struct { int x, dilation, modulation, weight, bias; } vosrtD2Conv3DInputRoles;

/* ONNX node attributes of L2MemoryReadout (operator 2). scale <= 0 means 1/sqrt(Ck). */
typedef struct { int top_k; float scale; } vosrtL2ReadoutAttributes;

/* Defaults for absent attributes: strides 1, pads 0, dilations 1, group 1; kernel_shape has no
 * default (set to 0, which validation rejects). top_k 20, scale 0 (= 1/sqrt(Ck)). */
void vosrtTrtD2Conv3DDefaultAttributes(vosrtD2Conv3DAttributes* attrs);
void vosrtTrtL2ReadoutDefaultAttributes(vosrtL2ReadoutAttributes* attrs);

vosrtStatus_t vosrtTrtD2Conv3DValidateAttributes(const vosrtD2Conv3DAttributes* attrs);
vosrtStatus_t vosrtTrtL2ReadoutValidateAttributes(const vosrtL2ReadoutAttributes* attrs);

/* Inputs arrive in the order X, D, [M], Wt, [B] with absent optional inputs left out (never as empty
 * names). 3 inputs: X, D, Wt. 5 inputs: X, D, M, Wt, B. 4 inputs are told apart by the rank of input 3:
 * rank 5 is Wt (so input 2 is M), rank 1 is B (so input 2 is Wt). */
vosrtStatus_t vosrtTrtD2Conv3DRoles(int nb_inputs, int rank_of_input3, vosrtD2Conv3DInputRoles* roles);

/* Y dims [N, Cout, To, Ho, Wo] from X dims [N, C, T, H, W] and Wt dims [Cout, C/g, kt, kh, kw]. */
vosrtStatus_t vosrtTrtD2Conv3DOutputDims(const vosrtD2Conv3DAttributes* attrs, const int64_t x_dims[5],
                                         const int64_t weight_dims[5], int64_t y_dims[5]);

/* Full translation: attributes + every input's shape -> kernel parameters. dims is nb_inputs rows of
 * 8 int64 (row i holds ranks[i] leading values). Checks every shape against the others. */
vosrtStatus_t vosrtTrtD2Conv3DParams(const vosrtD2Conv3DAttributes* attrs, int nb_inputs, const int* ranks,
                                     const int64_t* dims, vosrtD2Conv3DParams* params);

/* out dims [B, V, M] from mem_key [B, Ck, N], query_key [B, Ck, M], mem_value [B, V, N]. */
vosrtStatus_t vosrtTrtL2ReadoutOutputDims(const int64_t mem_key[3], const int64_t query_key[3],
                                          const int64_t mem_value[3], int64_t out_dims[3]);
vosrtStatus_t vosrtTrtL2ReadoutParams(const vosrtL2ReadoutAttributes* attrs, const int64_t mem_key[3],
                                      const int64_t query_key[3], const int64_t mem_value[3],
                                      vosrtL2ReadoutParams* params);

/* D2Conv3D workspace the plugin asks TensorRT for: the kernels' preferred size, capped at
 * workspace_limit_mb MiB (the optional node attribute `max_workspace_mb`, which `vosrt build --workspace`
 * sets; 0 = no cap), but never below the kernels' minimum (one tile), which the kernels need to run. */
size_t vosrtTrtD2Conv3DWorkspaceBytes(size_t preferred, size_t minimum, int workspace_limit_mb);

/* Reason for the last failure on this thread ("" after a success). */
const char* vosrtTrtLastError(void);

#ifdef __cplusplus
}  /* extern "C" */

namespace vosrt {

inline int64_t floorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* One convolution output-size rule for numbers (int64_t) and for TensorRT dimension expressions: Size
 * needs `Size + int64_t` and `floorDiv(Size, int64_t)` (found by argument-dependent lookup). */
template <typename Size>
Size convOutputSize(Size const& in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  // (in + 2*pad - dilation*(kernel-1) - 1) / stride + 1
  return floorDiv(in + (2 * pad - dilation * (kernel - 1) - 1), stride) + 1;
}

}  // namespace vosrt
#endif

#endif /* VOSRT_TRT_TRANSLATE_H */
