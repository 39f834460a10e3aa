#include "plugin_common.h"

#include <atomic>
#include <cstring>

namespace vosrt::trt {
namespace {

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
std::atomic<nvinfer1::ILogger*> gLogger{nullptr};

// The logger TensorRT handed over (setLoggerFinder), else the one given to initVosrtPlugins, else
// libnvinfer's global one. The embeddable library never names libnvinfer's symbols, so it has no fallback.
nvinfer1::ILogger* logger() noexcept {
  if (nvinfer1::ILoggerFinder* finder = gLoggerFinder.load()) {
    if (nvinfer1::ILogger* found = finder->findLogger()) return found;
  }
  if (nvinfer1::ILogger* given = gLogger.load()) return given;
#if defined(VOSRT_PLUGINS_EMBEDDABLE)
  return nullptr;
#else
  return ::getLogger();
#endif
}

}  // namespace

void emitLog(nvinfer1::ILogger::Severity severity, char const* message) noexcept {
  if (nvinfer1::ILogger* sink = logger()) sink->log(severity, message);
}
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept { gLoggerFinder.store(finder); }
void setLogger(nvinfer1::ILogger* logger) noexcept { gLogger.store(logger); }

bool readInts(nvinfer1::PluginField const& field, int* out, int count, char const* plugin) noexcept {
  using nvinfer1::PluginFieldType;
  if (field.length != count || field.data == nullptr) {
    logError(plugin, ": field '", field.name, "' needs ", count, " integer(s), got ", field.length);
    return false;
  }
  for (int i = 0; i < count; ++i) {
    int64_t value = 0;
    switch (field.type) {
      case PluginFieldType::kINT8: value = static_cast<int8_t const*>(field.data)[i]; break;
      case PluginFieldType::kINT16: value = static_cast<int16_t const*>(field.data)[i]; break;
      case PluginFieldType::kINT32: value = static_cast<int32_t const*>(field.data)[i]; break;
      case PluginFieldType::kINT64: value = static_cast<int64_t const*>(field.data)[i]; break;
      default:
        logError(plugin, ": field '", field.name, "' must be an integer field");
        return false;
    }
    if (value < INT32_MIN || value > INT32_MAX) {
      logError(plugin, ": field '", field.name, "' value out of int32 range");
      return false;
    }
    out[i] = static_cast<int>(value);
  }
  return true;
}

bool readFloat(nvinfer1::PluginField const& field, float* out, char const* plugin) noexcept {
  using nvinfer1::PluginFieldType;
  if (field.length != 1 || field.data == nullptr) {
    logError(plugin, ": field '", field.name, "' needs one float, got ", field.length);
    return false;
  }
  switch (field.type) {
    case PluginFieldType::kFLOAT32: *out = *static_cast<float const*>(field.data); return true;
    case PluginFieldType::kFLOAT64: *out = static_cast<float>(*static_cast<double const*>(field.data)); return true;
    default:
      logError(plugin, ": field '", field.name, "' must be FLOAT32 or FLOAT64");
      return false;
  }
}

bool isNodeIdentityField(char const* name) noexcept {
  return std::strcmp(name, "plugin_version") == 0 || std::strcmp(name, "plugin_namespace") == 0;
}

void dimsToRow(nvinfer1::Dims const& dims, int64_t row[8]) noexcept {
  for (int i = 0; i < 8; ++i) row[i] = i < dims.nbDims ? dims.d[i] : 0;
}

nvinfer1::IPluginCapability* PluginShell::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

int32_t PluginShell::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                                        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs < 1) return 1;
  outputTypes[0] = inputTypes[0];
  return 0;
}

bool PluginShell::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                            int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept {
  nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
  if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kHALF;
  // The kernels take one data type for the whole call.
  return desc.type == inOut[0].desc.type;
}

}  // namespace vosrt::trt
