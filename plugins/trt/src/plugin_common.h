// Pieces shared by the two vosrt IPluginV3 shells: field parsing, logging, the dimension-expression
// adaptor for the shared shape rules, and the capability plumbing every IPluginV3OneX plugin repeats.
#ifndef VOSRT_TRT_PLUGIN_COMMON_H
#define VOSRT_TRT_PLUGIN_COMMON_H

#include <cstdint>
#include <string>
#include <type_traits>

#include "vosrt_kernels.h"  // before NvInfer: provides cudaStream_t from the CUDA runtime headers
#include "NvInferRuntime.h"

namespace vosrt::trt {

constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

// Writes "vosrt plugins: " + message through TensorRT's logger (the one setLoggerFinder or
// initVosrtPlugins handed over, else libnvinfer's global one; none in the embeddable library).
void emitLog(nvinfer1::ILogger::Severity severity, char const* message) noexcept;

namespace detail {
inline void append(std::string& out, std::string const& part) { out += part; }
inline void append(std::string& out, char const* part) { out += part != nullptr ? part : "(null)"; }
template <typename Number, std::enable_if_t<std::is_arithmetic_v<Number>, int> = 0>
void append(std::string& out, Number part) {
  out += std::to_string(part);
}
template <typename... Parts>
void logParts(nvinfer1::ILogger::Severity severity, Parts const&... parts) noexcept {
  // Called from noexcept TensorRT entry points: the message is put together here, where running out of
  // memory is caught, and not in the caller's argument list, where it would end the process.
  try {
    std::string message = "vosrt plugins: ";
    (append(message, parts), ...);
    emitLog(severity, message.c_str());
  } catch (...) {
    emitLog(severity, "vosrt plugins: (out of memory while formatting an error message)");
  }
}
}  // namespace detail

// logError(layerName, " (D2Conv3D): got ", n, " inputs"): strings, C strings and numbers, concatenated.
template <typename... Parts>
void logError(Parts const&... parts) noexcept {
  detail::logParts(nvinfer1::ILogger::Severity::kERROR, parts...);
}
template <typename... Parts>
void logWarning(Parts const&... parts) noexcept {
  detail::logParts(nvinfer1::ILogger::Severity::kWARNING, parts...);
}
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void setLogger(nvinfer1::ILogger* logger) noexcept;

// Integer fields may arrive as INT8/16/32/64 (the ONNX parser converts by the declared type, Python
// callers often send int64); `count` values are required. Returns false with a logged reason otherwise.
bool readInts(nvinfer1::PluginField const& field, int* out, int count, char const* plugin) noexcept;
bool readFloat(nvinfer1::PluginField const& field, float* out, char const* plugin) noexcept;

// The ONNX node form carries these as attributes; they select the creator and are not plugin fields.
bool isNodeIdentityField(char const* name) noexcept;

// TensorRT dimension expression with the arithmetic vosrt::convOutputSize needs.
struct DimExpr {
  nvinfer1::IDimensionExpr const* expr;
  nvinfer1::IExprBuilder* builder;
};
inline DimExpr operator+(DimExpr const& a, int64_t b) {
  return {a.builder->operation(nvinfer1::DimensionOperation::kSUM, *a.expr, *a.builder->constant(b)), a.builder};
}
inline DimExpr floorDiv(DimExpr const& a, int64_t b) {
  return {a.builder->operation(nvinfer1::DimensionOperation::kFLOOR_DIV, *a.expr, *a.builder->constant(b)),
          a.builder};
}

inline vosrtDataType_t toKernelType(nvinfer1::DataType type) {
  return type == nvinfer1::DataType::kHALF ? VOSRT_FLOAT16 : VOSRT_FLOAT32;
}

// Dims of a tensor descriptor as the int64 row the translation layer takes (8 values, rank first).
void dimsToRow(nvinfer1::Dims const& dims, int64_t row[8]) noexcept;

// The common part of both plugins: one object is the plugin and all three capability interfaces, as
// TensorRT's own V3 plugins are; data types are FP32 or FP16, linear, shared by all inputs and outputs.
class PluginShell : public nvinfer1::IPluginV3,
                    public nvinfer1::IPluginV3OneCore,
                    public nvinfer1::IPluginV3OneBuild,
                    public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit PluginShell(std::string name) : mLayerName(std::move(name)) {}
  ~PluginShell() override = default;

  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }

  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  char const* getTimingCacheID() noexcept override { return mCacheId.c_str(); }
  char const* getMetadataString() noexcept override { return mCacheId.c_str(); }

  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override {
    return clone();
  }

 protected:
  std::string mLayerName;
  std::string mCacheId;  // attribute values; shapes and formats are added by TensorRT itself
};

}  // namespace vosrt::trt

#endif  // VOSRT_TRT_PLUGIN_COMMON_H
