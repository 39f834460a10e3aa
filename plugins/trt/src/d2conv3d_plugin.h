// D2Conv3D as a TensorRT IPluginV3: a shell around vosrtD2Conv3DForward (plugins/kernels).
// Inputs X, D, [M], Wt, [B] (absent optional inputs are left out; see vosrtTrtD2Conv3DRoles).
#ifndef VOSRT_TRT_D2CONV3D_PLUGIN_H
#define VOSRT_TRT_D2CONV3D_PLUGIN_H

#include <vector>

#include "plugin_common.h"
#include "vosrt_trt_translate.h"

namespace vosrt::trt {

class D2Conv3DPlugin final : public PluginShell {
 public:
  static constexpr char const* kName = "D2Conv3D";

  // workspaceLimitMb: the node's optional `max_workspace_mb` (0 = the kernels' preferred workspace).
  D2Conv3DPlugin(std::string layerName, vosrtD2Conv3DAttributes const& attrs, int32_t workspaceLimitMb = 0);

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
  // Kernel parameters for concrete input dims; false (and a logged reason) if they do not fit together.
  bool makeParams(nvinfer1::Dims const* dims, int32_t nbInputs, vosrtD2Conv3DParams* params) const noexcept;
  // The workspace asked for at build time (for the profile's largest shapes) and handed to the kernels
  // at run time (for the shapes of the call, never more than TensorRT allocated): one rule for both.
  size_t workspaceBytes(vosrtD2Conv3DParams const& params, vosrtDataType_t dtype) const noexcept;

  vosrtD2Conv3DAttributes mAttrs;
  int32_t mWorkspaceLimitMb{0};
  int32_t mNbInputs{0};  // 3, 4 or 5 (M and B optional), from configurePlugin / onShapeChange
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFieldCollection{};
};

class D2Conv3DPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  D2Conv3DPluginCreator();
  char const* getPluginName() const noexcept override { return D2Conv3DPlugin::kName; }
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

#endif  // VOSRT_TRT_D2CONV3D_PLUGIN_H
