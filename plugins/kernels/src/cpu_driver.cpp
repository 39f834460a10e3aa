// CPU driver: runs the kernels' shared math (d2conv3d_math.h, l2_readout_math.h) on host arrays with the
// same tiling decisions as the CUDA code, so CI compares that arithmetic with the PyTorch references.
#include "vosrt_kernels_cpu.h"

#include <algorithm>
#include <vector>

#include "d2conv3d_math.h"
#include "l2_readout_math.h"

using namespace vosrt;

namespace {

// cols [C·K, L] of sample n: every (k, p) point through the kernels' im2col function.
void im2col_sample(const D2cShape& s, int n, const float* x, const float* dil, const float* mod, float* cols) {
  for (int k = 0; k < s.K; ++k)
    for (int p = 0; p < s.L; ++p) d2c_im2col_point(s, n, k, p, p, s.L, 0, s.C, x, dil, mod, cols);
}

template <int kMax>
void readout_topk_query(const vosrtL2ReadoutParams* p, int b, int m, int top_k, float scale,
                        const float* mem_sq, const float* mk, const float* qk, const float* mv, float* out) {
  const int N = p->mem_size, Ck = p->key_dim, M = p->query_size, V = p->value_dim;
  // As in the kernel: list r holds the entries n ≡ r (mod kL2ListsPerQuery).
  TopKList<kMax> lists[kL2ListsPerQuery];
  for (auto& l : lists) l.init();
  for (int n = 0; n < N; ++n) {
    float dot = 0.f;
    for (int c = 0; c < Ck; ++c) dot += mk[((size_t)b * Ck + c) * N + n] * qk[((size_t)b * Ck + c) * M + m];
    const float score = l2r_score(dot, mem_sq[n], scale);
    TopKList<kMax>& l = lists[n % kL2ListsPerQuery];
    if (score > l.smallest()) l.push(score, n);
  }
  float vals[kL2ListsPerQuery * kMax];
  int idxs[kL2ListsPerQuery * kMax];
  for (int l = 0; l < kL2ListsPerQuery; ++l)
    for (int j = 0; j < kMax; ++j) {
      vals[l * kMax + j] = lists[l].val[j];
      idxs[l * kMax + j] = lists[l].idx[j];
    }
  TopKList<kMax> merged;
  l2r_merge_lists<kMax>(vals, idxs, kL2ListsPerQuery, top_k, merged);
  float weight[kMax];
  l2r_softmax<kMax>(merged, top_k, weight);
  for (int v = 0; v < V; ++v) {
    float acc = 0.f;
    for (int j = 0; j < top_k; ++j)  // every selected entry, even one whose weight underflowed (0·NaN is NaN)
      if (merged.idx[j] >= 0) acc += weight[j] * mv[((size_t)b * V + v) * N + merged.idx[j]];
    out[((size_t)b * V + v) * M + m] = acc;
  }
}

void readout_dense_query(const vosrtL2ReadoutParams* p, int b, int m, float scale, const float* mem_sq,
                         const float* mk, const float* qk, const float* mv, float* out) {
  const int N = p->mem_size, Ck = p->key_dim, M = p->query_size, V = p->value_dim;
  std::vector<float> acc(V, 0.f);
  float score[kL2TileN];
  float run_max = -INFINITY, run_sum = 0.f;
  for (int n0 = 0; n0 < N; n0 += kL2TileN) {
    const int tile = N - n0 < kL2TileN ? N - n0 : kL2TileN;
    float tile_max = -INFINITY;
    for (int t = 0; t < tile; ++t) {
      float dot = 0.f;
      for (int c = 0; c < Ck; ++c) dot += mk[((size_t)b * Ck + c) * N + n0 + t] * qk[((size_t)b * Ck + c) * M + m];
      score[t] = l2r_score(dot, mem_sq[n0 + t], scale);
      tile_max = fmaxf(tile_max, score[t]);
    }
    const float factor = l2r_online_rescale(run_max, run_sum, tile_max);
    for (int v = 0; v < V; ++v) acc[v] *= factor;
    for (int t = 0; t < tile; ++t) {
      const float e = l2r_online_weight(score[t], run_max);
      run_sum += e;
      for (int v = 0; v < V; ++v) acc[v] += e * mv[((size_t)b * V + v) * N + n0 + t];
    }
  }
  for (int v = 0; v < V; ++v) out[((size_t)b * V + v) * M + m] = acc[v] / run_sum;
}

}  // namespace

extern "C" {

vosrtStatus_t vosrtCpuD2Conv3DOutputShape(const vosrtD2Conv3DParams* p, int out_thw[3]) {
  return d2c_output_shape(p, out_thw);
}

vosrtStatus_t vosrtCpuD2Conv3DForward(const vosrtD2Conv3DParams* p, const float* x, const float* dilation,
                                      const float* modulation, const float* weight, const float* bias, float* y) {
  const vosrtStatus_t st = d2c_check_forward(p, x, dilation, modulation, weight, bias, y);
  if (st != VOSRT_SUCCESS) return st;
  const D2cShape s = d2c_shape(p);
  const float* mod = p->has_modulation ? modulation : nullptr;
  const int rows = s.Cg * s.K;  // reduction length of one group
  std::vector<float> cols((size_t)s.C * s.K * s.L);
  for (int n = 0; n < s.N; ++n) {
    im2col_sample(s, n, x, dilation, mod, cols.data());
    for (int co = 0; co < s.Cout; ++co) {
      const int g = co / s.CoutG;
      const float* w_row = weight + (size_t)co * rows;
      const float* c_blk = cols.data() + (size_t)g * rows * s.L;
      float* y_row = y + ((size_t)n * s.Cout + co) * s.L;
      for (int q = 0; q < s.L; ++q) {
        float acc = 0.f;
        for (int r = 0; r < rows; ++r) acc += w_row[r] * c_blk[(size_t)r * s.L + q];
        y_row[q] = acc + (p->has_bias ? bias[co] : 0.f);
      }
    }
  }
  return VOSRT_SUCCESS;
}

vosrtStatus_t vosrtCpuD2Conv3DBackward(const vosrtD2Conv3DParams* p, const float* x, const float* dilation,
                                       const float* modulation, const float* weight, const float* grad_y,
                                       float* grad_x, float* grad_dilation, float* grad_modulation,
                                       float* grad_weight, float* grad_bias) {
  vosrtStatus_t st = d2c_validate(p);
  if (st != VOSRT_SUCCESS) return st;
  if (!d2c_backward_tensors_given(p, x, dilation, modulation, weight, grad_y)) return VOSRT_ERROR_INVALID_VALUE;
  const D2cShape s = d2c_shape(p);
  const float* mod = p->has_modulation ? modulation : nullptr;
  float* gmod = p->has_modulation ? grad_modulation : nullptr;
  const int rows = s.Cg * s.K;
  if (grad_x) std::fill(grad_x, grad_x + (size_t)s.N * s.C * s.vol, 0.f);
  if (grad_dilation) std::fill(grad_dilation, grad_dilation + (size_t)s.N * 3 * s.L, 0.f);
  if (grad_weight) std::fill(grad_weight, grad_weight + (size_t)s.Cout * rows, 0.f);
  if (grad_bias) std::fill(grad_bias, grad_bias + s.Cout, 0.f);
  std::vector<float> cols((size_t)s.C * s.K * s.L), grad_cols((size_t)s.C * s.K * s.L);
  for (int n = 0; n < s.N; ++n) {
    const float* gy = grad_y + (size_t)n * s.Cout * s.L;
    // grad_cols[g rows r, q] = Σ_co∈g Wt[co, r]·gy[co, q]
    for (int g = 0; g < s.G; ++g)
      for (int r = 0; r < rows; ++r) {
        float* gc = grad_cols.data() + ((size_t)g * rows + r) * s.L;
        for (int q = 0; q < s.L; ++q) {
          float acc = 0.f;
          for (int co = g * s.CoutG; co < (g + 1) * s.CoutG; ++co) acc += weight[(size_t)co * rows + r] * gy[(size_t)co * s.L + q];
          gc[q] = acc;
        }
      }
    if (grad_x || grad_dilation || gmod)
      for (int k = 0; k < s.K; ++k)
        for (int q = 0; q < s.L; ++q)
          d2c_col2im_point(s, n, k, q, q, s.L, x, dilation, mod, grad_cols.data(), grad_x, grad_dilation, gmod);
    if (grad_weight) {
      im2col_sample(s, n, x, dilation, mod, cols.data());
      for (int co = 0; co < s.Cout; ++co) {
        const int g = co / s.CoutG;
        for (int r = 0; r < rows; ++r) {
          const float* c_row = cols.data() + ((size_t)g * rows + r) * s.L;
          float acc = 0.f;
          for (int q = 0; q < s.L; ++q) acc += gy[(size_t)co * s.L + q] * c_row[q];
          grad_weight[(size_t)co * rows + r] += acc;
        }
      }
    }
    if (grad_bias)
      for (int co = 0; co < s.Cout; ++co)
        for (int q = 0; q < s.L; ++q) grad_bias[co] += gy[(size_t)co * s.L + q];
  }
  return VOSRT_SUCCESS;
}

vosrtStatus_t vosrtCpuL2ReadoutForward(const vosrtL2ReadoutParams* p, const float* mem_key, const float* query_key,
                                       const float* mem_value, float* out) {
  vosrtStatus_t st = l2r_validate(p);
  if (st != VOSRT_SUCCESS) return st;
  if (!mem_key || !query_key || !mem_value || !out) return VOSRT_ERROR_INVALID_VALUE;
  const int N = p->mem_size, Ck = p->key_dim;
  const int top_k = l2r_effective_top_k(p);
  const float scale = l2r_effective_scale(p);
  std::vector<float> mem_sq(N);
  for (int b = 0; b < p->batch; ++b) {
    for (int n = 0; n < N; ++n) {
      float acc = 0.f;
      for (int c = 0; c < Ck; ++c) {
        const float v = mem_key[((size_t)b * Ck + c) * N + n];
        acc += v * v;
      }
      mem_sq[n] = acc;
    }
    for (int m = 0; m < p->query_size; ++m) {
      if (top_k == 0) readout_dense_query(p, b, m, scale, mem_sq.data(), mem_key, query_key, mem_value, out);
      else if (top_k <= 8) readout_topk_query<8>(p, b, m, top_k, scale, mem_sq.data(), mem_key, query_key, mem_value, out);
      else if (top_k <= 16) readout_topk_query<16>(p, b, m, top_k, scale, mem_sq.data(), mem_key, query_key, mem_value, out);
      else if (top_k <= 32) readout_topk_query<32>(p, b, m, top_k, scale, mem_sq.data(), mem_key, query_key, mem_value, out);
      else readout_topk_query<64>(p, b, m, top_k, scale, mem_sq.data(), mem_key, query_key, mem_value, out);
    }
  }
  return VOSRT_SUCCESS;
}

}  // extern "C"
