// Validation and output shapes of both operators, shared by libvosrt_kernels and the CPU driver.
#ifndef VOSRT_KERNELS_PARAMS_H
#define VOSRT_KERNELS_PARAMS_H

#include <limits.h>
#include <stdint.h>

#include "vosrt_kernels.h"

namespace vosrt {

// Conv3d output length along one axis; negative numerators are rejected before division.
inline int conv_out_size(int size, int k, int s, int pad, int dil) {
  const long long num = (long long)size + 2LL * pad - (long long)dil * (k - 1) - 1;
  if (num < 0 || s < 1) return 0;
  return (int)(num / s + 1);
}

inline vosrtStatus_t d2c_output_shape(const vosrtD2Conv3DParams* p, int out_thw[3]) {
  if (p == nullptr || out_thw == nullptr) return VOSRT_ERROR_INVALID_VALUE;
  const int sizes[3] = {p->in_t, p->in_h, p->in_w};
  for (int a = 0; a < 3; ++a) {
    if (sizes[a] < 1 || p->kernel[a] < 1 || p->stride[a] < 1 || p->pad[a] < 0 || p->dilation[a] < 1)
      return VOSRT_ERROR_INVALID_VALUE;
    // The sample coordinates (d2c_coord) are computed in int: o·stride and i·dilation are at most
    // size + 2·pad − 1, so a padded axis that fits an int keeps them (and the output size) from overflowing.
    if ((long long)sizes[a] + 2LL * p->pad[a] > INT_MAX) return VOSRT_ERROR_NOT_SUPPORTED;
    out_thw[a] = conv_out_size(sizes[a], p->kernel[a], p->stride[a], p->pad[a], p->dilation[a]);
    if (out_thw[a] < 1) return VOSRT_ERROR_INVALID_VALUE;
  }
  return VOSRT_SUCCESS;
}

inline vosrtStatus_t d2c_validate(const vosrtD2Conv3DParams* p) {
  int out[3];
  if (p == nullptr) return VOSRT_ERROR_INVALID_VALUE;
  vosrtStatus_t st = d2c_output_shape(p, out);
  if (st != VOSRT_SUCCESS) return st;
  if (p->batch < 1 || p->in_channels < 1 || p->out_channels < 1 || p->groups < 1) return VOSRT_ERROR_INVALID_VALUE;
  if (p->in_channels % p->groups || p->out_channels % p->groups) return VOSRT_ERROR_INVALID_VALUE;
  // Offsets inside one channel volume and one output plane are 32-bit in the kernels.
  const long long vol = (long long)p->in_t * p->in_h * p->in_w;
  const long long out_vol = (long long)out[0] * out[1] * out[2];
  const long long taps = (long long)p->kernel[0] * p->kernel[1] * p->kernel[2];
  if (vol > INT_MAX || out_vol > INT_MAX || taps * p->in_channels > INT_MAX) return VOSRT_ERROR_NOT_SUPPORTED;
  // Grid limits (gridDim.y and .z at most 65,535): GEMM rows of C/G·K (128 per block, backward) or Cout/G
  // (64 per block), G GEMMs times up to 4 K-slices, im2col blocks of 32 channels.
  const long long grid_y = 65535;
  if (taps * (p->in_channels / p->groups) > grid_y * 128 || p->out_channels / p->groups > grid_y * 64 ||
      p->groups > grid_y / 4 || p->in_channels > grid_y * 32)
    return VOSRT_ERROR_NOT_SUPPORTED;
  return VOSRT_SUCCESS;
}

// Every tensor a D2Conv3D forward reads or writes is given (modulation and bias where p says so). Every
// entry point checks this after d2c_validate (and its own dtype check, if any).
inline bool d2c_forward_tensors_given(const vosrtD2Conv3DParams* p, const void* x, const void* dilation,
                                      const void* modulation, const void* weight, const void* bias, const void* y) {
  return x && dilation && weight && y && (!p->has_modulation || modulation) && (!p->has_bias || bias);
}

// d2c_validate, then d2c_forward_tensors_given: the checks of a forward that takes no data type (host code).
inline vosrtStatus_t d2c_check_forward(const vosrtD2Conv3DParams* p, const void* x, const void* dilation,
                                       const void* modulation, const void* weight, const void* bias, const void* y) {
  const vosrtStatus_t st = d2c_validate(p);
  if (st != VOSRT_SUCCESS) return st;
  return d2c_forward_tensors_given(p, x, dilation, modulation, weight, bias, y) ? VOSRT_SUCCESS
                                                                                : VOSRT_ERROR_INVALID_VALUE;
}

// The same for a backward: its inputs (gradient outputs may be null: not computed).
inline bool d2c_backward_tensors_given(const vosrtD2Conv3DParams* p, const void* x, const void* dilation,
                                       const void* modulation, const void* weight, const void* grad_y) {
  return x && dilation && weight && grad_y && (!p->has_modulation || modulation);
}

inline vosrtStatus_t l2r_validate(const vosrtL2ReadoutParams* p) {
  if (p == nullptr) return VOSRT_ERROR_INVALID_VALUE;
  if (p->batch < 1 || p->key_dim < 1 || p->mem_size < 1 || p->query_size < 1 || p->value_dim < 1 || p->top_k < 0)
    return VOSRT_ERROR_INVALID_VALUE;
  if (p->top_k > VOSRT_L2_READOUT_MAX_TOP_K && p->top_k < p->mem_size) return VOSRT_ERROR_NOT_SUPPORTED;
  if (p->key_dim > 256) return VOSRT_ERROR_NOT_SUPPORTED;  // the key tiles of a block live in shared memory
  if (p->batch > 65535 || p->value_dim > 65535LL * 16) return VOSRT_ERROR_NOT_SUPPORTED;  // gridDim.z, .y
  return VOSRT_SUCCESS;
}

// top_k that the kernels run: 0 (dense softmax over all N) when top_k is 0 or reaches N.
inline int l2r_effective_top_k(const vosrtL2ReadoutParams* p) {
  return (p->top_k == 0 || p->top_k >= p->mem_size) ? 0 : p->top_k;
}

inline float l2r_effective_scale(const vosrtL2ReadoutParams* p) {
  return p->scale > 0.f ? p->scale : 1.0f / sqrtf((float)p->key_dim);
}

}  // namespace vosrt

#endif  // VOSRT_KERNELS_PARAMS_H
