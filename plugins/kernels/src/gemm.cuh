// Tiled GEMMs for the D2Conv3D column tiles (the toolkit on CI has no cuBLAS, and the plugins should
// not need it): fp32 on CUDA cores with 8×8 register tiles (any transposes; the backward), fp32 on tensor
// cores as 3xTF32 (the forward), fp16 on tensor cores (WMMA, fp32 accumulate).
//
// Row-major semantics, batched over blockIdx.z:
//   C[m, n] = Σ_k op(A)[m, k]·op(B)[k, n]  (+ bias[z·M + m])  (+ C[m, n] if accumulate)
//   op(A)[m, k] = kTransA ? A[k·lda + m] : A[m·lda + k];  op(B)[k, n] = kTransB ? B[n·ldb + k] : B[k·ldb + n]
#ifndef VOSRT_GEMM_CUH
#define VOSRT_GEMM_CUH

#include "common.h"
#include "launch.h"
#include "tensor_core.cuh"

#if !defined(VOSRT_EMULATE)
#include <cuda_fp16.h>
#include <mma.h>
#endif

namespace vosrt {

template <typename T>
struct GemmArgs {
  int M, N, K;
  const T* A; long long lda, strideA;
  const T* B; long long ldb, strideB;
  T* C; long long ldc, strideC;
  const T* bias;  // [batch·M] or null
  int accumulate;
  // Split-K scratch of the tensor-core GEMMs (fp32, `partial_floats` of it; null: no split). A GEMM with
  // too few output tiles to fill the GPU sums its K in up to kMaxSplitK slices, each into its own
  // [batch, M, N] slab, then one reduction adds the slabs, the bias and C.
  float* partial = nullptr;
  size_t partial_floats = 0;
};

constexpr int kMaxSplitK = 4;

// ---- fp32: 128×128 block tile, 8×8 per thread split into two 4-wide halves (conflict-free float4) ----
constexpr int kF32TileM = 128, kF32TileN = 128, kF32TileK = 8;

// (outer, k) of element e (0..1023) of a tile, the outer index being m for A and n for B. Consecutive
// threads take consecutive addresses: the outer index runs fastest when it is the contiguous one.
template <bool kOuterContiguous, int kOuter>
__device__ __forceinline__ void tile_coords(int e, int& outer, int& k) {
  if (kOuterContiguous) { outer = e % kOuter; k = e / kOuter; } else { k = e % kF32TileK; outer = e / kF32TileK; }
}

template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(256, 2) gemm_f32_kernel(GemmArgs<float> g) {
  // Two smem stages: the next k-slice goes global -> registers during the FMAs of the current one,
  // then registers -> the other stage, so each step needs a single barrier.
  __shared__ __align__(16) float As[2][kF32TileK][kF32TileM];
  __shared__ __align__(16) float Bs[2][kF32TileK][kF32TileN];
  const int z = blockIdx.z;
  const float* A = g.A + z * g.strideA;
  const float* B = g.B + z * g.strideB;
  const int m0 = blockIdx.y * kF32TileM, n0 = blockIdx.x * kF32TileN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float ra[4], rb[4];

  auto fetch = [&](int k0) {
    VOSRT_UNROLL
    for (int e4 = 0; e4 < 4; ++e4) {
      int m, k, n, k2;
      tile_coords<kTransA, kF32TileM>(tid + e4 * 256, m, k);
      tile_coords<!kTransB, kF32TileN>(tid + e4 * 256, n, k2);
      const int gm = m0 + m, gk = k0 + k, gn = n0 + n, gk2 = k0 + k2;
      ra[e4] = (gm < g.M && gk < g.K) ? (kTransA ? A[(long long)gk * g.lda + gm] : A[(long long)gm * g.lda + gk]) : 0.f;
      rb[e4] = (gn < g.N && gk2 < g.K) ? (kTransB ? B[(long long)gn * g.ldb + gk2] : B[(long long)gk2 * g.ldb + gn])
                                       : 0.f;
    }
  };
  auto stash = [&](int stage) {
    VOSRT_UNROLL
    for (int e4 = 0; e4 < 4; ++e4) {
      int m, k, n, k2;
      tile_coords<kTransA, kF32TileM>(tid + e4 * 256, m, k);
      tile_coords<!kTransB, kF32TileN>(tid + e4 * 256, n, k2);
      As[stage][k][m] = ra[e4];
      Bs[stage][k2][n] = rb[e4];
    }
  };

  float acc[8][8];
  VOSRT_UNROLL
  for (int i = 0; i < 8; ++i)
    VOSRT_UNROLL
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  fetch(0);
  stash(0);
  __syncthreads();
  int stage = 0;
  for (int k0 = 0; k0 < g.K; k0 += kF32TileK) {
    const bool more = k0 + kF32TileK < g.K;
    if (more) fetch(k0 + kF32TileK);
    VOSRT_UNROLL
    for (int kk = 0; kk < kF32TileK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[stage][kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[stage][kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[stage][kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[stage][kk][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
      VOSRT_UNROLL
      for (int i = 0; i < 8; ++i)
        VOSRT_UNROLL
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) stash(stage ^ 1);  // that stage was last read before the previous barrier
    __syncthreads();
    stage ^= 1;
  }
  float* C = g.C + z * g.strideC;
  VOSRT_UNROLL
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
    if (m >= g.M) continue;
    const float bias = g.bias ? g.bias[(long long)z * g.M + m] : 0.f;
    VOSRT_UNROLL
    for (int j = 0; j < 8; ++j) {
      const int n = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
      if (n >= g.N) continue;
      float* dst = C + (long long)m * g.ldc + n;
      *dst = acc[i][j] + bias + (g.accumulate ? *dst : 0.f);
    }
  }
}

template <bool kTransA, bool kTransB>
inline void gemm_f32(const GemmArgs<float>& g, int batch, cudaStream_t stream) {
  const dim3 grid((g.N + kF32TileN - 1) / kF32TileN, (g.M + kF32TileM - 1) / kF32TileM, batch);
  auto kernel = &gemm_f32_kernel<kTransA, kTransB>;
  VOSRT_LAUNCH(kernel, grid, 256, 0, stream)(g);
}


// ---- tensor-core GEMMs (no transposes): block tiles of BM×BN, 8 warps as 2×4, each a (BM/2)×(BN/4) tile of
// 16×16 fragments. The launchers take 128×128 tiles when those give the grid at least one block per SM,
// else 64×64 (four times the blocks): a D2Conv3D column tile of a 480p 3DC-Seg layer is a short, wide
// GEMM (256 output channels), and 128×128 tiles left most of an H100's 132 SMs idle.
template <int BM, int BN>
struct TcTile {
  static_assert(BM == 64 || BM == 128, "BM: 64 or 128");
  static_assert(BN == 64 || BN == 128, "BN: 64 or 128");
  static constexpr int kFragM = BM / 32;  // 16×16 fragments per warp, down and across
  static constexpr int kFragN = BN / 64;
};

inline int multiprocessors() {
  static int sms = 0;  // the device of the first call; a host thread with several GPUs loses only balance
  if (sms == 0) {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess)
      sms = count;
    else
      return 1 << 30;  // unknown: behave as if the grid were always large enough
  }
  return sms;
}

// Whether 128×128 tiles already give every SM a block (else the launchers use 64×64).
inline bool large_tiles(int M, int N, int batch) {
  return (long long)((N + 127) / 128) * ((M + 127) / 128) * batch >= multiprocessors();
}

// K slices for a GEMM of 64×64 tiles: enough to give every SM a block, each slice at least 4 k-slices of
// `tile_k` long, no more than the scratch holds.
template <typename T>
int split_k(const GemmArgs<T>& g, int batch, int tile_k) {
  if (g.partial == nullptr) return 1;
  const long long blocks = (long long)((g.N + 63) / 64) * ((g.M + 63) / 64) * batch;
  long long splits = (multiprocessors() + blocks - 1) / blocks;
  splits = splits < kMaxSplitK ? splits : kMaxSplitK;
  const long long by_length = g.K / (4LL * tile_k);
  splits = splits < by_length ? splits : by_length;
  const long long by_scratch = (long long)(g.partial_floats / ((size_t)batch * g.M * g.N));
  splits = splits < by_scratch ? splits : by_scratch;
  return splits > 1 ? (int)splits : 1;
}

// C[z, m, n] = Σ_s partial[s, z, m, n] (+ bias[z·M + m]) (+ C[z, m, n] if accumulate), for split-K.
template <typename T>
__global__ void split_k_reduce_kernel(GemmArgs<T> g, int batch, int splits) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long slab = (long long)g.M * g.N;
  if (e >= slab * batch) return;
  const int z = (int)(e / slab), m = (int)((e % slab) / g.N), n = (int)(e % g.N);
  float v = 0.f;
  for (int s = 0; s < splits; ++s) v += g.partial[(long long)s * slab * batch + e];
  if (g.bias) v += to_float(g.bias[(long long)z * g.M + m]);
  T* dst = g.C + z * g.strideC + (long long)m * g.ldc + n;
  if (g.accumulate) v += to_float(*dst);
  store(dst, v);
}

template <typename T>
void launch_split_k_reduce(const GemmArgs<T>& g, int batch, int splits, cudaStream_t stream) {
  auto kernel = &split_k_reduce_kernel<T>;
  VOSRT_LAUNCH(kernel, ceil_div((long long)g.M * g.N * batch, 256), 256, 0, stream)(g, batch, splits);
}

// The k range of this block's slice: blockIdx.z = slice·batch + z.
struct KSlice {
  int z, slice, begin, end;
};
__device__ __forceinline__ KSlice k_slice(int K, int splits, int tile_k) {
  KSlice r;
  const int batch = gridDim.z / splits;
  r.z = blockIdx.z % batch;
  r.slice = blockIdx.z / batch;
  const int chunk = ((K + splits - 1) / splits + tile_k - 1) / tile_k * tile_k;
  r.begin = r.slice * chunk;
  r.end = min(K, r.begin + chunk);
  return r;
}

// Epilogue of the tensor-core GEMMs: a warp's FM×FN accumulator fragments of 16×16, its tile at rows
// row0.., columns col0.., staged one fragment at a time through `st` (256 floats of shared memory) and
// written to this k-slice's slab of the split-K scratch ([M, N] dense, fp32, no bias: the reduction adds it
// and rounds once), or to C with the bias and C added.
template <typename T, int FM, int FN, typename Frag>
__device__ void store_fragments(const GemmArgs<T>& g, const KSlice& ks, int splits, Frag (&acc)[FM][FN], float* st,
                                int row0, int col0) {
  const int z = ks.z, lane = threadIdx.x % 32;
  T* C = g.C + z * g.strideC;
  float* slab = splits > 1 ? g.partial + ((long long)ks.slice * (gridDim.z / splits) + z) * g.M * g.N : nullptr;
  VOSRT_UNROLL
  for (int i = 0; i < FM; ++i)
    VOSRT_UNROLL
    for (int j = 0; j < FN; ++j) {
      nvcuda::wmma::store_matrix_sync(st, acc[i][j], 16, nvcuda::wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int m = row0 + i * 16 + e / 16, n = col0 + j * 16 + e % 16;
        if (m >= g.M || n >= g.N) continue;
        if (slab != nullptr) {
          slab[(long long)m * g.N + n] = st[e];
        } else {
          T* dst = C + (long long)m * g.ldc + n;
          float v = st[e];
          if (g.bias) v += to_float(g.bias[(long long)z * g.M + m]);
          if (g.accumulate) v += to_float(*dst);
          store(dst, v);
        }
      }
      __syncwarp();
    }
}

// Runs a tensor-core GEMM: 128×128 tiles when they give every SM a block, else 64×64 tiles with the K
// split over enough slices to fill the GPU (and the reduction of the slices).
template <typename T>
void launch_tc_gemm(const GemmArgs<T>& g, int batch, int tile_k, void (*large)(GemmArgs<T>, int),
                    void (*small)(GemmArgs<T>, int), cudaStream_t stream) {
  if (large_tiles(g.M, g.N, batch)) {
    VOSRT_LAUNCH(large, dim3((g.N + 127) / 128, (g.M + 127) / 128, batch), 256, 0, stream)(g, 1);
    return;
  }
  const int splits = split_k(g, batch, tile_k);
  VOSRT_LAUNCH(small, dim3((g.N + 63) / 64, (g.M + 63) / 64, batch * splits), 256, 0, stream)(g, splits);
  if (splits > 1) launch_split_k_reduce(g, batch, splits, stream);
}

// ---- fp32 on tensor cores, "3xTF32": each operand x = hi + lo with hi = tf32(x) and lo = tf32(x − hi);
// a·b ≈ hi·hi + hi·lo + lo·hi keeps ~fp32 accuracy (the dropped lo·lo is ~2⁻²² |a·b|) while running on the
// TF32 tensor cores. WMMA 16×16×8, k-slices of 16.
constexpr int kTcTileK = 16;
constexpr int kTcPadA = kTcTileK + 4;  // ld of the A tile (floats): a multiple of 4, rows 16-byte aligned

// Elements (row, col .. col+3) of a row-major rows×cols matrix with leading dimension ld; zeros outside.
__device__ __forceinline__ float4 load_float4(const float* base, long long ld, int row, int col, int rows, int cols,
                                              bool vectorised) {
  if (vectorised && row < rows && col + 3 < cols) return *reinterpret_cast<const float4*>(base + row * ld + col);
  float v[4];
  VOSRT_UNROLL
  for (int i = 0; i < 4; ++i) v[i] = (row < rows && col + i < cols) ? base[row * ld + col + i] : 0.f;
  return make_float4(v[0], v[1], v[2], v[3]);
}

template <int BM, int BN>
__global__ void __launch_bounds__(256) gemm_f32_tc_nn_kernel(GemmArgs<float> g, int splits) {
  using namespace nvcuda;
  constexpr int kPadB = BN + 4;
  constexpr int FM = TcTile<BM, BN>::kFragM, FN = TcTile<BM, BN>::kFragN;
  constexpr int VA = BM / 64, VB = BN / 64;  // float4 loads per thread: A is BM×4, B is 16×(BN/4) vectors
  __shared__ __align__(32) float As[2][BM * kTcPadA];
  __shared__ __align__(32) float Bs[2][kTcTileK * kPadB];
  __shared__ __align__(32) float stage_out[8][16 * 16];
  const KSlice ks = k_slice(g.K, splits, kTcTileK);
  const int z = ks.z;
  const float* A = g.A + z * g.strideA;
  const float* B = g.B + z * g.strideB;
  const bool vec_a = g.lda % 4 == 0 && reinterpret_cast<size_t>(A) % 16 == 0;
  const bool vec_b = g.ldb % 4 == 0 && reinterpret_cast<size_t>(B) % 16 == 0;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / 4, wn = warp % 4;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[FM][FN];
  VOSRT_UNROLL
  for (int i = 0; i < FM; ++i)
    VOSRT_UNROLL
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  float4 ra[VA], rb[VB];
  auto fetch = [&](int k0) {
    VOSRT_UNROLL
    for (int r = 0; r < VA; ++r) {
      const int v = tid + r * 256;
      ra[r] = load_float4(A, g.lda, m0 + v / 4, k0 + (v % 4) * 4, g.M, ks.end, vec_a);
    }
    VOSRT_UNROLL
    for (int r = 0; r < VB; ++r) {
      const int v = tid + r * 256;
      rb[r] = load_float4(B, g.ldb, k0 + v / (BN / 4), n0 + (v % (BN / 4)) * 4, ks.end, g.N, vec_b);
    }
  };
  auto stash = [&](int stage) {
    VOSRT_UNROLL
    for (int r = 0; r < VA; ++r) {
      const int v = tid + r * 256;
      *reinterpret_cast<float4*>(&As[stage][(v / 4) * kTcPadA + (v % 4) * 4]) = ra[r];
    }
    VOSRT_UNROLL
    for (int r = 0; r < VB; ++r) {
      const int v = tid + r * 256;
      *reinterpret_cast<float4*>(&Bs[stage][(v / (BN / 4)) * kPadB + (v % (BN / 4)) * 4]) = rb[r];
    }
  };

  fetch(ks.begin);
  stash(0);
  __syncthreads();
  int stage = 0;
  for (int k0 = ks.begin; k0 < ks.end; k0 += kTcTileK) {
    const bool more = k0 + kTcTileK < ks.end;
    if (more) fetch(k0 + kTcTileK);
    VOSRT_UNROLL
    for (int kk = 0; kk < kTcTileK; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a_hi[FM], a_lo[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b_hi[FN], b_lo[FN];
      VOSRT_UNROLL
      for (int i = 0; i < FM; ++i) {
        wmma::load_matrix_sync(a_hi[i], &As[stage][(wm * (BM / 2) + i * 16) * kTcPadA + kk], kTcPadA);
        split_tf32(a_hi[i], a_lo[i]);
      }
      VOSRT_UNROLL
      for (int j = 0; j < FN; ++j) {
        wmma::load_matrix_sync(b_hi[j], &Bs[stage][kk * kPadB + wn * (BN / 4) + j * 16], kPadB);
        split_tf32(b_hi[j], b_lo[j]);
      }
      // Each k-step's three products (small terms first) go into a fresh fragment that the CUDA cores add
      // to the sum, rounding to nearest: tensor cores truncate the sums they accumulate, and a long K
      // accumulated in them drifts toward zero (C = 1,024 is ~10,000 truncations, ~1e-3 relative).
      VOSRT_UNROLL
      for (int i = 0; i < FM; ++i)
        VOSRT_UNROLL
        for (int j = 0; j < FN; ++j) {
          wmma::fragment<wmma::accumulator, 16, 16, 8, float> step;
          wmma::fill_fragment(step, 0.f);
          wmma::mma_sync(step, a_lo[i], b_hi[j], step);
          wmma::mma_sync(step, a_hi[i], b_lo[j], step);
          wmma::mma_sync(step, a_hi[i], b_hi[j], step);
          VOSRT_UNROLL
          for (int t = 0; t < step.num_elements; ++t) acc[i][j].x[t] += step.x[t];
        }
    }
    if (more) stash(stage ^ 1);  // that stage was last read before the previous barrier
    __syncthreads();
    stage ^= 1;
  }
  store_fragments(g, ks, splits, acc, stage_out[warp], m0 + wm * (BM / 2), n0 + wn * (BN / 4));
}

inline void gemm_f32_tc_nn(const GemmArgs<float>& g, int batch, cudaStream_t stream) {
  launch_tc_gemm(g, batch, kTcTileK, &gemm_f32_tc_nn_kernel<128, 128>, &gemm_f32_tc_nn_kernel<64, 64>, stream);
}

// ---- fp16: WMMA 16×16×16, fp32 accumulators, k-slices of 32. Tiles move as 16-byte vectors of 8 halves
// (scalar fallback at ragged edges or unaligned leading dimensions), prefetched into registers during the
// MMAs of the previous k-slice, two smem stages.
constexpr int kH16TileK = 32;
constexpr int kH16PadA = kH16TileK + 8;   // ld of the A tile (halves): a multiple of 8 (WMMA), rows 16-byte aligned

union Half8 {
  uint4 raw;
  __half h[8];
};

// Elements (row, col .. col+7) of a row-major rows×cols matrix with leading dimension ld; zeros outside.
__device__ __forceinline__ Half8 load_half8(const __half* base, long long ld, int row, int col, int rows, int cols,
                                            bool vectorised) {
  Half8 r;
  if (vectorised && row < rows && col + 7 < cols) {
    r.raw = *reinterpret_cast<const uint4*>(base + row * ld + col);
    return r;
  }
  VOSRT_UNROLL
  for (int i = 0; i < 8; ++i)
    r.h[i] = (row < rows && col + i < cols) ? base[row * ld + col + i] : __float2half_rn(0.f);
  return r;
}

template <int BM, int BN>
__global__ void __launch_bounds__(256) gemm_f16_nn_kernel(GemmArgs<__half> g, int splits) {
  using namespace nvcuda;
  constexpr int kPadB = BN + 8;
  constexpr int FM = TcTile<BM, BN>::kFragM, FN = TcTile<BM, BN>::kFragN;
  constexpr int VA = BM / 64, VB = BN / 64;  // 16-byte loads per thread: A is BM×4, B is 32×(BN/8) vectors
  __shared__ __align__(32) __half As[2][BM * kH16PadA];
  __shared__ __align__(32) __half Bs[2][kH16TileK * kPadB];
  __shared__ __align__(32) float stage_out[8][16 * 16];  // per-warp epilogue staging
  const KSlice ks = k_slice(g.K, splits, kH16TileK);
  const int z = ks.z;
  const __half* A = g.A + z * g.strideA;
  const __half* B = g.B + z * g.strideB;
  const bool vec_a = g.lda % 8 == 0 && reinterpret_cast<size_t>(A) % 16 == 0;
  const bool vec_b = g.ldb % 8 == 0 && reinterpret_cast<size_t>(B) % 16 == 0;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / 4, wn = warp % 4;  // warp tile: rows wm·BM/2.., columns wn·BN/4..
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
  VOSRT_UNROLL
  for (int i = 0; i < FM; ++i)
    VOSRT_UNROLL
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  Half8 ra[VA], rb[VB];
  auto fetch = [&](int k0) {
    VOSRT_UNROLL
    for (int r = 0; r < VA; ++r) {
      const int v = tid + r * 256;
      ra[r] = load_half8(A, g.lda, m0 + v / 4, k0 + (v % 4) * 8, g.M, ks.end, vec_a);
    }
    VOSRT_UNROLL
    for (int r = 0; r < VB; ++r) {
      const int v = tid + r * 256;
      rb[r] = load_half8(B, g.ldb, k0 + v / (BN / 8), n0 + (v % (BN / 8)) * 8, ks.end, g.N, vec_b);
    }
  };
  auto stash = [&](int stage) {
    VOSRT_UNROLL
    for (int r = 0; r < VA; ++r) {
      const int v = tid + r * 256;
      *reinterpret_cast<uint4*>(&As[stage][(v / 4) * kH16PadA + (v % 4) * 8]) = ra[r].raw;
    }
    VOSRT_UNROLL
    for (int r = 0; r < VB; ++r) {
      const int v = tid + r * 256;
      *reinterpret_cast<uint4*>(&Bs[stage][(v / (BN / 8)) * kPadB + (v % (BN / 8)) * 8]) = rb[r].raw;
    }
  };

  fetch(ks.begin);
  stash(0);
  __syncthreads();
  int stage = 0;
  for (int k0 = ks.begin; k0 < ks.end; k0 += kH16TileK) {
    const bool more = k0 + kH16TileK < ks.end;
    if (more) fetch(k0 + kH16TileK);
    VOSRT_UNROLL
    for (int kk = 0; kk < kH16TileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b[FN];
      VOSRT_UNROLL
      for (int i = 0; i < FM; ++i)
        wmma::load_matrix_sync(a[i], &As[stage][(wm * (BM / 2) + i * 16) * kH16PadA + kk], kH16PadA);
      VOSRT_UNROLL
      for (int j = 0; j < FN; ++j)
        wmma::load_matrix_sync(b[j], &Bs[stage][kk * kPadB + wn * (BN / 4) + j * 16], kPadB);
      VOSRT_UNROLL
      for (int i = 0; i < FM; ++i)
        VOSRT_UNROLL
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    if (more) stash(stage ^ 1);  // that stage was last read before the previous barrier
    __syncthreads();
    stage ^= 1;
  }
  store_fragments(g, ks, splits, acc, stage_out[warp], m0 + wm * (BM / 2), n0 + wn * (BN / 4));
}

inline void gemm_f16_nn(const GemmArgs<__half>& g, int batch, cudaStream_t stream) {
  launch_tc_gemm(g, batch, kH16TileK, &gemm_f16_nn_kernel<128, 128>, &gemm_f16_nn_kernel<64, 64>, stream);
}

}  // namespace vosrt

#endif  // VOSRT_GEMM_CUH
