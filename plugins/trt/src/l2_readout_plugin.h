// L2MemoryReadout as a TensorRT IPluginV3: a shell around vosrtL2ReadoutForward (plugins/kernels).
// Inputs mem_key [B, Ck, N], query_key [B, Ck, M], mem_value [B, V, N]; output [B, V, M].
#ifndef VOSRT_TRT_L2_READOUT_PLUGIN_H
#define VOSRT_TRT_L2_READOUT_PLUGIN_H

#include <vector>

#include "plugin_common.h"
#include "vosrt_trt_translate.h"

namespace vosrt::trt {

class L2ReadoutPlugin final : public PluginShell {
 public:
  static constexpr char const* kName = "L2MemoryReadout";

  L2ReadoutPlugin(std::string layerName, vosrtL2ReadoutAttributes const& attrs);

  nvinfer1::IPluginV3* clone() noexcept override;
  char const* getPluginName() const noexcept override { return kName; }

  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  bool makeParams(nvinfer1::Dims const& memKey, nvinfer1::Dims const& queryKey, nvinfer1::Dims const& memValue,
                  vosrtL2ReadoutParams* params) const noexcept;

  vosrtL2ReadoutAttributes mAttrs;
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFieldCollection{};
};

class L2ReadoutPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  L2ReadoutPluginCreator();
  char const* getPluginName() const noexcept override { return L2ReadoutPlugin::kName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFieldCollection{};
};

}  // namespace vosrt::trt

#endif  // VOSRT_TRT_L2_READOUT_PLUGIN_H
