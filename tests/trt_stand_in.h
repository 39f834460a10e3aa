// A stand-in for the two libnvinfer symbols libvosrt_plugins.so uses (getPluginRegistry, getLogger): a
// plugin registry that stores creators and a logger that records messages. Shared by the test hosts
// trt_plugin_host.cpp and trt_plugin_run.cpp; include it from exactly one source of an executable, which
// must be linked with -rdynamic so that the dlopened plugin library resolves these symbols to it.
#ifndef VOSRT_TESTS_TRT_STAND_IN_H
#define VOSRT_TESTS_TRT_STAND_IN_H

#include <cstring>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

namespace stand_in {

using namespace nvinfer1;

inline std::vector<std::string> gLog;

class RecordingLogger : public ILogger {
 public:
  void log(Severity, AsciiChar const* msg) noexcept override { gLog.emplace_back(msg); }
};
inline RecordingLogger gLogger;

inline bool logged(char const* needle) {
  for (auto const& line : gLog)
    if (line.find(needle) != std::string::npos) return true;
  return false;
}

class FakeRegistry : public IPluginRegistry {
 public:
  std::vector<IPluginCreatorInterface*> creators;

  // As TensorRT's registry: a second creator of the same name, version and namespace is refused (false).
  bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override {
    auto* v3 = static_cast<IPluginCreatorV3One*>(&creator);
    if (find(v3->getPluginName(), v3->getPluginVersion(), pluginNamespace != nullptr ? pluginNamespace : ""))
      return false;
    creators.push_back(&creator);
    return true;
  }
  IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
    *n = static_cast<int32_t>(creators.size());
    return creators.data();
  }
  // As TensorRT's registry, a lookup that finds nothing logs an error (TensorRT 10's "getCreator could not
  // find plugin ..."): a library that checked with getCreator before registering printed it every time.
  IPluginCreatorInterface* getCreator(AsciiChar const* const name, AsciiChar const* const version,
                                      AsciiChar const* const pluginNamespace) noexcept override {
    IPluginCreatorInterface* found = find(name, version, pluginNamespace);
    if (found == nullptr)
      gLog.push_back(std::string("getCreator could not find plugin: ") + name + " version: " + version);
    return found;
  }
  IPluginCreatorInterface* find(AsciiChar const* const name, AsciiChar const* const version,
                                AsciiChar const* const pluginNamespace) noexcept {
    for (auto* c : creators) {
      auto* v3 = static_cast<IPluginCreatorV3One*>(c);
      if (std::strcmp(v3->getPluginName(), name) == 0 && std::strcmp(v3->getPluginVersion(), version) == 0 &&
          std::strcmp(v3->getPluginNamespace(), pluginNamespace != nullptr ? pluginNamespace : "") == 0)
        return c;
    }
    return nullptr;
  }
  bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override {
    for (auto it = creators.begin(); it != creators.end(); ++it)
      if (*it == &creator) {
        creators.erase(it);
        return true;
      }
    return false;
  }
  void setErrorRecorder(IErrorRecorder* const) noexcept override {}
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(bool const) override {}
  PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
  int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
  IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
    return getAllCreators(n);
  }
#if NV_TENSORRT_MAJOR < 11
  bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
  IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
    *n = 0;
    return nullptr;
  }
  IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override {
    return nullptr;
  }
  bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#endif
};

inline FakeRegistry* registry() {
  static FakeRegistry* instance = new FakeRegistry();  // outlives the plugin library's static destructor
  return instance;
}

}  // namespace stand_in

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept { return stand_in::registry(); }
extern "C" nvinfer1::ILogger* getLogger() noexcept { return &stand_in::gLogger; }

#endif  // VOSRT_TESTS_TRT_STAND_IN_H
