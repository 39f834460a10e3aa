// L2MemoryReadout on host threads, fused: each thread takes a tile of queries, walks the memory in tiles
// (a register-blocked GEMM of keys against queries gives the tile's dot products) and folds the scores
// into one top-k list per query (TopKList, the CUDA kernels' own code); a second pass gathers the values
// of the kept entries with their softmax weights, value row by value row. Only a [kTileN, kTileM] block
// of the affinity ever exists, plus the M × top_k kept indices and weights.
// top_k = 0 (all N) keeps a running maximum and rescales instead (l2r_online_rescale).
#include "vosrt_cpu_ops.h"  // first: it selects the CUDA-free parameter header

#include <algorithm>
#include <vector>

#include "gemm_tile.h"
#include "l2_readout_math.h"
#include "parallel.h"

using namespace vosrt;

namespace {

constexpr int kTileM = 64;   // queries per work item
constexpr int kTileN = 96;   // memory entries per affinity block (a multiple of kBlockI)

struct Shape {
  int B, Ck, N, M, V, top_k;
  float scale;
};

// Copies columns [begin, begin + width) of a [rows, ld] matrix into a [rows, padded] block.
void pack_columns(const float* src, int ld, int rows, int begin, int width, int padded, float* dst) {
  for (int r = 0; r < rows; ++r) {
    const float* s = src + (size_t)r * ld + begin;
    float* d = dst + (size_t)r * padded;
    std::copy(s, s + width, d);
    std::fill(d + width, d + padded, 0.f);
  }
}

// dots[t, q] = Σ_c mk[c, n0 + t] · qk_tile[c, q] for the memory tile starting at n0.
void key_dots(const Shape& s, const float* mk, int n0, int tile_n, const float* qk_tile, int width, float* pad_keys,
              float* dots) {
  const float* a = mk + n0;
  int lda = s.N;
  if (n0 + round_up(tile_n, kBlockI) > s.N) {  // the last tile would read past the row: copy it padded
    pack_columns(mk, s.N, s.Ck, n0, tile_n, kTileN, pad_keys);
    a = pad_keys;
    lda = kTileN;
  }
  gemm_at_b<false>(s.Ck, tile_n, width, a, lda, qk_tile, kTileM, dots, kTileM);
}

// Top-k of every query of one tile: kept[q·top_k + j] = (index, softmax weight) of its j-th entry.
template <int kMax>
void topk_tile(const Shape& s, int m0, const float* mem_sq, const float* mk, const float* qk, int* kept_index,
               float* kept_weight, std::vector<float>& scratch) {
  const int width = std::min(kTileM, s.M - m0);
  scratch.resize((size_t)s.Ck * kTileM + (size_t)s.Ck * kTileN + (size_t)kTileN * kTileM);
  float* qk_tile = scratch.data();
  float* pad_keys = qk_tile + (size_t)s.Ck * kTileM;
  float* dots = pad_keys + (size_t)s.Ck * kTileN;
  pack_columns(qk, s.M, s.Ck, m0, width, kTileM, qk_tile);
  TopKList<kMax> lists[kTileM];
  // threshold[q]: the admission threshold of query q's list; +inf for the padding lanes past `width`, so
  // the vector test below never admits them.
  alignas(64) float threshold[kTileM];
  for (int q = 0; q < kTileM; ++q) {
    lists[q].init();
    threshold[q] = q < width ? lists[q].smallest() : INFINITY;
  }
  for (int n0 = 0; n0 < s.N; n0 += kTileN) {
    const int tile_n = std::min(kTileN, s.N - n0);
    key_dots(s, mk, n0, tile_n, qk_tile, width, pad_keys, dots);
    // Memory entry by memory entry, all the tile's queries at once: one vector pass tests every query's
    // threshold, and only the few queries that admit the entry touch their lists. Each query still sees
    // the entries in index order, so its list (ties included) is the one a query-by-query scan builds.
    for (int t = 0; t < tile_n; ++t) {
      const float sq = mem_sq[n0 + t];
      const float* row = dots + (size_t)t * kTileM;
      alignas(64) unsigned char admit[kTileM];
      int any = 0;
      for (int q = 0; q < kTileM; ++q) {
        admit[q] = l2r_score(row[q], sq, s.scale) > threshold[q];
        any |= admit[q];
      }
      if (!any) continue;
      for (int q = 0; q < width; ++q) {
        if (!admit[q]) continue;
        lists[q].push(l2r_score(row[q], sq, s.scale), n0 + t);
        threshold[q] = lists[q].smallest();
      }
    }
  }
  for (int q = 0; q < width; ++q) {
    float weight[kMax];
    l2r_softmax<kMax>(lists[q], s.top_k, weight);
    for (int j = 0; j < s.top_k; ++j) {
      // An empty slot (fewer than top_k entries, impossible once top_k < N) reads entry 0 with weight 0.
      kept_index[(size_t)(m0 + q) * s.top_k + j] = lists[q].idx[j] >= 0 ? lists[q].idx[j] : 0;
      kept_weight[(size_t)(m0 + q) * s.top_k + j] = weight[j];
    }
  }
}

// out[v, m] = Σ_j weight[m, j] · mv[v, index[m, j]] for the kRows value rows from v: the rows are read
// together, so each query's indices and weights are loaded once for all of them.
template <int kRows>
void gather_block(const Shape& s, int v, const float* mv, const int* kept_index, const float* kept_weight,
                  float* out) {
  const float* row = mv + (size_t)v * s.N;
  float* dst = out + (size_t)v * s.M;
  for (int m = 0; m < s.M; ++m) {
    const int* index = kept_index + (size_t)m * s.top_k;
    const float* weight = kept_weight + (size_t)m * s.top_k;
    float acc[kRows] = {};
    for (int j = 0; j < s.top_k; ++j) {
      const float w = weight[j];
      const size_t i = (size_t)index[j];
      for (int r = 0; r < kRows; ++r) acc[r] += w * row[(size_t)r * s.N + i];
    }
    for (int r = 0; r < kRows; ++r) dst[(size_t)r * s.M + m] = acc[r];
  }
}

// Value rows [v0, v1), a few at a time (gather_block): a block's rows (N floats each) stay in cache while
// every query reads them, and mv is streamed from memory once.
void gather_rows(const Shape& s, int v0, int v1, const float* mv, const int* kept_index, const float* kept_weight,
                 float* out) {
  int v = v0;
  for (; v + 4 <= v1; v += 4) gather_block<4>(s, v, mv, kept_index, kept_weight, out);
  for (; v < v1; ++v) gather_block<1>(s, v, mv, kept_index, kept_weight, out);
}

void dense_tile(const Shape& s, int b, int m0, const float* mem_sq, const float* mk, const float* qk, const float* mv,
                float* out, std::vector<float>& scratch) {
  const int width = std::min(kTileM, s.M - m0);
  scratch.resize((size_t)s.Ck * kTileM + (size_t)s.Ck * kTileN + (size_t)kTileN * kTileM + (size_t)s.V * kTileM);
  float* qk_tile = scratch.data();
  float* pad_keys = qk_tile + (size_t)s.Ck * kTileM;
  float* dots = pad_keys + (size_t)s.Ck * kTileN;
  float* acc = dots + (size_t)kTileN * kTileM;  // [V, kTileM]
  std::fill(acc, acc + (size_t)s.V * kTileM, 0.f);
  pack_columns(qk, s.M, s.Ck, m0, width, kTileM, qk_tile);
  float run_max[kTileM], run_sum[kTileM], factor[kTileM];
  std::fill(run_max, run_max + kTileM, -INFINITY);
  std::fill(run_sum, run_sum + kTileM, 0.f);
  // As in the kernels and the CPU driver: the online softmax rescales once per kL2TileN entries.
  for (int n0 = 0; n0 < s.N; n0 += kL2TileN) {
    const int tile_n = std::min(kL2TileN, s.N - n0);
    key_dots(s, mk, n0, tile_n, qk_tile, width, pad_keys, dots);
    for (int q = 0; q < width; ++q) {
      float tile_max = -INFINITY;
      for (int t = 0; t < tile_n; ++t) {
        float& e = dots[(size_t)t * kTileM + q];
        e = l2r_score(e, mem_sq[n0 + t], s.scale);
        tile_max = fmaxf(tile_max, e);
      }
      factor[q] = l2r_online_rescale(run_max[q], run_sum[q], tile_max);
      for (int t = 0; t < tile_n; ++t) {
        float& e = dots[(size_t)t * kTileM + q];
        e = l2r_online_weight(e, run_max[q]);
        run_sum[q] += e;
      }
    }
    for (int v = 0; v < s.V; ++v) {
      float* a = acc + (size_t)v * kTileM;
      const float* row = mv + ((size_t)b * s.V + v) * s.N + n0;
      for (int q = 0; q < width; ++q) a[q] *= factor[q];
      for (int t = 0; t < tile_n; ++t) {
        const float mvv = row[t];
        const float* e = dots + (size_t)t * kTileM;
        for (int q = 0; q < kTileM; ++q) a[q] += mvv * e[q];
      }
    }
  }
  for (int v = 0; v < s.V; ++v) {
    float* dst = out + ((size_t)b * s.V + v) * s.M + m0;
    for (int q = 0; q < width; ++q) dst[q] = acc[(size_t)v * kTileM + q] / run_sum[q];
  }
}

}  // namespace

static_assert(kTileN % kBlockI == 0 && kL2TileN <= kTileN, "affinity tiles hold whole register blocks");
static_assert(kTileM % kBlockJ == 0, "query tiles are padded to whole register blocks");

extern "C" int vosrtCpuOpsVersion(void) { return VOSRT_CPU_OPS_VERSION; }

extern "C" vosrtStatus_t vosrtCpuOpsL2ReadoutForward(const vosrtL2ReadoutParams* p, const float* mem_key,
                                                     const float* query_key, const float* mem_value, float* out,
                                                     int threads) {
  return host_guarded([&]() -> vosrtStatus_t {
    vosrtStatus_t st = l2r_validate(p);
    if (st != VOSRT_SUCCESS) return st;
    if (!mem_key || !query_key || !mem_value || !out) return VOSRT_ERROR_INVALID_VALUE;
    const Shape s{p->batch, p->key_dim, p->mem_size, p->query_size, p->value_dim, l2r_effective_top_k(p),
                  l2r_effective_scale(p)};
    // |mk_n|², channel rows outer so the reads are contiguous; each entry still sums c = 0, 1, ... in order.
    std::vector<float> mem_sq((size_t)s.B * s.N, 0.f);
    for (int b = 0; b < s.B; ++b) {
      float* sq = mem_sq.data() + (size_t)b * s.N;
      for (int c = 0; c < s.Ck; ++c) {
        const float* row = mem_key + ((size_t)b * s.Ck + c) * s.N;
        for (int n = 0; n < s.N; ++n) sq[n] += row[n] * row[n];
      }
    }
    const int tiles = (s.M + kTileM - 1) / kTileM;
    const int workers = std::max(1, std::min(resolve_threads(threads), s.B * tiles));
    std::vector<std::vector<float>> scratch(workers);
    if (s.top_k == 0) {
      parallel_for(s.B * tiles, workers, [&](int worker, int item) {
        const int b = item / tiles, m0 = (item % tiles) * kTileM;
        dense_tile(s, b, m0, mem_sq.data() + (size_t)b * s.N, mem_key + (size_t)b * s.Ck * s.N,
                   query_key + (size_t)b * s.Ck * s.M, mem_value, out, scratch[worker]);
      });
      return VOSRT_SUCCESS;
    }
    // Two passes: select the top-k of every query (by query tiles), then gather the values (by value rows).
    std::vector<int> kept_index((size_t)s.B * s.M * s.top_k);
    std::vector<float> kept_weight((size_t)s.B * s.M * s.top_k);
    parallel_for(s.B * tiles, workers, [&](int worker, int item) {
      const int b = item / tiles, m0 = (item % tiles) * kTileM;
      const float* mk = mem_key + (size_t)b * s.Ck * s.N;
      const float* qk = query_key + (size_t)b * s.Ck * s.M;
      const float* sq = mem_sq.data() + (size_t)b * s.N;
      int* index = kept_index.data() + (size_t)b * s.M * s.top_k;
      float* weight = kept_weight.data() + (size_t)b * s.M * s.top_k;
      std::vector<float>& buf = scratch[worker];
      if (s.top_k <= 8) topk_tile<8>(s, m0, sq, mk, qk, index, weight, buf);
      else if (s.top_k <= 16) topk_tile<16>(s, m0, sq, mk, qk, index, weight, buf);
      else if (s.top_k <= 32) topk_tile<32>(s, m0, sq, mk, qk, index, weight, buf);
      else topk_tile<64>(s, m0, sq, mk, qk, index, weight, buf);
    });
    constexpr int kRowsPerItem = 16;
    const int row_blocks = (s.V + kRowsPerItem - 1) / kRowsPerItem;
    parallel_for(s.B * row_blocks, threads, [&](int, int item) {
      const int b = item / row_blocks, v0 = (item % row_blocks) * kRowsPerItem;
      gather_rows(s, v0, std::min(s.V, v0 + kRowsPerItem), mem_value + (size_t)b * s.V * s.N,
                  kept_index.data() + (size_t)b * s.M * s.top_k, kept_weight.data() + (size_t)b * s.M * s.top_k,
                  out + (size_t)b * s.V * s.M);
    });
    return VOSRT_SUCCESS;
  });
}
