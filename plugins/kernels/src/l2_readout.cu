// L2MemoryReadout (ARCHITECTURE.md, Operator 2), fused: the N×M affinity never reaches memory.
//
// top-k path (1 <= top_k < N), three kernels:
//   1. select: a block owns kL2TileM queries and one slice of N; it walks its slice in tiles of kL2TileN
//      entries (each key tile copied in with cp.async while the one before is computed: two stages),
//      computes the affinity tile into shared memory on the tensor cores (fp16: WMMA with fp32
//      accumulation; fp32: 3xTF32), and every thread keeps a register top-k list (TopKList, sized to the
//      bucket of k: 8/16/20/32/64) for one query over every kL2ListsPerQuery-th entry, filtering with the
//      best admission threshold of the query's lists (shared after every tile). The lists go to the
//      workspace: [B, M, lists, kMax], independent of N.
//   2. merge: per query, merges the lists, takes the top_k and the max-subtracted softmax -> [B, M, kMax].
//   3. gather: out[b, v, m] = Σ_j w_j·mv[b, v, idx_j]: only the k selected values are read. Blocks
//      sweep the queries for a band of value channels, so that band of mem_value stays in L2.
// dense path (top_k = 0 or top_k >= N): one kernel, online softmax over N tiles (flash-attention
// style), each block holding a kL2DenseV-channel band of the output for its queries in registers.
#if !defined(VOSRT_EMULATE)
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <mma.h>
#endif

#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "l2_readout_math.h"
#include "launch.h"
#include "tensor_core.cuh"
#include "vosrt_kernels.h"

namespace vosrt {
namespace {

constexpr int kThreads = 256;
constexpr int kScoreLd = kL2TileM + 4;  // row stride of the score tile (floats; WMMA needs a multiple of 4)
constexpr int kMaxSplits = 8;           // slices of N per query tile (spreads small M over the SMs)
constexpr int kMaxLists = kMaxSplits * kL2ListsPerQuery;
constexpr int kGatherQueries = 128;     // queries per gather block
constexpr int kGatherV = 16;            // value channels per gather block
constexpr int kL2DenseV = 32;           // value channels per dense block
static_assert(kThreads == kL2TileM * kL2ListsPerQuery, "one thread per (query, list)");
static_assert(kThreads == kL2TileM * (kL2DenseV / 8), "8 value channels per thread in the dense kernel");

__host__ __device__ inline int padded_key_dim(int ck) { return (ck + 15) / 16 * 16; }

// Shared memory of one select/dense block: score tile, ‖mk‖² of the tile, `stages` mem_key tiles, the
// query tile, then the value tile (dense) or the lists' floors (select). All of it is dynamic, so the
// host's choice of stages accounts for every byte a block uses.
template <typename T>
size_t shared_bytes(int ck, bool dense, int stages) {
  const size_t ckp = (size_t)padded_key_dim(ck);
  size_t bytes = sizeof(float) * (kL2TileN * kScoreLd + kL2TileN) +
                 sizeof(T) * ckp * ((size_t)stages * kL2TileN + kL2TileM);
  bytes += dense ? sizeof(float) * kL2DenseV * kL2TileN : sizeof(float) * kL2ListsPerQuery * kL2TileM;
  return bytes;
}

struct Smem {
  float* score;      // [kL2TileN][kScoreLd]: raw dot products mk·qk
  float* mem_sq;     // [kL2TileN]
  void* mem_key[2];  // [ckp][kL2TileN] of T: two stages, or one buffer named twice
  void* query;       // [ckp][kL2TileM] of T
  float* value;      // [kL2DenseV][kL2TileN] (dense kernel only)
  float* floor;      // [kL2ListsPerQuery][kL2TileM] (select kernel only; where the dense kernel's values are)
};

template <typename T>
__device__ Smem carve(unsigned char* base, int ckp, int stages) {
  Smem s;
  s.score = reinterpret_cast<float*>(base);
  s.mem_sq = s.score + kL2TileN * kScoreLd;
  s.mem_key[0] = s.mem_sq + kL2TileN;
  s.mem_key[1] = static_cast<T*>(s.mem_key[0]) + (size_t)(stages - 1) * ckp * kL2TileN;
  s.query = static_cast<T*>(s.mem_key[1]) + (size_t)ckp * kL2TileN;
  s.value = reinterpret_cast<float*>(static_cast<T*>(s.query) + (size_t)ckp * kL2TileM);
  s.floor = s.value;
  return s;
}

// rows [ckp] × cols [width] tile of a [rows, len] matrix starting at column col0; zeros outside.
template <typename T>
__device__ void load_tile(T* dst, const T* src, int rows, int ckp, int len, int col0, int width) {
  const T zero = T(0.f);
  for (int e = threadIdx.x; e < ckp * width; e += blockDim.x) {
    const int r = e / width, c = e % width;
    dst[e] = (r < rows && col0 + c < len) ? src[(size_t)r * len + col0 + c] : zero;
  }
}

// Bytes per cp.async of the mem_key tiles: the widest of 16, 8 and 4 that every row of mem_key (of every
// batch) starts on; 0 where none is (fp16 with an odd N or an odd address), and the tiles are then loaded
// with plain loads. Tiles start at multiples of kL2TileN elements, so they keep the rows' alignment, and
// a vector never straddles the end of a row (N is a multiple of its length).
int key_copy_bytes(const void* mem_key, int n, size_t element) {
  const size_t row = (size_t)n * element, address = reinterpret_cast<size_t>(mem_key);
  for (int bytes : {16, 8, 4})
    if (row % bytes == 0 && address % bytes == 0) return bytes;
  return 0;
}

__device__ __forceinline__ void copy_async(void* dst, const void* src, int bytes) {
  if (bytes == 16) __pipeline_memcpy_async(dst, src, 16);
  else if (bytes == 8) __pipeline_memcpy_async(dst, src, 8);
  else __pipeline_memcpy_async(dst, src, 4);
}

// Key stage `slot` (0 or 1) of s. Chosen by a select, never by indexing mem_key with a run-time slot: that
// index made nvcc keep the whole Smem struct in local memory (a 56-byte stack frame in every select and
// dense kernel) and lose the shared-memory address space of the key tiles (generic loads in the WMMA and
// norm loops).
template <typename T>
__device__ __forceinline__ T* key_stage(const Smem& s, int slot) {
  return static_cast<T*>(slot == 0 ? s.mem_key[0] : s.mem_key[1]);
}

// The mem_key tiles of one block's walk over N. With two stages the next tile is copied in (cp.async)
// while the current one is computed; with one (when two do not fit in shared memory) each tile is copied
// just before it is used. Every fetch commits one cp.async group, empty for the plain-load fallback.
template <typename T>
struct KeyTiles {
  const T* src;  // [rows, len] of this batch
  int rows, ckp, len, copy_bytes, stages;

  __device__ void fetch(const Smem& s, int slot, int col0) const {
    T* dst = key_stage<T>(s, slot);
    if (copy_bytes == 0) {
      load_tile<T>(dst, src, rows, ckp, len, col0, kL2TileN);
    } else {
      const int per = copy_bytes / (int)sizeof(T), per_row = kL2TileN / per;
      for (int e = threadIdx.x; e < ckp * per_row; e += blockDim.x) {
        const int r = e / per_row, c = (e % per_row) * per;
        T* d = dst + r * kL2TileN + c;
        if (r < rows && col0 + c < len) {
          copy_async(d, src + (size_t)r * len + col0 + c, copy_bytes);
        } else {
          for (int i = 0; i < per; ++i) d[i] = T(0.f);
        }
      }
    }
    __pipeline_commit();
  }
  // Before the first tile (column col0) of the walk.
  __device__ void start(const Smem& s, int col0) const {
    if (stages == 2) fetch(s, 0, col0);
  }
  // The i-th tile of the walk (column col0), in shared memory and visible to the whole block; `last`: no
  // tile follows. The stage it returns was last read before the barrier that ended tile i - 1.
  __device__ const T* wait(const Smem& s, int i, int col0, bool last) const {
    const int slot = stages == 2 ? i % 2 : 0;
    if (stages == 1) fetch(s, 0, col0);
    else if (!last) fetch(s, slot ^ 1, col0 + kL2TileN);
    if (stages == 2 && !last) __pipeline_wait_prior(1);  // all but the group just committed
    else __pipeline_wait_prior(0);
    __syncthreads();
    return key_stage<T>(s, slot);
  }
};

// score[n][q] = Σ_c mk[c][n]·qk[c][q] for the tile; fp32 on the TF32 tensor cores as 3xTF32 (each operand
// x = hi + lo, a·b ≈ hi·hi + hi·lo + lo·hi: fp32-level accuracy, which the top-k needs near ties).
// 16 fragments of 16×16 over 8 warps, k in steps of 8; the mk tile is read as a column-major A.
__device__ void dot_tile(const Smem& s, const float* mk, int ckp) {
  using namespace nvcuda;
  const float* qk = static_cast<const float*>(s.query);
  const int warp = threadIdx.x / 32;
  const int nf = warp / 2;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2];
  wmma::fill_fragment(acc[0], 0.f);
  wmma::fill_fragment(acc[1], 0.f);
  for (int c0 = 0; c0 < ckp; c0 += 8) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> a_hi, a_lo;
    wmma::load_matrix_sync(a_hi, mk + c0 * kL2TileN + nf * 16, kL2TileN);
    split_tf32(a_hi, a_lo);
    VOSRT_UNROLL
    for (int j = 0; j < 2; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b_hi, b_lo;
      wmma::load_matrix_sync(b_hi, qk + c0 * kL2TileM + ((warp % 2) * 2 + j) * 16, kL2TileM);
      split_tf32(b_hi, b_lo);
      wmma::mma_sync(acc[j], a_lo, b_hi, acc[j]);  // small terms first
      wmma::mma_sync(acc[j], a_hi, b_lo, acc[j]);
      wmma::mma_sync(acc[j], a_hi, b_hi, acc[j]);
    }
  }
  VOSRT_UNROLL
  for (int j = 0; j < 2; ++j)
    wmma::store_matrix_sync(s.score + nf * 16 * kScoreLd + ((warp % 2) * 2 + j) * 16, acc[j], kScoreLd,
                            wmma::mem_row_major);
}

// fp16: tensor cores. 16 fragments of 16×16 over 8 warps; mk tile read as a column-major A.
__device__ void dot_tile(const Smem& s, const __half* mk, int ckp) {
  using namespace nvcuda;
  const __half* qk = static_cast<const __half*>(s.query);
  const int warp = threadIdx.x / 32;
  const int nf = warp / 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.f);
  wmma::fill_fragment(acc[1], 0.f);
  for (int c0 = 0; c0 < ckp; c0 += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::col_major> a;
    wmma::load_matrix_sync(a, mk + c0 * kL2TileN + nf * 16, kL2TileN);
    VOSRT_UNROLL
    for (int j = 0; j < 2; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
      wmma::load_matrix_sync(b, qk + c0 * kL2TileM + ((warp % 2) * 2 + j) * 16, kL2TileM);
      wmma::mma_sync(acc[j], a, b, acc[j]);
    }
  }
  VOSRT_UNROLL
  for (int j = 0; j < 2; ++j)
    wmma::store_matrix_sync(s.score + nf * 16 * kScoreLd + ((warp % 2) * 2 + j) * 16, acc[j], kScoreLd,
                            wmma::mem_row_major);
}

// ‖mk‖² and the dot products of the key tile mk (in shared memory, visible to the block).
template <typename T>
__device__ void affinity_tile(const Smem& s, const T* mk, int ck, int ckp) {
  if (threadIdx.x < kL2TileN) {
    const T* col = mk + threadIdx.x;
    float acc = 0.f;
    for (int c = 0; c < ck; ++c) {
      const float v = to_float(col[c * kL2TileN]);
      acc = fmaf(v, v, acc);
    }
    s.mem_sq[threadIdx.x] = acc;
  }
  dot_tile(s, mk, ckp);
  __syncthreads();
}

// Lists up to 32 entries: at most 128 registers a thread, so two blocks share an SM (run_top_k's split of
// N counts on that); 64-entry lists need more and run one block per SM.
template <typename T, int kMax>
__global__ void __launch_bounds__(kThreads, kMax <= 32 ? 2 : 1) select_kernel(vosrtL2ReadoutParams p, float scale,
                                                          int tiles_per_split, int stages, int copy_bytes,
                                                          const T* __restrict__ mem_key,
                                                          const T* __restrict__ query_key, float* list_val,
                                                          int* list_idx) {
  VOSRT_DYNAMIC_SHARED(smem_raw);
  const int ck = p.key_dim, ckp = padded_key_dim(ck), N = p.mem_size, M = p.query_size;
  const int b = blockIdx.z, split = blockIdx.y, m0 = blockIdx.x * kL2TileM;
  const Smem s = carve<T>(smem_raw, ckp, stages);
  const KeyTiles<T> keys{mem_key + (size_t)b * ck * N, ck, ckp, N, copy_bytes, stages};
  load_tile<T>(static_cast<T*>(s.query), query_key + (size_t)b * ck * M, ck, ckp, M, m0, kL2TileM);

  const int q = threadIdx.x % kL2TileM, r = threadIdx.x / kL2TileM;
  // The smallest score of each list of a query, shared after every tile: the k-th largest score of the
  // query's whole slice is at least the largest of them, so an entry at or below it cannot be in the
  // slice's top-k, whichever list sees it. Each list thus filters with the best threshold of the four.
  float* list_floor = s.floor;  // [kL2ListsPerQuery][kL2TileM]
  TopKList<kMax> list;
  list.init();
  float threshold = -INFINITY;
  const int tile_begin = split * tiles_per_split;
  const int tile_end = min(tile_begin + tiles_per_split, (N + kL2TileN - 1) / kL2TileN);
  if (tile_begin < tile_end) keys.start(s, tile_begin * kL2TileN);
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int n0 = tile * kL2TileN;
    affinity_tile<T>(s, keys.wait(s, tile - tile_begin, n0, tile + 1 == tile_end), ck, ckp);
    VOSRT_NO_UNROLL
    for (int i = r; i < kL2TileN && n0 + i < N; i += kL2ListsPerQuery) {
      const float score = l2r_score(s.score[i * kScoreLd + q], s.mem_sq[i], scale);
      if (score > threshold) {  // rare after the first tiles: a list admits ~kMax·ln(N) entries in all
        list.push(score, n0 + i);
        threshold = fmaxf(threshold, list.smallest());
      }
    }
    list_floor[r * kL2TileM + q] = list.smallest();
    __syncthreads();  // the next tile overwrites the score tile; list_floor is complete
    VOSRT_UNROLL
    for (int other = 0; other < kL2ListsPerQuery; ++other)
      threshold = fmaxf(threshold, list_floor[other * kL2TileM + q]);
  }
  const int m = m0 + q;
  if (m < M) {
    const size_t base = (((size_t)b * M + m) * kMaxLists + (size_t)split * kL2ListsPerQuery + r) * kMax;
    VOSRT_UNROLL
    for (int j = 0; j < kMax; ++j) {
      list_val[base + j] = list.val[j];
      list_idx[base + j] = list.idx[j];
    }
  }
}

template <int kMax>
__global__ void merge_kernel(vosrtL2ReadoutParams p, int top_k, int lists, const float* __restrict__ list_val,
                             const int* __restrict__ list_idx, float* weight_out, int* index_out) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long long)p.batch * p.query_size) return;
  TopKList<kMax> merged;
  l2r_merge_lists<kMax>(list_val + e * kMaxLists * kMax, list_idx + e * kMaxLists * kMax, lists, top_k, merged);
  float weight[kMax];
  l2r_softmax<kMax>(merged, top_k, weight);
  VOSRT_UNROLL
  for (int j = 0; j < kMax; ++j) {
    weight_out[e * kMax + j] = weight[j];
    // every entry of the top_k, whatever its weight (NaN policy: a NaN value of a selected entry whose weight
    // underflowed to 0 still makes the output NaN, as 0·NaN does in the reference); -1: an empty slot
    index_out[e * kMax + j] = j < top_k ? merged.idx[j] : -1;
  }
}

template <typename T, int kMax>
__global__ void __launch_bounds__(kGatherQueries) gather_kernel(vosrtL2ReadoutParams p, int top_k,
                                                                const float* __restrict__ weight_in,
                                                                const int* __restrict__ index_in,
                                                                const T* __restrict__ mem_value, T* out) {
  const int M = p.query_size, N = p.mem_size, V = p.value_dim;
  const int m = blockIdx.x * kGatherQueries + threadIdx.x, v0 = blockIdx.y * kGatherV, b = blockIdx.z;
  if (m >= M) return;
  const size_t e = (size_t)b * M + m;
  float w[kMax];
  int idx[kMax];
  VOSRT_UNROLL
  for (int j = 0; j < kMax; ++j) {
    w[j] = j < top_k ? weight_in[e * kMax + j] : 0.f;
    idx[j] = j < top_k ? index_in[e * kMax + j] : -1;
  }
  const int v_end = min(v0 + kGatherV, V);
  for (int v = v0; v < v_end; ++v) {
    const T* row = mem_value + ((size_t)b * V + v) * N;
    float acc = 0.f;
    VOSRT_UNROLL
    for (int j = 0; j < kMax; ++j)
      if (idx[j] >= 0) acc = fmaf(w[j], to_float(__ldg(row + idx[j])), acc);
    store(out + ((size_t)b * V + v) * M + m, acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dense_kernel(vosrtL2ReadoutParams p, float scale, int stages,
                                                         int copy_bytes, const T* __restrict__ mem_key,
                                                         const T* __restrict__ query_key,
                                                         const T* __restrict__ mem_value, T* out) {
  VOSRT_DYNAMIC_SHARED(smem_raw);
  const int ck = p.key_dim, ckp = padded_key_dim(ck), N = p.mem_size, M = p.query_size, V = p.value_dim;
  const int b = blockIdx.z, v0 = blockIdx.y * kL2DenseV, m0 = blockIdx.x * kL2TileM;
  const Smem s = carve<T>(smem_raw, ckp, stages);
  const KeyTiles<T> keys{mem_key + (size_t)b * ck * N, ck, ckp, N, copy_bytes, stages};
  const T* mv = mem_value + ((size_t)b * V + v0) * N;
  const int v_rows = min(kL2DenseV, V - v0);
  load_tile<T>(static_cast<T*>(s.query), query_key + (size_t)b * ck * M, ck, ckp, M, m0, kL2TileM);

  const int q = threadIdx.x % kL2TileM, vg = (threadIdx.x / kL2TileM) * 8;
  float acc[8] = {};
  float run_max = -INFINITY, run_sum = 0.f;
  keys.start(s, 0);
  for (int n0 = 0; n0 < N; n0 += kL2TileN) {
    for (int e = threadIdx.x; e < kL2DenseV * kL2TileN; e += kThreads) {
      const int v = e / kL2TileN, n = e % kL2TileN;
      s.value[e] = (v < v_rows && n0 + n < N) ? to_float(mv[(size_t)v * N + n0 + n]) : 0.f;
    }
    affinity_tile<T>(s, keys.wait(s, n0 / kL2TileN, n0, n0 + kL2TileN >= N), ck, ckp);
    const int tile = min(kL2TileN, N - n0);
    float tile_max = -INFINITY;
    for (int i = 0; i < tile; ++i)
      tile_max = fmaxf(tile_max, l2r_score(s.score[i * kScoreLd + q], s.mem_sq[i], scale));
    const float factor = l2r_online_rescale(run_max, run_sum, tile_max);
    VOSRT_UNROLL
    for (int j = 0; j < 8; ++j) acc[j] *= factor;
    for (int i = 0; i < tile; ++i) {
      const float e = l2r_online_weight(l2r_score(s.score[i * kScoreLd + q], s.mem_sq[i], scale), run_max);
      run_sum += e;
      VOSRT_UNROLL
      for (int j = 0; j < 8; ++j) acc[j] = fmaf(e, s.value[(vg + j) * kL2TileN + i], acc[j]);
    }
    __syncthreads();
  }
  const int m = m0 + q;
  if (m >= M) return;
  const float inv = 1.0f / run_sum;
  VOSRT_UNROLL
  for (int j = 0; j < 8; ++j)
    if (vg + j < v_rows) store(out + ((size_t)b * V + v0 + vg + j) * M + m, acc[j] * inv);
}

// Register lists sized to the real k: 20 is STCN's default (a 32-entry list would cost 60% more per push).
int bucket(int top_k) { return top_k <= 8 ? 8 : top_k <= 16 ? 16 : top_k <= 20 ? 20 : top_k <= 32 ? 32 : 64; }

size_t list_bytes(const vosrtL2ReadoutParams& p, int k_max) {
  return (size_t)p.batch * p.query_size * kMaxLists * k_max * (sizeof(float) + sizeof(int));
}

// The shared memory of a select/dense block: two key stages where they fit in what the kernel may take
// dynamically (the device's opt-in limit less the kernel's static shared memory), else one. The kernel's
// dynamic limit is set to that whole budget, once per kernel and device: host threads launching it with
// different Ck never lower it under one another's launch, and a call pays no attribute queries (microseconds
// of host time, which small reads would pay in latency). The limit belongs to the CUDA context: one gone since
// (cudaDeviceReset, a context of the caller's own) refuses the launch, which forget_shared_budgets() then undoes.
std::mutex budgets_lock;
std::map<std::pair<const void*, int>, size_t> budgets;

vosrtStatus_t dynamic_shared_budget(const void* kernel, size_t& budget) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return VOSRT_ERROR_CUDA;
  std::lock_guard<std::mutex> hold(budgets_lock);
  const auto found = budgets.find({kernel, device});
  if (found != budgets.end()) {
    budget = found->second;
    return VOSRT_SUCCESS;
  }
  int optin = 0;
  cudaFuncAttributes attributes{};
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess)
    return VOSRT_ERROR_CUDA;
  budget = (size_t)optin > attributes.sharedSizeBytes ? (size_t)optin - attributes.sharedSizeBytes : 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)budget) != cudaSuccess)
    return VOSRT_ERROR_CUDA;
  try {
    budgets[{kernel, device}] = budget;
  } catch (...) {  // std::bad_alloc: the attribute is set; the next call asks again instead of remembering it
  }
  return VOSRT_SUCCESS;
}

void forget_shared_budgets() {
  std::lock_guard<std::mutex> hold(budgets_lock);
  budgets.clear();
}

// The status of the launch just made of a kernel with dynamic shared memory, and whether the context refused
// its size (cudaErrorInvalidValue): the limit set on the kernel may have gone with an earlier context.
vosrtStatus_t shared_launch_status(bool& refused) {
  const cudaError_t error = cudaGetLastError();
  refused = error == cudaErrorInvalidValue;
  return error == cudaSuccess ? VOSRT_SUCCESS : VOSRT_ERROR_CUDA;
}

// A block's shared memory on this device: `stages` (two key stages where they fit the kernel's budget, else
// one) and their `bytes`, with the `budget`; VOSRT_ERROR_NOT_SUPPORTED where not even one stage fits. The one
// rule both the launch (run) and the build-time check (fits_device) follow.
template <typename T>
vosrtStatus_t plan_shared(const void* kernel, int ck, bool dense, int& stages, size_t& bytes, size_t& budget) {
  const vosrtStatus_t st = dynamic_shared_budget(kernel, budget);
  if (st != VOSRT_SUCCESS) return st;
  stages = shared_bytes<T>(ck, dense, 2) <= budget ? 2 : 1;
  bytes = shared_bytes<T>(ck, dense, stages);
  return bytes > budget ? VOSRT_ERROR_NOT_SUPPORTED : VOSRT_SUCCESS;
}

// f(std::integral_constant<int, K>{}), K the register-list size of top_k's bucket: the one place that maps
// a run-time top_k onto the select kernel's instantiations.
template <typename F>
auto with_bucket(int top_k, F&& f) {
  switch (bucket(top_k)) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 20: return f(std::integral_constant<int, 20>{});
    case 32: return f(std::integral_constant<int, 32>{});
    default: return f(std::integral_constant<int, 64>{});
  }
}

// The kernel whose blocks hold a forward's key tiles: the dense one (top_k 0) or the select one of top_k's
// bucket, as run() picks them.
template <typename T>
const void* tile_kernel(int top_k) {
  if (top_k == 0) return reinterpret_cast<const void*>(&dense_kernel<T>);
  return with_bucket(top_k, [](auto k) {
    return reinterpret_cast<const void*>(&select_kernel<T, decltype(k)::value>);
  });
}

// Whether the current device gives a block of p's forward its shared memory (plan_shared, as run() asks).
template <typename T>
vosrtStatus_t fits_device(const vosrtL2ReadoutParams& p, size_t* needed, size_t* available) {
  const int top_k = l2r_effective_top_k(&p);
  int stages = 0;
  size_t bytes = 0, budget = 0;
  const vosrtStatus_t st = plan_shared<T>(tile_kernel<T>(top_k), p.key_dim, top_k == 0, stages, bytes, budget);
  if (st == VOSRT_ERROR_CUDA) return st;
  if (needed) *needed = shared_bytes<T>(p.key_dim, top_k == 0, 1);   // the least a block takes: one stage
  if (available) *available = budget;
  return st;
}

template <typename T, int kMax>
vosrtStatus_t run_top_k(const vosrtL2ReadoutParams& p, int top_k, float scale, const T* mk, const T* qk,
                        const T* mv, T* out, void* workspace, cudaStream_t stream, bool& refused) {
  int stages = 0;
  size_t smem = 0, budget = 0;
  vosrtStatus_t st = plan_shared<T>(reinterpret_cast<const void*>(&select_kernel<T, kMax>), p.key_dim, false,
                                    stages, smem, budget);
  if (st != VOSRT_SUCCESS) return st;
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return VOSRT_ERROR_CUDA;
  const int query_tiles = (p.query_size + kL2TileM - 1) / kL2TileM;
  const int n_tiles = (p.mem_size + kL2TileN - 1) / kL2TileN;
  // Enough slices of N to give every SM about two blocks, each slice at least 4 tiles long.
  int splits = (int)ceil_div(2LL * sms, (long long)query_tiles * p.batch);
  splits = max(1, min(splits, min(kMaxSplits, (n_tiles + 3) / 4)));
  const int tiles_per_split = (n_tiles + splits - 1) / splits;

  float* list_val = static_cast<float*>(workspace);
  int* list_idx = reinterpret_cast<int*>(list_val + (size_t)p.batch * p.query_size * kMaxLists * kMax);
  float* weight = reinterpret_cast<float*>(list_idx + (size_t)p.batch * p.query_size * kMaxLists * kMax);
  int* index = reinterpret_cast<int*>(weight + (size_t)p.batch * p.query_size * kMax);

  auto select = &select_kernel<T, kMax>;
  auto merge = &merge_kernel<kMax>;
  auto gather = &gather_kernel<T, kMax>;
  VOSRT_LAUNCH(select, dim3(query_tiles, splits, p.batch), kThreads, smem, stream)(
      p, scale, tiles_per_split, stages, key_copy_bytes(mk, p.mem_size, sizeof(T)), mk, qk, list_val, list_idx);
  if (shared_launch_status(refused) != VOSRT_SUCCESS) return VOSRT_ERROR_CUDA;
  VOSRT_LAUNCH(merge, ceil_div((long long)p.batch * p.query_size, 128), 128, 0, stream)(
      p, top_k, splits * kL2ListsPerQuery, list_val, list_idx, weight, index);
  if (launch_status() != VOSRT_SUCCESS) return VOSRT_ERROR_CUDA;
  VOSRT_LAUNCH(gather, dim3(ceil_div(p.query_size, kGatherQueries), ceil_div(p.value_dim, kGatherV), p.batch),
               kGatherQueries, 0, stream)(p, top_k, weight, index, mv, out);
  return launch_status();
}

template <typename T>
vosrtStatus_t run_once(const vosrtL2ReadoutParams& p, const T* mk, const T* qk, const T* mv, T* out,
                       void* workspace, cudaStream_t stream, bool& refused) {
  const int top_k = l2r_effective_top_k(&p);
  const float scale = l2r_effective_scale(&p);
  if (top_k == 0) {
    int stages = 0;
    size_t smem = 0, budget = 0;
    vosrtStatus_t st = plan_shared<T>(tile_kernel<T>(0), p.key_dim, true, stages, smem, budget);
    if (st != VOSRT_SUCCESS) return st;
    const dim3 grid(ceil_div(p.query_size, kL2TileM), ceil_div(p.value_dim, kL2DenseV), p.batch);
    auto dense = &dense_kernel<T>;
    VOSRT_LAUNCH(dense, grid, kThreads, smem, stream)(p, scale, stages, key_copy_bytes(mk, p.mem_size, sizeof(T)),
                                                      mk, qk, mv, out);
    return shared_launch_status(refused);
  }
  return with_bucket(top_k, [&](auto k) {
    return run_top_k<T, decltype(k)::value>(p, top_k, scale, mk, qk, mv, out, workspace, stream, refused);
  });
}

// run_once, and once more after a launch whose shared memory the context refused: the limits set on the kernels
// are set again (a cudaDeviceReset, or a context of the caller's own, had dropped them; every read above 48 KB
// of shared memory then failed for the rest of the process).
template <typename T>
vosrtStatus_t run(const vosrtL2ReadoutParams& p, const T* mk, const T* qk, const T* mv, T* out, void* workspace,
                  cudaStream_t stream) {
  bool refused = false;
  const vosrtStatus_t st = run_once<T>(p, mk, qk, mv, out, workspace, stream, refused);
  if (st != VOSRT_ERROR_CUDA || !refused) return st;
  forget_shared_budgets();
  return run_once<T>(p, mk, qk, mv, out, workspace, stream, refused);
}

}  // namespace
}  // namespace vosrt

using namespace vosrt;

extern "C" vosrtStatus_t vosrtL2ReadoutValidate(const vosrtL2ReadoutParams* p) { return l2r_validate(p); }

extern "C" size_t vosrtL2ReadoutWorkspaceSize(const vosrtL2ReadoutParams* p, vosrtDataType_t dtype) {
  if (l2r_validate(p) != VOSRT_SUCCESS || !known_dtype(dtype)) return 0;
  const int top_k = l2r_effective_top_k(p);
  if (top_k == 0) return 0;
  const int k_max = bucket(top_k);
  // partial lists + the merged (weight, index) per query: grows with B·M, never with N
  return list_bytes(*p, k_max) + (size_t)p->batch * p->query_size * k_max * (sizeof(float) + sizeof(int));
}

extern "C" vosrtStatus_t vosrtL2ReadoutDeviceCheck(const vosrtL2ReadoutParams* p, vosrtDataType_t dtype,
                                                   size_t* needed, size_t* available) {
  const vosrtStatus_t st = l2r_validate(p);
  if (st != VOSRT_SUCCESS) return st;
  if (!known_dtype(dtype)) return VOSRT_ERROR_NOT_SUPPORTED;
  clear_stale_error();
  return dtype == VOSRT_FLOAT32 ? fits_device<float>(*p, needed, available)
                                : fits_device<__half>(*p, needed, available);
}

extern "C" vosrtStatus_t vosrtL2ReadoutForward(const vosrtL2ReadoutParams* p, vosrtDataType_t dtype,
                                               const void* mem_key, const void* query_key, const void* mem_value,
                                               void* out, void* workspace, size_t workspace_bytes,
                                               cudaStream_t stream) {
  const vosrtStatus_t st = l2r_validate(p);
  if (st != VOSRT_SUCCESS) return st;
  if (!known_dtype(dtype)) return VOSRT_ERROR_NOT_SUPPORTED;
  if (!mem_key || !query_key || !mem_value || !out) return VOSRT_ERROR_INVALID_VALUE;
  const size_t need = vosrtL2ReadoutWorkspaceSize(p, dtype);
  if (need > 0 && (workspace == nullptr || workspace_bytes < need)) return VOSRT_ERROR_WORKSPACE;
  clear_stale_error();
  if (dtype == VOSRT_FLOAT32)
    return run<float>(*p, static_cast<const float*>(mem_key), static_cast<const float*>(query_key),
                      static_cast<const float*>(mem_value), static_cast<float*>(out), workspace, stream);
  return run<__half>(*p, static_cast<const __half*>(mem_key), static_cast<const __half*>(query_key),
                     static_cast<const __half*>(mem_value), static_cast<__half*>(out), workspace, stream);
}
