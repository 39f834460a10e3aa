// Attribute/shape translation for the vosrt TensorRT plugins (see vosrt_trt_translate.h). Plain C++:
// no TensorRT, no CUDA calls (only the kernels' header for the parameter structs).
#include "vosrt_trt_translate.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <limits>

namespace {

thread_local char gLastError[512] = "";

vosrtStatus_t fail(vosrtStatus_t status, char const* format, ...) {
  va_list args;
  va_start(args, format);
  std::vsnprintf(gLastError, sizeof(gLastError), format, args);
  va_end(args);
  return status;
}

vosrtStatus_t ok() {
  gLastError[0] = '\0';
  return VOSRT_SUCCESS;
}

// The kernels take int sizes; a dimension that does not fit is refused rather than truncated.
bool fitsInt(int64_t v) { return v >= 0 && v <= std::numeric_limits<int>::max(); }

char const* const kAxis[3] = {"t", "h", "w"};

}  // namespace

extern "C" {

void vosrtTrtD2Conv3DDefaultAttributes(vosrtD2Conv3DAttributes* attrs) {
  for (int i = 0; i < 3; ++i) {
    attrs->kernel_shape[i] = 0;
    attrs->strides[i] = 1;
    attrs->pads[i] = 0;
    attrs->dilations[i] = 1;
  }
  attrs->group = 1;
}

void vosrtTrtL2ReadoutDefaultAttributes(vosrtL2ReadoutAttributes* attrs) {
  attrs->top_k = 20;
  attrs->scale = 0.0f;
}

vosrtStatus_t vosrtTrtD2Conv3DValidateAttributes(const vosrtD2Conv3DAttributes* a) {
  if (a == nullptr) return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: attributes are NULL");
  for (int i = 0; i < 3; ++i) {
    if (a->kernel_shape[i] < 1)
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: kernel_shape[%d] (%s) must be >= 1, got %d", i, kAxis[i],
                  a->kernel_shape[i]);
    if (a->strides[i] < 1)
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: strides[%d] (%s) must be >= 1, got %d", i, kAxis[i],
                  a->strides[i]);
    if (a->pads[i] < 0)
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: pads[%d] (%s) must be >= 0, got %d", i, kAxis[i], a->pads[i]);
    if (a->dilations[i] < 1)
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: dilations[%d] (%s) must be >= 1, got %d", i, kAxis[i],
                  a->dilations[i]);
  }
  if (a->group < 1) return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: group must be >= 1, got %d", a->group);
  return ok();
}

vosrtStatus_t vosrtTrtL2ReadoutValidateAttributes(const vosrtL2ReadoutAttributes* a) {
  if (a == nullptr) return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: attributes are NULL");
  if (a->top_k < 0)
    return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: top_k must be >= 0 (0 = all), got %d", a->top_k);
  if (a->top_k > VOSRT_L2_READOUT_MAX_TOP_K)
    return fail(VOSRT_ERROR_NOT_SUPPORTED, "L2MemoryReadout: top_k %d exceeds the kernels' limit %d (use 0 for all)",
                a->top_k, VOSRT_L2_READOUT_MAX_TOP_K);
  if (!std::isfinite(a->scale))
    return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: scale must be finite");
  return ok();
}

vosrtStatus_t vosrtTrtD2Conv3DRoles(int nb_inputs, int rank_of_input3, vosrtD2Conv3DInputRoles* roles) {
  roles->x = 0;
  roles->dilation = 1;
  roles->modulation = -1;
  roles->weight = -1;
  roles->bias = -1;
  switch (nb_inputs) {
    case 3:
      roles->weight = 2;
      return ok();
    case 4:
      if (rank_of_input3 == 5) {
        roles->modulation = 2;
        roles->weight = 3;
        return ok();
      }
      if (rank_of_input3 == 1) {
        roles->weight = 2;
        roles->bias = 3;
        return ok();
      }
      return fail(VOSRT_ERROR_INVALID_VALUE,
                  "D2Conv3D: with 4 inputs, input 3 must be Wt (rank 5, after M) or B (rank 1, after Wt); got rank %d",
                  rank_of_input3);
    case 5:
      roles->modulation = 2;
      roles->weight = 3;
      roles->bias = 4;
      return ok();
    default:
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: expected 3, 4 or 5 inputs (X, D, [M], Wt, [B]), got %d",
                  nb_inputs);
  }
}

vosrtStatus_t vosrtTrtD2Conv3DOutputDims(const vosrtD2Conv3DAttributes* a, const int64_t x[5], const int64_t wt[5],
                                         int64_t y[5]) {
  vosrtStatus_t status = vosrtTrtD2Conv3DValidateAttributes(a);
  if (status != VOSRT_SUCCESS) return status;
  for (int i = 0; i < 3; ++i) {
    if (wt[2 + i] != a->kernel_shape[i])
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: Wt dim %d (k%s) is %lld but kernel_shape[%d] is %d", 2 + i,
                  kAxis[i], static_cast<long long>(wt[2 + i]), i, a->kernel_shape[i]);
  }
  y[0] = x[0];
  y[1] = wt[0];
  for (int i = 0; i < 3; ++i) {
    y[2 + i] = vosrt::convOutputSize<int64_t>(x[2 + i], a->kernel_shape[i], a->strides[i], a->pads[i],
                                              a->dilations[i]);
    if (y[2 + i] < 1)
      return fail(VOSRT_ERROR_INVALID_VALUE,
                  "D2Conv3D: output %s size is %lld (< 1): input %lld, kernel %d, stride %d, pad %d, dilation %d",
                  kAxis[i], static_cast<long long>(y[2 + i]), static_cast<long long>(x[2 + i]), a->kernel_shape[i],
                  a->strides[i], a->pads[i], a->dilations[i]);
  }
  return ok();
}

vosrtStatus_t vosrtTrtD2Conv3DParams(const vosrtD2Conv3DAttributes* a, int nb_inputs, const int* ranks,
                                     const int64_t* dims, vosrtD2Conv3DParams* p) {
  vosrtD2Conv3DInputRoles roles;
  vosrtStatus_t status = vosrtTrtD2Conv3DRoles(nb_inputs, nb_inputs > 3 ? ranks[3] : 0, &roles);
  if (status != VOSRT_SUCCESS) return status;
  auto row = [&](int index) { return dims + 8 * index; };
  struct Expect { int index; int rank; char const* name; };
  Expect const expected[] = {{roles.x, 5, "X"}, {roles.dilation, 5, "D"}, {roles.modulation, 5, "M"},
                             {roles.weight, 5, "Wt"}, {roles.bias, 1, "B"}};
  for (Expect const& e : expected) {
    if (e.index < 0) continue;
    if (ranks[e.index] != e.rank)
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: %s (input %d) must have rank %d, got %d", e.name, e.index,
                  e.rank, ranks[e.index]);
    for (int d = 0; d < e.rank; ++d)
      if (!fitsInt(row(e.index)[d]))
        return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: %s dim %d is %lld, outside [0, INT_MAX]", e.name, d,
                    static_cast<long long>(row(e.index)[d]));
  }
  int64_t const* x = row(roles.x);
  int64_t const* wt = row(roles.weight);
  int64_t y[5];
  status = vosrtTrtD2Conv3DOutputDims(a, x, wt, y);
  if (status != VOSRT_SUCCESS) return status;

  if (x[1] % a->group != 0 || wt[0] % a->group != 0)
    return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: C (%lld) and Cout (%lld) must both be divisible by group %d",
                static_cast<long long>(x[1]), static_cast<long long>(wt[0]), a->group);
  if (wt[1] != x[1] / a->group)
    return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: Wt dim 1 must be C/group = %lld, got %lld",
                static_cast<long long>(x[1] / a->group), static_cast<long long>(wt[1]));
  int64_t const* d = row(roles.dilation);
  int64_t const expect_d[5] = {x[0], 3, y[2], y[3], y[4]};
  for (int i = 0; i < 5; ++i)
    if (d[i] != expect_d[i])
      return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: D must be [N, 3, To, Ho, Wo] = [%lld, 3, %lld, %lld, %lld]; "
                  "dim %d is %lld", static_cast<long long>(x[0]), static_cast<long long>(y[2]),
                  static_cast<long long>(y[3]), static_cast<long long>(y[4]), i, static_cast<long long>(d[i]));
  if (roles.modulation >= 0) {
    int64_t const* m = row(roles.modulation);
    int64_t const k = int64_t{a->kernel_shape[0]} * a->kernel_shape[1] * a->kernel_shape[2];
    int64_t const expect_m[5] = {x[0], k, y[2], y[3], y[4]};
    for (int i = 0; i < 5; ++i)
      if (m[i] != expect_m[i])
        return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: M must be [N, kt*kh*kw, To, Ho, Wo] = [%lld, %lld, %lld, "
                    "%lld, %lld]; dim %d is %lld", static_cast<long long>(x[0]), static_cast<long long>(k),
                    static_cast<long long>(y[2]), static_cast<long long>(y[3]), static_cast<long long>(y[4]), i,
                    static_cast<long long>(m[i]));
  }
  if (roles.bias >= 0 && row(roles.bias)[0] != wt[0])
    return fail(VOSRT_ERROR_INVALID_VALUE, "D2Conv3D: B must be [Cout] = [%lld], got [%lld]",
                static_cast<long long>(wt[0]), static_cast<long long>(row(roles.bias)[0]));

  p->batch = static_cast<int>(x[0]);
  p->in_channels = static_cast<int>(x[1]);
  p->in_t = static_cast<int>(x[2]);
  p->in_h = static_cast<int>(x[3]);
  p->in_w = static_cast<int>(x[4]);
  p->out_channels = static_cast<int>(wt[0]);
  p->groups = a->group;
  for (int i = 0; i < 3; ++i) {
    p->kernel[i] = a->kernel_shape[i];
    p->stride[i] = a->strides[i];
    p->pad[i] = a->pads[i];
    p->dilation[i] = a->dilations[i];
  }
  p->has_modulation = roles.modulation >= 0 ? 1 : 0;
  p->has_bias = roles.bias >= 0 ? 1 : 0;
  return ok();
}

vosrtStatus_t vosrtTrtL2ReadoutOutputDims(const int64_t mk[3], const int64_t qk[3], const int64_t mv[3],
                                          int64_t out[3]) {
  if (mk[0] != qk[0] || mk[0] != mv[0])
    return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: batch differs: mem_key %lld, query_key %lld, "
                "mem_value %lld", static_cast<long long>(mk[0]), static_cast<long long>(qk[0]),
                static_cast<long long>(mv[0]));
  if (mk[1] != qk[1])
    return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: key dim differs: mem_key Ck %lld, query_key Ck %lld",
                static_cast<long long>(mk[1]), static_cast<long long>(qk[1]));
  if (mk[2] != mv[2])
    return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: memory length differs: mem_key N %lld, mem_value N %lld",
                static_cast<long long>(mk[2]), static_cast<long long>(mv[2]));
  out[0] = mk[0];
  out[1] = mv[1];
  out[2] = qk[2];
  return ok();
}

vosrtStatus_t vosrtTrtL2ReadoutParams(const vosrtL2ReadoutAttributes* a, const int64_t mk[3], const int64_t qk[3],
                                      const int64_t mv[3], vosrtL2ReadoutParams* p) {
  vosrtStatus_t status = vosrtTrtL2ReadoutValidateAttributes(a);
  if (status != VOSRT_SUCCESS) return status;
  int64_t out[3];
  status = vosrtTrtL2ReadoutOutputDims(mk, qk, mv, out);
  if (status != VOSRT_SUCCESS) return status;
  int64_t const* all[3] = {mk, qk, mv};
  for (int t = 0; t < 3; ++t)
    for (int d = 0; d < 3; ++d)
      if (!fitsInt(all[t][d]) || (d < 2 && all[t][d] < 1))
        return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: input %d dim %d is %lld, outside the supported range",
                    t, d, static_cast<long long>(all[t][d]));
  if (mk[2] < 1) return fail(VOSRT_ERROR_INVALID_VALUE, "L2MemoryReadout: the memory is empty (N = 0)");
  p->batch = static_cast<int>(mk[0]);
  p->key_dim = static_cast<int>(mk[1]);
  p->mem_size = static_cast<int>(mk[2]);
  p->query_size = static_cast<int>(qk[2]);
  p->value_dim = static_cast<int>(mv[1]);
  p->top_k = a->top_k;
  // The contract's default scale is 1/sqrt(Ck); resolve it here so the kernels get an explicit value.
  p->scale = a->scale > 0.0f ? a->scale : 1.0f / std::sqrt(static_cast<float>(mk[1]));
  return ok();
}

size_t vosrtTrtD2Conv3DWorkspaceBytes(size_t preferred, size_t minimum, int workspace_limit_mb) {
  size_t bytes = preferred;
  if (workspace_limit_mb > 0 && bytes > ((size_t)workspace_limit_mb << 20)) bytes = (size_t)workspace_limit_mb << 20;
  return bytes < minimum ? minimum : bytes;
}

const char* vosrtTrtLastError(void) { return gLastError; }

}  // extern "C"
