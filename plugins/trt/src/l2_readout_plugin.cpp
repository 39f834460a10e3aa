#include "l2_readout_plugin.h"

#include <cstring>
#include <new>
#include <string>

namespace vosrt::trt {
namespace {

char const* const kPlugin = L2ReadoutPlugin::kName;

// The translation layer's reason for the last failure on this thread, else the status's name.
char const* reason(vosrtStatus_t status) noexcept {
  char const* text = vosrtTrtLastError();
  return text != nullptr && text[0] != '\0' ? text : vosrtGetStatusString(status);
}

bool threeD(nvinfer1::Dims const& dims, int64_t out[3]) {
  if (dims.nbDims != 3) return false;
  for (int i = 0; i < 3; ++i) out[i] = dims.d[i];
  return true;
}

// Where the reason this GPU cannot run a forward of `params` is its shared memory (a block's key tiles
// at this Ck do not fit), logs that with the numbers and returns true; false where it can, or where the
// device cannot be asked (the forward then reports its own error).
bool loggedUnfitDevice(std::string const& layer, vosrtL2ReadoutParams const& params, vosrtDataType_t dtype) noexcept {
  size_t needed = 0, available = 0;
  if (vosrtL2ReadoutDeviceCheck(&params, dtype, &needed, &available) != VOSRT_ERROR_NOT_SUPPORTED) return false;
  logError(layer, " (L2MemoryReadout): at key width Ck = ", params.key_dim,
           dtype == VOSRT_FLOAT16 ? " in fp16" : " in fp32", " a block of the readout needs ", needed,
           " bytes of shared memory, and this GPU gives it ", available,
           ": run the model on a GPU with more shared memory per block, or with the onnxruntime backend");
  return true;
}

}  // namespace

L2ReadoutPlugin::L2ReadoutPlugin(std::string layerName, vosrtL2ReadoutAttributes const& attrs)
    : PluginShell(std::move(layerName)), mAttrs(attrs) {
  using nvinfer1::PluginField;
  using nvinfer1::PluginFieldType;
  mFields = {PluginField("top_k", &mAttrs.top_k, PluginFieldType::kINT32, 1),
             PluginField("scale", &mAttrs.scale, PluginFieldType::kFLOAT32, 1)};
  mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
  mFieldCollection.fields = mFields.data();
  mCacheId = "L2MemoryReadout:k" + std::to_string(mAttrs.top_k) + ":s" + std::to_string(mAttrs.scale);
}

nvinfer1::IPluginV3* L2ReadoutPlugin::clone() noexcept {
  try {
    return new L2ReadoutPlugin(mLayerName, mAttrs);
  } catch (...) {  // std::bad_alloc: no exception may cross into TensorRT
    return nullptr;
  }
}

bool L2ReadoutPlugin::makeParams(nvinfer1::Dims const& memKey, nvinfer1::Dims const& queryKey,
                                 nvinfer1::Dims const& memValue, vosrtL2ReadoutParams* params) const noexcept {
  int64_t mk[3], qk[3], mv[3];
  if (!threeD(memKey, mk) || !threeD(queryKey, qk) || !threeD(memValue, mv)) {
    logError(mLayerName, " (L2MemoryReadout): mem_key, query_key and mem_value must all be 3-D");
    return false;
  }
  vosrtStatus_t status = vosrtTrtL2ReadoutParams(&mAttrs, mk, qk, mv, params);
  if (status != VOSRT_SUCCESS) {
    logError(mLayerName, ": ", reason(status));
    return false;
  }
  status = vosrtL2ReadoutValidate(params);
  if (status != VOSRT_SUCCESS) {
    logError(mLayerName, " (L2MemoryReadout): the kernels refuse these parameters: ", vosrtGetStatusString(status));
    return false;
  }
  return true;
}

int32_t L2ReadoutPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                         nvinfer1::DynamicPluginTensorDesc const* /*out*/,
                                         int32_t nbOutputs) noexcept {
  if (nbInputs != 3 || nbOutputs != 1) {
    logError(mLayerName, " (L2MemoryReadout): expected 3 inputs and 1 output");
    return 1;
  }
  vosrtL2ReadoutParams params;
  if (!makeParams(in[0].max, in[1].max, in[2].max, &params)) return 1;
  // the engine is built on the GPU it is for: a key width that GPU cannot run fails the build, not each
  // enqueue of the built engine
  vosrtDataType_t const dtype = toKernelType(in[0].desc.type);
  if (loggedUnfitDevice(mLayerName, params, dtype)) return 1;
  // A memory of at most top_k entries (one the profile's shortest reaches) runs the all-N kernel, whose blocks
  // hold more than the top-k kernel's that the largest shapes run: check that one too.
  if (params.top_k > 0 && in[0].min.nbDims == 3 && in[0].min.d[2] <= params.top_k) {
    vosrtL2ReadoutParams allN = params;
    allN.top_k = 0;
    if (loggedUnfitDevice(mLayerName, allN, dtype)) return 1;
  }
  return 0;
}

int32_t L2ReadoutPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                         nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                         nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                         nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 3 || inputs[2].nbDims != 3) {
    logError(mLayerName, " (L2MemoryReadout): expected 3-D mem_key, query_key, mem_value");
    return 1;
  }
  // out [B, V, M]: batch of mem_key, V of mem_value, M of query_key
  outputs[0].nbDims = 3;
  outputs[0].d[0] = inputs[0].d[0];
  outputs[0].d[1] = inputs[2].d[1];
  outputs[0].d[2] = inputs[1].d[2];
  return 0;
}

size_t L2ReadoutPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                         nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                         int32_t /*nbOutputs*/) const noexcept {
  if (nbInputs != 3) return 0;
  vosrtL2ReadoutParams params;
  if (!makeParams(inputs[0].max, inputs[1].max, inputs[2].max, &params)) return 0;
  return vosrtL2ReadoutWorkspaceSize(&params, toKernelType(inputs[0].desc.type));
}

int32_t L2ReadoutPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                       nvinfer1::PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept {
  if (nbInputs != 3) return 1;
  vosrtL2ReadoutParams params;
  return makeParams(in[0].dims, in[1].dims, in[2].dims, &params) ? 0 : 1;
}

int32_t L2ReadoutPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                 nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                                 void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  vosrtL2ReadoutParams params;
  if (!makeParams(inputDesc[0].dims, inputDesc[1].dims, inputDesc[2].dims, &params)) return 1;
  vosrtDataType_t const dtype = toKernelType(inputDesc[0].type);
  size_t const workspaceBytes = vosrtL2ReadoutWorkspaceSize(&params, dtype);
  vosrtStatus_t const status = vosrtL2ReadoutForward(&params, dtype, inputs[0], inputs[1], inputs[2], outputs[0],
                                                     workspace, workspaceBytes, stream);
  if (status != VOSRT_SUCCESS) {
    if (status != VOSRT_ERROR_NOT_SUPPORTED || !loggedUnfitDevice(mLayerName, params, dtype))
      logError(mLayerName, " (L2MemoryReadout): forward failed: ", vosrtGetStatusString(status));
    return 1;
  }
  return 0;
}

nvinfer1::PluginFieldCollection const* L2ReadoutPlugin::getFieldsToSerialize() noexcept { return &mFieldCollection; }

L2ReadoutPluginCreator::L2ReadoutPluginCreator() {
  using nvinfer1::PluginField;
  using nvinfer1::PluginFieldType;
  mFields = {PluginField("top_k", nullptr, PluginFieldType::kINT32, 1),
             PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1)};
  mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
  mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginV3* L2ReadoutPluginCreator::createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                                          nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    vosrtL2ReadoutAttributes attrs;
    vosrtTrtL2ReadoutDefaultAttributes(&attrs);
    std::string const layer = name != nullptr ? name : "L2MemoryReadout";
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      nvinfer1::PluginField const& field = fc->fields[i];
      bool ok = true;
      if (std::strcmp(field.name, "top_k") == 0) {
        ok = readInts(field, &attrs.top_k, 1, kPlugin);
      } else if (std::strcmp(field.name, "scale") == 0) {
        ok = readFloat(field, &attrs.scale, kPlugin);
      } else if (!isNodeIdentityField(field.name)) {
        logWarning(layer, " (L2MemoryReadout): ignoring unknown field '", field.name, "'");
      }
      if (!ok) return nullptr;
    }
    vosrtStatus_t const status = vosrtTrtL2ReadoutValidateAttributes(&attrs);
    if (status != VOSRT_SUCCESS) {
      logError(layer, ": ", reason(status));
      return nullptr;
    }
    return new L2ReadoutPlugin(layer, attrs);
  } catch (...) {  // std::bad_alloc: no exception may cross into TensorRT
    return nullptr;
  }
}

}  // namespace vosrt::trt
