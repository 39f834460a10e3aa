// L2MemoryReadout math (ARCHITECTURE.md, Operator 2), shared verbatim by the CUDA kernels
// (l2_readout.cu) and the CPU driver (cpu_driver.cpp): the score, the per-query top-k list kept in
// registers, the merge of partial lists, the max-subtracted softmax and the online softmax.
#ifndef VOSRT_L2_READOUT_MATH_H
#define VOSRT_L2_READOUT_MATH_H

#include "common.h"
#include "params.h"

namespace vosrt {

// Memory entries per affinity tile, and queries per block: both kernels and the CPU driver walk N in
// tiles of this length, so the online softmax rescales at the same points everywhere.
constexpr int kL2TileN = 64;
constexpr int kL2TileM = 64;
// Threads that share one query in the top-k kernel, each keeping its own list over every
// kL2ListsPerQuery-th memory entry of a tile; the lists are merged at the end.
constexpr int kL2ListsPerQuery = 4;

// S = (2·mk·qk − ‖mk‖²)·scale. NaN policy (plugins/kernels/README.md): a NaN score ranks above every
// number, as in torch.topk and ONNX's TopK, so it is returned as +inf: it always enters the top-k and its
// softmax weight exp(inf − inf) makes the query's output NaN, as in the reference.
VOSRT_HD float l2r_score(float dot, float mem_sq, float scale) {
  const float score = (2.0f * dot - mem_sq) * scale;
  return score != score ? INFINITY : score;
}

// The kMax largest (score, index) pairs seen so far, sorted descending, in registers: every loop is
// unrolled over kMax so no element is ever addressed with a runtime index.
template <int kMax>
struct TopKList {
  float val[kMax];
  int idx[kMax];

  VOSRT_HD void init() {
VOSRT_UNROLL
    for (int j = 0; j < kMax; ++j) {
      val[j] = -INFINITY;
      idx[j] = -1;
    }
  }
  // Admission threshold: the smallest score held. Lists keep kMax >= top_k entries, a superset of the
  // top_k of their share, so no runtime index into the registers is ever needed.
  VOSRT_HD float smallest() const { return val[kMax - 1]; }
  // Insert (v, i); the smallest entry falls off the end. Callers test v > smallest() first.
  VOSRT_HD void push(float v, int i) {
VOSRT_UNROLL
    for (int j = 0; j < kMax; ++j) {
      if (v > val[j]) {
        const float tv = val[j];
        const int ti = idx[j];
        val[j] = v;
        idx[j] = i;
        v = tv;
        i = ti;
      }
    }
  }
};

// Merges `lists` partial lists (each sorted descending, stride kMax) into `out`, whose first k entries are
// then the top k of the union: only the first k of each list can belong there.
template <int kMax>
VOSRT_HD void l2r_merge_lists(const float* vals, const int* idxs, int lists, int k, TopKList<kMax>& out) {
  out.init();
  float threshold = -INFINITY;
  for (int l = 0; l < lists; ++l) {
    for (int j = 0; j < k; ++j) {
      const float v = vals[l * kMax + j];
      if (!(v > threshold)) break;  // the list is sorted: nothing further in it can enter
      out.push(v, idxs[l * kMax + j]);
      threshold = out.smallest();
    }
  }
}

// Softmax over the first k entries of a merged list, max subtracted (entry 0 is the maximum).
// weight[j] = 0 for j >= k and for empty slots. NaN policy: a score of −∞ never enters a list, so the list
// of a query whose every score is −∞ (an infinite key) is empty; the reference's top-k takes k of those
// scores and its softmax gives NaN (−∞ − (−∞)). Such a list (k > 0, hence N > 0) gets entry 0 with weight
// NaN, so every reader of the list makes the query's output NaN as the reference does.
template <int kMax>
VOSRT_HD void l2r_softmax(TopKList<kMax>& list, int k, float weight[kMax]) {
  if (k > 0 && list.idx[0] < 0) list.idx[0] = 0;
  const float top = list.val[0];
  float sum = 0.f;
VOSRT_UNROLL
  for (int j = 0; j < kMax; ++j) {
    weight[j] = (j < k && list.idx[j] >= 0) ? expf(list.val[j] - top) : 0.f;
    sum += weight[j];
  }
  const float inv = sum > 0.f ? 1.0f / sum : 0.f;
VOSRT_UNROLL
  for (int j = 0; j < kMax; ++j) weight[j] *= inv;
}

// Online softmax: folds the maximum of a new tile into the running (max, sum) and returns the factor by
// which everything accumulated so far (sum and weighted values) must be multiplied.
VOSRT_HD float l2r_online_rescale(float& run_max, float& run_sum, float tile_max) {
  const float new_max = fmaxf(run_max, tile_max);
  const float factor = run_max == -INFINITY ? 0.f : expf(run_max - new_max);
  run_sum *= factor;
  run_max = new_max;
  return factor;
}

// exp(score − run_max), the online softmax's weight of one score: 0 for a score of −∞, which the reference's softmax
// gives no weight. Computed as written, a tile whose scores were all −∞ (keys whose squared norm overflows fp32)
// coming first left run_max at −∞, and expf(−∞ − (−∞)) = NaN made the query's output NaN where the reference's
// is finite (with every score −∞ the output is still 0/0 = NaN, as the reference's). A NaN score stays NaN.
VOSRT_HD float l2r_online_weight(float score, float run_max) {
  return score == -INFINITY ? 0.f : expf(score - run_max);
}

}  // namespace vosrt

#endif  // VOSRT_L2_READOUT_MATH_H
