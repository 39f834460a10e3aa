// Helpers of the WMMA (tensor-core) code shared by the GEMMs (gemm.cuh) and the fused readout
// (l2_readout.cu).
#ifndef VOSRT_TENSOR_CORE_CUH
#define VOSRT_TENSOR_CORE_CUH

#include "common.h"

#if !defined(VOSRT_EMULATE)
#include <mma.h>
#endif

namespace vosrt {

// 3xTF32: an fp32 operand x = hi + lo with hi = tf32(x) and lo = tf32(x − hi), so that
// a·b ≈ hi·hi + hi·lo + lo·hi keeps ~fp32 accuracy on the TF32 tensor cores.
// Splits every element of a TF32 fragment into its high part (kept) and the TF32 remainder (into lo).
template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
  VOSRT_UNROLL
  for (int t = 0; t < hi.num_elements; ++t) {
    const float v = hi.x[t];
    const float h = nvcuda::wmma::__float_to_tf32(v);
    lo.x[t] = nvcuda::wmma::__float_to_tf32(v - h);
    hi.x[t] = h;
  }
}

}  // namespace vosrt

#endif  // VOSRT_TENSOR_CORE_CUH
