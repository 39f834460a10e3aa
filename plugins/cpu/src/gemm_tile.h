// C = Aᵀ·B on host tiles, register-blocked so the compiler keeps a 6 × kBlockJ block of C in SIMD
// registers: 6 × 16 with AVX2/FMA (two 8-wide vectors per row, 12 of the 16 registers), 6 × 32 with
// AVX-512 (two 16-wide vectors per row, 12 of 32 registers: two vector loads and six broadcasts feed
// twelve FMAs, so the loop is FMA-bound; 6 × 16 there was load-bound at about 60% of the FMA peak).
// The same code is correct at any vector width.
//
//   C[i, j] (+)= Σ_r A[r, i] · B[r, j],  i < I, j < J, r < R
//
// A is read as [R, lda] and B as [R, ldb], both row-major. Reads go up to the next multiple of
// kBlockI columns of A and kBlockJ columns of B, so callers pad those rows (the padded lanes only feed
// entries of C that are never stored).
#ifndef VOSRT_CPU_GEMM_TILE_H
#define VOSRT_CPU_GEMM_TILE_H

#include <stddef.h>

namespace vosrt {

constexpr int kBlockI = 6;
#if defined(__AVX512F__)
constexpr int kBlockJ = 32;
#else
constexpr int kBlockJ = 16;
#endif

inline int round_up(int value, int multiple) { return (value + multiple - 1) / multiple * multiple; }

template <bool kAccumulate>
inline void gemm_block(int R, const float* __restrict__ A, int lda, const float* __restrict__ B, int ldb,
                       float* __restrict__ C, int ldc, int rows, int cols) {
  float acc[kBlockI][kBlockJ] = {};
  for (int r = 0; r < R; ++r) {
    const float* a = A + (size_t)r * lda;
    const float* b = B + (size_t)r * ldb;
#pragma GCC unroll 6
    for (int i = 0; i < kBlockI; ++i) {
      const float av = a[i];
#pragma GCC unroll 16
      for (int j = 0; j < kBlockJ; ++j) acc[i][j] += av * b[j];
    }
  }
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      float* c = C + (size_t)i * ldc + j;
      *c = kAccumulate ? *c + acc[i][j] : acc[i][j];
    }
}

// Full C (I × J) = Aᵀ·B, or C += Aᵀ·B with kAccumulate.
template <bool kAccumulate>
inline void gemm_at_b(int R, int I, int J, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
  for (int i0 = 0; i0 < I; i0 += kBlockI) {
    const int rows = I - i0 < kBlockI ? I - i0 : kBlockI;
    for (int j0 = 0; j0 < J; j0 += kBlockJ) {
      const int cols = J - j0 < kBlockJ ? J - j0 : kBlockJ;
      gemm_block<kAccumulate>(R, A + i0, lda, B + j0, ldb, C + (size_t)i0 * ldc + j0, ldc, rows, cols);
    }
  }
}

}  // namespace vosrt

#endif  // VOSRT_CPU_GEMM_TILE_H
