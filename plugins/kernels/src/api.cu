// Library-wide entry points of the C API: status strings and versions.
#include "vosrt_kernels.h"

extern "C" const char* vosrtGetStatusString(vosrtStatus_t status) {
  switch (status) {
    case VOSRT_SUCCESS: return "VOSRT_SUCCESS";
    case VOSRT_ERROR_INVALID_VALUE: return "VOSRT_ERROR_INVALID_VALUE: a size, attribute or pointer is invalid";
    case VOSRT_ERROR_NOT_SUPPORTED: return "VOSRT_ERROR_NOT_SUPPORTED: valid, but outside what the kernels implement";
    case VOSRT_ERROR_CUDA: return "VOSRT_ERROR_CUDA: a CUDA call or kernel launch failed";
    case VOSRT_ERROR_WORKSPACE: return "VOSRT_ERROR_WORKSPACE: the workspace is smaller than the size function asked for";
    case VOSRT_ERROR_HOST_RESOURCES: return "VOSRT_ERROR_HOST_RESOURCES: out of host memory or threads";
  }
  return "unknown vosrtStatus_t";
}

extern "C" int vosrtKernelsVersion(void) { return VOSRT_KERNELS_VERSION; }

extern "C" int vosrtL2ReadoutMaxTopK(void) { return VOSRT_L2_READOUT_MAX_TOP_K; }
