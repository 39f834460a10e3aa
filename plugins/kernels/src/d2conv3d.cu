// D2Conv3D forward and backward (ARCHITECTURE.md, Operator 1) as tiled im2col + GEMM.
//
// Output positions of one sample are processed in tiles of P columns: a kernel fills the column tile
// [C·K, P] with modulated trilinear samples (d2c_im2col_point, shared with the CPU driver), then one
// batched GEMM per group multiplies Wt [Cout/G, Cg·K] by it into Y. The workspace is one column tile
// (bounded by kColumnBudget bytes with the GEMM's split-K scratch), never the full [C·K, To·Ho·Wo] matrix.
// fp32: the GEMM runs on the TF32 tensor cores as 3xTF32 (fp32 accuracy). fp16: samples are interpolated
// in fp32 and stored as fp16 columns for the tensor-core GEMM (fp32 accumulation). Backward (fp32): grad_cols = Wtᵀ·grad_Y per tile, then d2c_col2im_point scatters it
// to grad_x (atomics) and reduces it into grad_modulation and grad_dilation; grad_Wt += grad_Y·colsᵀ.
#if !defined(VOSRT_EMULATE)
#include <cuda_fp16.h>
#endif

#include "d2conv3d_math.h"
#include "gemm.cuh"
#include "launch.h"
#include "vosrt_kernels.h"

namespace vosrt {
namespace {

// Bytes of one column tile: large enough for long GEMMs, small next to the activations of a clip.
// The host emulation uses a tiny budget so that its small test shapes still span several tiles.
#if defined(VOSRT_EMULATE)
constexpr size_t kColumnBudget = 32ull << 10;
#else
constexpr size_t kColumnBudget = 64ull << 20;
#endif
constexpr int kTileAlign = 128;        // tile width: a multiple of the GEMM tile
constexpr int kIm2colChannels = 32;    // channels per thread in the im2col kernel

// Columns per tile: as many output positions as `budget` bytes hold at `per_column` bytes each, a multiple
// of kTileAlign, at least kTileAlign and at most L rounded up. The preferred tile uses kColumnBudget; a
// caller with less workspace (a TensorRT engine built with a small --workspace) gets narrower tiles.
int tile_columns(const D2cShape& s, size_t per_column, size_t budget = kColumnBudget) {
  long long cols = (long long)(budget / per_column) / kTileAlign * kTileAlign;
  if (cols < kTileAlign) cols = kTileAlign;
  const long long full = ((long long)s.L + kTileAlign - 1) / kTileAlign * kTileAlign;
  return (int)(cols < full ? cols : full);
}

// Forward workspace per output position: its column of C·K samples, and the split-K scratch of the GEMM
// (kMaxSplitK fp32 partial sums per output channel; the columns of a tile are a multiple of 256 bytes, so
// the scratch after them stays aligned).
size_t forward_column_bytes(const D2cShape& s, size_t bytes_per_value) {
  return (size_t)s.C * s.K * bytes_per_value + (size_t)kMaxSplitK * s.Cout * sizeof(float);
}

template <typename T>
__global__ void im2col_kernel(D2cShape s, int n, int p0, int P, int valid, const T* __restrict__ x,
                              const T* __restrict__ dil, const T* __restrict__ mod, T* __restrict__ cols) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long long)s.K * P) return;
  const int p_local = (int)(e % P), k = (int)(e / P);
  const int c_begin = blockIdx.y * kIm2colChannels;
  const int c_end = min(c_begin + kIm2colChannels, s.C);
  if (p_local >= valid) {  // tail of the last tile: zero columns keep the GEMM inputs defined
    for (int c = c_begin; c < c_end; ++c) store(cols + ((size_t)c * s.K + k) * P + p_local, 0.f);
    return;
  }
  d2c_im2col_point<T>(s, n, k, p0 + p_local, p_local, P, c_begin, c_end, x, dil, mod, cols);
}

__global__ void col2im_kernel(D2cShape s, int n, int p0, int P, int valid, const float* __restrict__ x,
                              const float* __restrict__ dil, const float* __restrict__ mod,
                              const float* __restrict__ grad_cols, float* grad_x, float* grad_dil, float* grad_mod) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long long)s.K * P) return;
  const int p_local = (int)(e % P), k = (int)(e / P);
  if (p_local >= valid) return;
  d2c_col2im_point(s, n, k, p0 + p_local, p_local, P, x, dil, mod, grad_cols, grad_x, grad_dil, grad_mod);
}

// grad_bias[co] = Σ_n Σ_p grad_y[n, co, p]: one block per output channel.
__global__ void bias_grad_kernel(D2cShape s, const float* __restrict__ grad_y, float* grad_bias) {
  __shared__ float partial[256];
  const int co = blockIdx.x;
  float acc = 0.f;
  for (int n = 0; n < s.N; ++n) {
    const float* row = grad_y + ((size_t)n * s.Cout + co) * s.L;
    for (int p = threadIdx.x; p < s.L; p += blockDim.x) acc += row[p];
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_bias[co] = partial[0];
}

template <typename T>
void launch_im2col(const D2cShape& s, int n, int p0, int P, int valid, const T* x, const T* dil, const T* mod,
                   T* cols, cudaStream_t stream) {
  const dim3 grid(ceil_div((long long)s.K * P, 256), ceil_div(s.C, kIm2colChannels));
  auto kernel = &im2col_kernel<T>;
  VOSRT_LAUNCH(kernel, grid, 256, 0, stream)(s, n, p0, P, valid, x, dil, mod, cols);
}

// The forward GEMM per type: fp32 as 3xTF32 on tensor cores (fp32 accuracy), fp16 on tensor cores.
inline void forward_gemm(const GemmArgs<float>& g, int batch, cudaStream_t stream) { gemm_f32_tc_nn(g, batch, stream); }
inline void forward_gemm(const GemmArgs<__half>& g, int batch, cudaStream_t stream) { gemm_f16_nn(g, batch, stream); }

template <typename T>
vosrtStatus_t forward(const D2cShape& s, const T* x, const T* dil, const T* mod, const T* weight, const T* bias,
                      T* y, T* cols, size_t workspace_bytes, cudaStream_t stream) {
  const int P = tile_columns(s, forward_column_bytes(s, sizeof(T)), workspace_bytes);
  float* partial = reinterpret_cast<float*>(cols + (size_t)s.C * s.K * P);
  const int rows = s.Cg * s.K;
  for (int n = 0; n < s.N; ++n)
    for (int p0 = 0; p0 < s.L; p0 += P) {
      const int valid = min(P, s.L - p0);
      launch_im2col<T>(s, n, p0, P, valid, x, dil, mod, cols, stream);
      GemmArgs<T> g{s.CoutG, valid, rows,
                    weight, rows, (long long)s.CoutG * rows,
                    cols, P, (long long)rows * P,
                    y + (size_t)n * s.Cout * s.L + p0, s.L, (long long)s.CoutG * s.L,
                    bias, 0, partial, (size_t)kMaxSplitK * s.Cout * P};
      forward_gemm(g, s.G, stream);
      if (launch_status() != VOSRT_SUCCESS) return VOSRT_ERROR_CUDA;
    }
  return VOSRT_SUCCESS;
}

}  // namespace
}  // namespace vosrt

using namespace vosrt;

extern "C" vosrtStatus_t vosrtD2Conv3DOutputShape(const vosrtD2Conv3DParams* p, int out_thw[3]) {
  return d2c_output_shape(p, out_thw);
}

extern "C" vosrtStatus_t vosrtD2Conv3DValidate(const vosrtD2Conv3DParams* p) { return d2c_validate(p); }

extern "C" size_t vosrtD2Conv3DWorkspaceSize(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype) {
  if (d2c_validate(p) != VOSRT_SUCCESS || !known_dtype(dtype)) return 0;
  const D2cShape s = d2c_shape(p);
  const size_t per_column = forward_column_bytes(s, element_size(dtype));
  return per_column * tile_columns(s, per_column);
}

extern "C" size_t vosrtD2Conv3DMinWorkspaceSize(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype) {
  if (d2c_validate(p) != VOSRT_SUCCESS || !known_dtype(dtype)) return 0;
  const D2cShape s = d2c_shape(p);
  const size_t per_column = forward_column_bytes(s, element_size(dtype));
  return per_column * tile_columns(s, per_column, 0);
}

extern "C" size_t vosrtD2Conv3DBackwardWorkspaceSize(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype) {
  if (d2c_validate(p) != VOSRT_SUCCESS || dtype != VOSRT_FLOAT32) return 0;
  const D2cShape s = d2c_shape(p);
  return 2 * (size_t)s.C * s.K * tile_columns(s, (size_t)s.C * s.K * sizeof(float)) * sizeof(float);  // columns + gradient
}

extern "C" vosrtStatus_t vosrtD2Conv3DForward(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype, const void* x,
                                              const void* dilation, const void* modulation, const void* weight,
                                              const void* bias, void* y, void* workspace, size_t workspace_bytes,
                                              cudaStream_t stream) {
  const vosrtStatus_t st = d2c_validate(p);
  if (st != VOSRT_SUCCESS) return st;
  if (!known_dtype(dtype)) return VOSRT_ERROR_NOT_SUPPORTED;
  if (!d2c_forward_tensors_given(p, x, dilation, modulation, weight, bias, y)) return VOSRT_ERROR_INVALID_VALUE;
  if (workspace == nullptr || workspace_bytes < vosrtD2Conv3DMinWorkspaceSize(p, dtype)) return VOSRT_ERROR_WORKSPACE;
  clear_stale_error();
  const D2cShape s = d2c_shape(p);
  if (dtype == VOSRT_FLOAT32)
    return forward<float>(s, static_cast<const float*>(x), static_cast<const float*>(dilation),
                          p->has_modulation ? static_cast<const float*>(modulation) : nullptr,
                          static_cast<const float*>(weight), p->has_bias ? static_cast<const float*>(bias) : nullptr,
                          static_cast<float*>(y), static_cast<float*>(workspace), workspace_bytes, stream);
  return forward<__half>(s, static_cast<const __half*>(x), static_cast<const __half*>(dilation),
                         p->has_modulation ? static_cast<const __half*>(modulation) : nullptr,
                         static_cast<const __half*>(weight), p->has_bias ? static_cast<const __half*>(bias) : nullptr,
                         static_cast<__half*>(y), static_cast<__half*>(workspace), workspace_bytes, stream);
}

extern "C" vosrtStatus_t vosrtD2Conv3DBackward(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype, const void* x,
                                               const void* dilation, const void* modulation, const void* weight,
                                               const void* grad_y, void* grad_x, void* grad_dilation,
                                               void* grad_modulation, void* grad_weight, void* grad_bias,
                                               void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const vosrtStatus_t st = d2c_validate(p);
  if (st != VOSRT_SUCCESS) return st;
  if (dtype != VOSRT_FLOAT32) return VOSRT_ERROR_NOT_SUPPORTED;  // training runs the backward in fp32
  if (!d2c_backward_tensors_given(p, x, dilation, modulation, weight, grad_y)) return VOSRT_ERROR_INVALID_VALUE;
  const D2cShape s = d2c_shape(p);
  const float* xf = static_cast<const float*>(x);
  const float* df = static_cast<const float*>(dilation);
  const float* mf = p->has_modulation ? static_cast<const float*>(modulation) : nullptr;
  const float* wf = static_cast<const float*>(weight);
  const float* gy = static_cast<const float*>(grad_y);
  float* gx = static_cast<float*>(grad_x);
  float* gd = static_cast<float*>(grad_dilation);
  float* gm = p->has_modulation ? static_cast<float*>(grad_modulation) : nullptr;
  float* gw = static_cast<float*>(grad_weight);
  float* gb = static_cast<float*>(grad_bias);
  const bool need_sample_grads = gx || gd || gm;
  if ((need_sample_grads || gw) &&
      (workspace == nullptr || workspace_bytes < vosrtD2Conv3DBackwardWorkspaceSize(p, dtype)))
    return VOSRT_ERROR_WORKSPACE;
  clear_stale_error();

  const int P = tile_columns(s, (size_t)s.C * s.K * sizeof(float));
  const int rows = s.Cg * s.K;
  float* cols = static_cast<float*>(workspace);
  float* grad_cols = cols + (size_t)s.C * s.K * P;
  if (gx && cudaMemsetAsync(gx, 0, sizeof(float) * (size_t)s.N * s.C * s.vol, stream) != cudaSuccess)
    return VOSRT_ERROR_CUDA;
  if (gd && cudaMemsetAsync(gd, 0, sizeof(float) * (size_t)s.N * 3 * s.L, stream) != cudaSuccess)
    return VOSRT_ERROR_CUDA;
  if (gw && cudaMemsetAsync(gw, 0, sizeof(float) * (size_t)s.Cout * rows, stream) != cudaSuccess)
    return VOSRT_ERROR_CUDA;

  if (need_sample_grads || gw) {
    for (int n = 0; n < s.N; ++n)
      for (int p0 = 0; p0 < s.L; p0 += P) {
        const int valid = min(P, s.L - p0);
        const float* gy_tile = gy + (size_t)n * s.Cout * s.L + p0;
        if (need_sample_grads) {
          // grad_cols[g] [Cg·K, valid] = Wt[g]ᵀ [Cg·K, Cout/G] · grad_Y[n, g] [Cout/G, valid]
          GemmArgs<float> g{rows, valid, s.CoutG,
                            wf, rows, (long long)s.CoutG * rows,
                            gy_tile, s.L, (long long)s.CoutG * s.L,
                            grad_cols, P, (long long)rows * P,
                            nullptr, 0};
          gemm_f32<true, false>(g, s.G, stream);
          auto col2im = &col2im_kernel;
          VOSRT_LAUNCH(col2im, ceil_div((long long)s.K * P, 256), 256, 0, stream)(s, n, p0, P, valid, xf, df, mf,
                                                                                 grad_cols, gx, gd, gm);
        }
        if (gw) {
          // grad_Wt[g] [Cout/G, Cg·K] += grad_Y[n, g] [Cout/G, valid] · cols[g]ᵀ [valid, Cg·K]
          launch_im2col<float>(s, n, p0, P, valid, xf, df, mf, cols, stream);
          GemmArgs<float> g{s.CoutG, rows, valid,
                            gy_tile, s.L, (long long)s.CoutG * s.L,
                            cols, P, (long long)rows * P,
                            gw, rows, (long long)s.CoutG * rows,
                            nullptr, 1};
          gemm_f32<false, true>(g, s.G, stream);
        }
        if (launch_status() != VOSRT_SUCCESS) return VOSRT_ERROR_CUDA;
      }
  }
  if (gb) {
    auto bias_grad = &bias_grad_kernel;
    VOSRT_LAUNCH(bias_grad, s.Cout, 256, 0, stream)(s, gy, gb);
  }
  return launch_status();
}
