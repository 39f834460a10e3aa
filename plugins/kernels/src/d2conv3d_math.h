// D2Conv3D index and interpolation math (ARCHITECTURE.md, Operator 1), shared verbatim by the CUDA
// kernels (d2conv3d.cu) and the CPU driver (cpu_driver.cpp) so that CI, without a GPU, checks the
// exact arithmetic the kernels run against the PyTorch reference.
//
// Layout of the sampled columns ("im2col tile"): row r = c·K + k for input channel c (global) and
// kernel point k, column = output position within the tile. Rows of group g are the contiguous block
// [g·Cg·K, (g+1)·Cg·K), which multiplies Wt viewed as [Cout, Cg·K] row-major.
#ifndef VOSRT_D2CONV3D_MATH_H
#define VOSRT_D2CONV3D_MATH_H

#include "common.h"
#include "params.h"

namespace vosrt {

struct D2cShape {
  int N, C, T, H, W;
  int Cout, G, Cg, CoutG;
  int kt, kh, kw, K;
  int st, sh, sw, pt, ph, pw, dt, dh, dw;
  int To, Ho, Wo, L;  // L = To·Ho·Wo output positions per sample
  int vol;            // T·H·W
};

inline D2cShape d2c_shape(const vosrtD2Conv3DParams* p) {
  D2cShape s;
  int out[3] = {1, 1, 1};
  d2c_output_shape(p, out);
  s.N = p->batch; s.C = p->in_channels; s.T = p->in_t; s.H = p->in_h; s.W = p->in_w;
  s.Cout = p->out_channels; s.G = p->groups; s.Cg = s.C / s.G; s.CoutG = s.Cout / s.G;
  s.kt = p->kernel[0]; s.kh = p->kernel[1]; s.kw = p->kernel[2]; s.K = s.kt * s.kh * s.kw;
  s.st = p->stride[0]; s.sh = p->stride[1]; s.sw = p->stride[2];
  s.pt = p->pad[0]; s.ph = p->pad[1]; s.pw = p->pad[2];
  s.dt = p->dilation[0]; s.dh = p->dilation[1]; s.dw = p->dilation[2];
  s.To = out[0]; s.Ho = out[1]; s.Wo = out[2]; s.L = s.To * s.Ho * s.Wo;
  s.vol = s.T * s.H * s.W;
  return s;
}

// Sample position along one axis: o·s − pad + i·dil + (i − k//2)·dil·(D − 1), in fp32.
VOSRT_HD float d2c_coord(int o, int stride, int pad, int i, int k, int dil, float d) {
  return (float)(o * stride - pad + i * dil) + (float)((i - k / 2) * dil) * (d - 1.0f);
}

// d q / d D along one axis.
VOSRT_HD float d2c_coord_grad(int i, int k, int dil) { return (float)((i - k / 2) * dil); }

// Corner c = 4·a + 2·b + e takes the high neighbour along t if a, along y if b, along x if e.
struct D2cCorners {
  int offset[8];        // offset inside one channel volume; −1: corner outside (contributes 0)
  float weight[8];      // trilinear weight
  float dweight[3][8];  // d weight / d q_t, q_y, q_x (filled when gradients are requested)
  float dq_dd[3];       // d q / d D for t, y, x
};

// Trilinear corners of the sample of kernel point k at output position p, given D at p.
template <bool kWithGrad>
VOSRT_HD void d2c_corners(const D2cShape& s, int k, int p, float d_t, float d_y, float d_x, D2cCorners& cr) {
  const int i = k / (s.kh * s.kw), j = (k / s.kw) % s.kh, l = k % s.kw;
  const int ox = p % s.Wo, oy = (p / s.Wo) % s.Ho, ot = p / (s.Wo * s.Ho);
  const float q[3] = {d2c_coord(ot, s.st, s.pt, i, s.kt, s.dt, d_t), d2c_coord(oy, s.sh, s.ph, j, s.kh, s.dh, d_y),
                      d2c_coord(ox, s.sw, s.pw, l, s.kw, s.dw, d_x)};
  cr.dq_dd[0] = d2c_coord_grad(i, s.kt, s.dt);
  cr.dq_dd[1] = d2c_coord_grad(j, s.kh, s.dh);
  cr.dq_dd[2] = d2c_coord_grad(l, s.kw, s.dw);
  const int size[3] = {s.T, s.H, s.W};
  bool inside = true;
VOSRT_UNROLL
  for (int a = 0; a < 3; ++a) inside = inside && q[a] > -1.0f && q[a] < (float)size[a];
  if (!inside) {  // also covers NaN/huge coordinates before any float→int conversion
VOSRT_UNROLL
    for (int c = 0; c < 8; ++c) {
      cr.offset[c] = -1;
      cr.weight[c] = 0.f;
      if (kWithGrad) cr.dweight[0][c] = cr.dweight[1][c] = cr.dweight[2][c] = 0.f;
    }
    // NaN policy (plugins/kernels/README.md): a NaN position (from a NaN in D) samples NaN, it does not
    // fall outside the volume. Corner 0 then reads voxel 0 with weight NaN, which makes the sample NaN.
    // The backward keeps zero weights there (no NaN is scattered into grad_x).
    if (!kWithGrad && (q[0] != q[0] || q[1] != q[1] || q[2] != q[2])) {
      cr.offset[0] = 0;
      cr.weight[0] = NAN;
    }
    return;
  }
  int lo[3];
  float w[3][2];   // weight of the low / high neighbour along each axis
  bool ok[3][2];   // neighbour inside the volume along that axis
VOSRT_UNROLL
  for (int a = 0; a < 3; ++a) {
    const float f = floorf(q[a]);
    lo[a] = (int)f;
    const float frac = q[a] - f;
    w[a][0] = 1.0f - frac;
    w[a][1] = frac;
    ok[a][0] = lo[a] >= 0;
    ok[a][1] = lo[a] + 1 < size[a];
  }
VOSRT_UNROLL
  for (int c = 0; c < 8; ++c) {
    const int a = (c >> 2) & 1, b = (c >> 1) & 1, e = c & 1;
    const bool valid = ok[0][a] && ok[1][b] && ok[2][e];
    cr.offset[c] = valid ? ((lo[0] + a) * s.H + (lo[1] + b)) * s.W + (lo[2] + e) : -1;
    cr.weight[c] = valid ? w[0][a] * w[1][b] * w[2][e] : 0.f;
    if (kWithGrad) {
      // d(w_t·w_y·w_x)/dq_t = ±w_y·w_x: the low weight 1 − frac falls, the high weight frac rises.
      cr.dweight[0][c] = valid ? (a ? 1.f : -1.f) * w[1][b] * w[2][e] : 0.f;
      cr.dweight[1][c] = valid ? (b ? 1.f : -1.f) * w[0][a] * w[2][e] : 0.f;
      cr.dweight[2][c] = valid ? (e ? 1.f : -1.f) * w[0][a] * w[1][b] : 0.f;
    }
  }
}

// Loads D and M at (n, k, p): D is [N, 3, L], M is [N, K, L] (absent: 1).
template <typename T>
VOSRT_HD void d2c_load_dm(const D2cShape& s, int n, int k, int p, const T* dil, const T* mod, float d[3], float& m) {
  const size_t L = (size_t)s.L;
  const T* dn = dil + (size_t)n * 3 * L + p;
  d[0] = to_float(dn[0]);
  d[1] = to_float(dn[L]);
  d[2] = to_float(dn[2 * L]);
  m = mod ? to_float(mod[((size_t)n * s.K + k) * L + p]) : 1.0f;
}

// Modulated trilinear samples of kernel point k at position p for channels [c_begin, c_end):
// cols[(c·K + k)·P + p_local] = M·X̃[n, c, q(k, p)].
template <typename T>
VOSRT_HD void d2c_im2col_point(const D2cShape& s, int n, int k, int p, int p_local, int P, int c_begin, int c_end,
                               const T* x, const T* dil, const T* mod, T* cols) {
  float d[3], m;
  d2c_load_dm(s, n, k, p, dil, mod, d, m);
  D2cCorners cr;
  d2c_corners<false>(s, k, p, d[0], d[1], d[2], cr);
  for (int c = c_begin; c < c_end; ++c) {
    const T* xc = x + ((size_t)n * s.C + c) * (size_t)s.vol;
    float v = 0.f;
VOSRT_UNROLL
    for (int q = 0; q < 8; ++q)
      if (cr.offset[q] >= 0) v += cr.weight[q] * to_float(xc[cr.offset[q]]);
    store(cols + ((size_t)c * s.K + k) * P + p_local, m * v);
  }
}

// Backward of d2c_im2col_point for all channels, given grad_cols (same layout as cols), in fp32:
// scatters into grad_x, writes grad_mod[n, k, p], adds this kernel point's share of grad_dil[n, :, p].
// Any output may be null. grad_x and grad_dil must start at zero (they are sums over k and p).
VOSRT_HD void d2c_col2im_point(const D2cShape& s, int n, int k, int p, int p_local, int P, const float* x,
                               const float* dil, const float* mod, const float* grad_cols, float* grad_x,
                               float* grad_dil, float* grad_mod) {
  float d[3], m;
  d2c_load_dm(s, n, k, p, dil, mod, d, m);
  D2cCorners cr;
  d2c_corners<true>(s, k, p, d[0], d[1], d[2], cr);
  float g_mod = 0.f, g_q[3] = {0.f, 0.f, 0.f};
  for (int c = 0; c < s.C; ++c) {
    const float gc = grad_cols[((size_t)c * s.K + k) * P + p_local];
    if (gc == 0.f) continue;
    const size_t base = ((size_t)n * s.C + c) * (size_t)s.vol;
    float v = 0.f, dv[3] = {0.f, 0.f, 0.f};
VOSRT_UNROLL
    for (int q = 0; q < 8; ++q) {
      if (cr.offset[q] < 0) continue;
      const float xv = x[base + cr.offset[q]];
      v += cr.weight[q] * xv;
      dv[0] += cr.dweight[0][q] * xv;
      dv[1] += cr.dweight[1][q] * xv;
      dv[2] += cr.dweight[2][q] * xv;
      if (grad_x != nullptr && cr.weight[q] != 0.f) accumulate(grad_x + base + cr.offset[q], m * cr.weight[q] * gc);
    }
    g_mod += gc * v;
    g_q[0] += gc * dv[0];
    g_q[1] += gc * dv[1];
    g_q[2] += gc * dv[2];
  }
  const size_t L = (size_t)s.L;
  if (grad_mod != nullptr) grad_mod[((size_t)n * s.K + k) * L + p] = g_mod;
  if (grad_dil != nullptr) {
VOSRT_UNROLL
    for (int a = 0; a < 3; ++a)
      if (cr.dq_dd[a] != 0.f) accumulate(grad_dil + ((size_t)n * 3 + a) * L + p, m * g_q[a] * cr.dq_dd[a]);
  }
}

}  // namespace vosrt

#endif  // VOSRT_D2CONV3D_MATH_H
