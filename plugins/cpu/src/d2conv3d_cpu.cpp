// D2Conv3D on host threads: per tile of output positions, the modulated trilinear samples of every
// kernel point (d2c_im2col_point, the CUDA kernels' own math) fill a [C·K, P] column block, and a
// register-blocked GEMM with the weights viewed as [Cout, C/groups·K] turns it into P outputs.
#include "vosrt_cpu_ops.h"  // first: it selects the CUDA-free parameter header

#include <string.h>

#include <algorithm>
#include <vector>

#include "d2conv3d_math.h"
#include "gemm_tile.h"
#include "parallel.h"

using namespace vosrt;

namespace {

constexpr int kTileP = 128;    // output positions per tile (columns of the GEMM)
static_assert(kTileP % kBlockJ == 0, "position tiles are padded to whole register blocks");
constexpr int kChunkR = 256;   // reduction rows per GEMM pass, so the weight chunk stays in L2

}  // namespace

extern "C" vosrtStatus_t vosrtCpuOpsD2Conv3DOutputShape(const vosrtD2Conv3DParams* p, int out_thw[3]) {
  return d2c_output_shape(p, out_thw);
}

extern "C" vosrtStatus_t vosrtCpuOpsD2Conv3DForward(const vosrtD2Conv3DParams* p, const float* x,
                                                    const float* dilation, const float* modulation,
                                                    const float* weight, const float* bias, float* y, int threads) {
  return host_guarded([&]() -> vosrtStatus_t {
    const vosrtStatus_t st = d2c_check_forward(p, x, dilation, modulation, weight, bias, y);
    if (st != VOSRT_SUCCESS) return st;
    const D2cShape s = d2c_shape(p);
    const float* mod = p->has_modulation ? modulation : nullptr;
    const int rows = s.Cg * s.K;                      // reduction length of one group
    const int lda = round_up(s.CoutG, kBlockI);
    // Weights transposed per group: wt[g][r][co], padded to whole register blocks of output channels.
    std::vector<float> wt((size_t)s.G * rows * lda, 0.f);
    for (int g = 0; g < s.G; ++g)
      for (int co = 0; co < s.CoutG; ++co) {
        const float* src = weight + (size_t)(g * s.CoutG + co) * rows;
        float* dst = wt.data() + (size_t)g * rows * lda + co;
        for (int r = 0; r < rows; ++r) dst[(size_t)r * lda] = src[r];
      }
    const int tiles_per_sample = (s.L + kTileP - 1) / kTileP;
    const int workers = std::max(1, std::min(resolve_threads(threads), s.N * tiles_per_sample));
    std::vector<std::vector<float>> cols(workers), acc(workers);
    parallel_for(s.N * tiles_per_sample, workers, [&](int worker, int item) {
      const int n = item / tiles_per_sample, p0 = (item % tiles_per_sample) * kTileP;
      const int width = std::min(kTileP, s.L - p0);
      std::vector<float>& col = cols[worker];
      std::vector<float>& out = acc[worker];
      if (col.empty()) {
        col.assign((size_t)s.C * s.K * kTileP, 0.f);
        out.assign((size_t)lda * kTileP, 0.f);
      }
      for (int k = 0; k < s.K; ++k)
        for (int q = 0; q < width; ++q)
          d2c_im2col_point(s, n, k, p0 + q, q, kTileP, 0, s.C, x, dilation, mod, col.data());
      for (int g = 0; g < s.G; ++g) {
        const float* a = wt.data() + (size_t)g * rows * lda;
        const float* b = col.data() + (size_t)g * rows * kTileP;
        for (int r0 = 0; r0 < rows; r0 += kChunkR) {
          const int chunk = std::min(kChunkR, rows - r0);
          if (r0 == 0)
            gemm_at_b<false>(chunk, s.CoutG, width, a, lda, b, kTileP, out.data(), kTileP);
          else
            gemm_at_b<true>(chunk, s.CoutG, width, a + (size_t)r0 * lda, lda, b + (size_t)r0 * kTileP, kTileP,
                            out.data(), kTileP);
        }
        for (int co = 0; co < s.CoutG; ++co) {
          const int c_out = g * s.CoutG + co;
          const float b0 = p->has_bias ? bias[c_out] : 0.f;
          float* dst = y + ((size_t)n * s.Cout + c_out) * s.L + p0;
          const float* src = out.data() + (size_t)co * kTileP;
          for (int q = 0; q < width; ++q) dst[q] = src[q] + b0;
        }
      }
    });
    return VOSRT_SUCCESS;
  });
}
