#include "d2conv3d_plugin.h"

#include <cstring>
#include <new>

namespace vosrt::trt {
namespace {

char const* const kPlugin = D2Conv3DPlugin::kName;

// The translation layer's reason for the last failure on this thread, else the status's name.
char const* reason(vosrtStatus_t status) noexcept {
  char const* text = vosrtTrtLastError();
  return text != nullptr && text[0] != '\0' ? text : vosrtGetStatusString(status);
}

}  // namespace

D2Conv3DPlugin::D2Conv3DPlugin(std::string layerName, vosrtD2Conv3DAttributes const& attrs,
                               int32_t workspaceLimitMb)
    : PluginShell(std::move(layerName)), mAttrs(attrs), mWorkspaceLimitMb(workspaceLimitMb) {
  using nvinfer1::PluginField;
  using nvinfer1::PluginFieldType;
  // The serialised fields are the node attributes themselves, so a runtime-phase createPlugin reads
  // them exactly as the build phase did.
  mFields = {PluginField("kernel_shape", mAttrs.kernel_shape, PluginFieldType::kINT32, 3),
             PluginField("strides", mAttrs.strides, PluginFieldType::kINT32, 3),
             PluginField("pads", mAttrs.pads, PluginFieldType::kINT32, 3),
             PluginField("dilations", mAttrs.dilations, PluginFieldType::kINT32, 3),
             PluginField("group", &mAttrs.group, PluginFieldType::kINT32, 1),
             PluginField("max_workspace_mb", &mWorkspaceLimitMb, PluginFieldType::kINT32, 1)};
  mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
  mFieldCollection.fields = mFields.data();
  auto const triple = [](int const* v) {
    return std::to_string(v[0]) + "," + std::to_string(v[1]) + "," + std::to_string(v[2]);
  };
  mCacheId = "D2Conv3D:k" + triple(mAttrs.kernel_shape) + ":s" + triple(mAttrs.strides) + ":p" +
             triple(mAttrs.pads) + ":d" + triple(mAttrs.dilations) + ":g" + std::to_string(mAttrs.group) +
             ":w" + std::to_string(mWorkspaceLimitMb);
}

nvinfer1::IPluginV3* D2Conv3DPlugin::clone() noexcept {
  try {
    // The copy must own its field storage: build it from the attributes, not member-wise.
    auto* copy = new D2Conv3DPlugin(mLayerName, mAttrs, mWorkspaceLimitMb);
    copy->mNbInputs = mNbInputs;
    return copy;
  } catch (...) {  // std::bad_alloc: no exception may cross into TensorRT
    return nullptr;
  }
}

bool D2Conv3DPlugin::makeParams(nvinfer1::Dims const* dims, int32_t nbInputs,
                                vosrtD2Conv3DParams* params) const noexcept {
  if (nbInputs < 3 || nbInputs > 5) {
    logError(mLayerName, " (D2Conv3D): expected 3 to 5 inputs, got ", nbInputs);
    return false;
  }
  int ranks[5];
  int64_t rows[5 * 8];
  for (int32_t i = 0; i < nbInputs; ++i) {
    ranks[i] = dims[i].nbDims;
    dimsToRow(dims[i], rows + 8 * i);
  }
  vosrtStatus_t status = vosrtTrtD2Conv3DParams(&mAttrs, nbInputs, ranks, rows, params);
  if (status != VOSRT_SUCCESS) {
    logError(mLayerName, ": ", reason(status));
    return false;
  }
  status = vosrtD2Conv3DValidate(params);
  if (status != VOSRT_SUCCESS) {
    logError(mLayerName, " (D2Conv3D): the kernels refuse these parameters: ", vosrtGetStatusString(status));
    return false;
  }
  return true;
}

int32_t D2Conv3DPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                        nvinfer1::DynamicPluginTensorDesc const* /*out*/,
                                        int32_t nbOutputs) noexcept {
  if (nbOutputs != 1) return 1;
  mNbInputs = nbInputs;
  // Check the largest shapes of the profile: they bound every shape the engine will see.
  nvinfer1::Dims maxDims[5];
  for (int32_t i = 0; i < nbInputs && i < 5; ++i) maxDims[i] = in[i].max;
  vosrtD2Conv3DParams params;
  return makeParams(maxDims, nbInputs, &params) ? 0 : 1;
}

int32_t D2Conv3DPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                        nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                        nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                        nvinfer1::IExprBuilder& exprBuilder) noexcept {
  vosrtD2Conv3DInputRoles roles;
  vosrtStatus_t status = vosrtTrtD2Conv3DRoles(nbInputs, nbInputs > 3 ? inputs[3].nbDims : 0, &roles);
  if (status != VOSRT_SUCCESS || nbOutputs != 1) {
    logError(mLayerName, ": ", reason(status));
    return 1;
  }
  nvinfer1::DimsExprs const& x = inputs[roles.x];
  nvinfer1::DimsExprs const& weight = inputs[roles.weight];
  if (x.nbDims != 5 || weight.nbDims != 5) {
    logError(mLayerName, " (D2Conv3D): X and Wt must be 5-D");
    return 1;
  }
  // Y [N, Cout, To, Ho, Wo]
  outputs[0].nbDims = 5;
  outputs[0].d[0] = x.d[0];
  outputs[0].d[1] = weight.d[0];
  for (int i = 0; i < 3; ++i) {
    DimExpr const size = vosrt::convOutputSize(DimExpr{x.d[2 + i], &exprBuilder}, mAttrs.kernel_shape[i],
                                               mAttrs.strides[i], mAttrs.pads[i], mAttrs.dilations[i]);
    outputs[0].d[2 + i] = size.expr;
  }
  return 0;
}

size_t D2Conv3DPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                        nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                        int32_t /*nbOutputs*/) const noexcept {
  nvinfer1::Dims maxDims[5];
  for (int32_t i = 0; i < nbInputs && i < 5; ++i) maxDims[i] = inputs[i].max;
  vosrtD2Conv3DParams params;
  if (!makeParams(maxDims, nbInputs, &params)) return 0;
  return workspaceBytes(params, toKernelType(inputs[0].desc.type));
}

size_t D2Conv3DPlugin::workspaceBytes(vosrtD2Conv3DParams const& params, vosrtDataType_t dtype) const noexcept {
  return vosrtTrtD2Conv3DWorkspaceBytes(vosrtD2Conv3DWorkspaceSize(&params, dtype),
                                        vosrtD2Conv3DMinWorkspaceSize(&params, dtype), mWorkspaceLimitMb);
}

int32_t D2Conv3DPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                      nvinfer1::PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept {
  mNbInputs = nbInputs;
  nvinfer1::Dims dims[5];
  for (int32_t i = 0; i < nbInputs && i < 5; ++i) dims[i] = in[i].dims;
  vosrtD2Conv3DParams params;
  return makeParams(dims, nbInputs, &params) ? 0 : 1;
}

int32_t D2Conv3DPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                                void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  // enqueue is not told the input count; onShapeChange (always called before the first enqueue of a
  // shape) recorded it.
  int32_t const nbInputs = mNbInputs;
  if (nbInputs < 3) {
    logError(mLayerName, " (D2Conv3D): enqueue before onShapeChange");
    return 1;
  }
  nvinfer1::Dims dims[5];
  for (int32_t i = 0; i < nbInputs; ++i) dims[i] = inputDesc[i].dims;
  vosrtD2Conv3DParams params;
  if (!makeParams(dims, nbInputs, &params)) return 1;
  vosrtD2Conv3DInputRoles roles;
  vosrtTrtD2Conv3DRoles(nbInputs, nbInputs > 3 ? dims[3].nbDims : 0, &roles);
  vosrtDataType_t const dtype = toKernelType(inputDesc[0].type);
  // TensorRT allocated workspaceBytes() of the profile's largest shapes; this call's shapes need no more.
  size_t const bytes = workspaceBytes(params, dtype);
  vosrtStatus_t const status = vosrtD2Conv3DForward(
      &params, dtype, inputs[roles.x], inputs[roles.dilation], roles.modulation >= 0 ? inputs[roles.modulation] : nullptr,
      inputs[roles.weight], roles.bias >= 0 ? inputs[roles.bias] : nullptr, outputs[0], workspace, bytes,
      stream);
  if (status != VOSRT_SUCCESS) {
    logError(mLayerName, " (D2Conv3D): forward failed: ", vosrtGetStatusString(status));
    return 1;
  }
  return 0;
}

nvinfer1::PluginFieldCollection const* D2Conv3DPlugin::getFieldsToSerialize() noexcept { return &mFieldCollection; }

D2Conv3DPluginCreator::D2Conv3DPluginCreator() {
  using nvinfer1::PluginField;
  using nvinfer1::PluginFieldType;
  mFields = {PluginField("kernel_shape", nullptr, PluginFieldType::kINT32, 3),
             PluginField("strides", nullptr, PluginFieldType::kINT32, 3),
             PluginField("pads", nullptr, PluginFieldType::kINT32, 3),
             PluginField("dilations", nullptr, PluginFieldType::kINT32, 3),
             PluginField("group", nullptr, PluginFieldType::kINT32, 1),
             PluginField("max_workspace_mb", nullptr, PluginFieldType::kINT32, 1)};
  mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
  mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginV3* D2Conv3DPluginCreator::createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                                         nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    vosrtD2Conv3DAttributes attrs;
    vosrtTrtD2Conv3DDefaultAttributes(&attrs);
    std::string const layer = name != nullptr ? name : "D2Conv3D";
    bool haveKernel = false;
    int workspaceLimitMb = 0;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      nvinfer1::PluginField const& field = fc->fields[i];
      bool ok = true;
      if (std::strcmp(field.name, "kernel_shape") == 0) {
        ok = readInts(field, attrs.kernel_shape, 3, kPlugin);
        haveKernel = ok;
      } else if (std::strcmp(field.name, "strides") == 0) {
        ok = readInts(field, attrs.strides, 3, kPlugin);
      } else if (std::strcmp(field.name, "pads") == 0) {
        ok = readInts(field, attrs.pads, 3, kPlugin);
      } else if (std::strcmp(field.name, "dilations") == 0) {
        ok = readInts(field, attrs.dilations, 3, kPlugin);
      } else if (std::strcmp(field.name, "group") == 0) {
        ok = readInts(field, &attrs.group, 1, kPlugin);
      } else if (std::strcmp(field.name, "max_workspace_mb") == 0) {
        ok = readInts(field, &workspaceLimitMb, 1, kPlugin);
        if (ok && workspaceLimitMb < 0) {
          logError(layer, " (D2Conv3D): max_workspace_mb must be >= 0 (0 = no limit), got ", workspaceLimitMb);
          return nullptr;
        }
      } else if (!isNodeIdentityField(field.name)) {
        logWarning(layer, " (D2Conv3D): ignoring unknown field '", field.name, "'");
      }
      if (!ok) return nullptr;
    }
    if (!haveKernel) {
      logError(layer, " (D2Conv3D): the kernel_shape attribute (3 ints, t h w) is required");
      return nullptr;
    }
    vosrtStatus_t const status = vosrtTrtD2Conv3DValidateAttributes(&attrs);
    if (status != VOSRT_SUCCESS) {
      logError(layer, ": ", reason(status));
      return nullptr;
    }
    return new D2Conv3DPlugin(layer, attrs, workspaceLimitMb);
  } catch (...) {  // std::bad_alloc: no exception may cross into TensorRT
    return nullptr;
  }
}

}  // namespace vosrt::trt
