// Entry points of libvosrt_plugins.so (and of libvosrt_plugins_embed.so, the self-contained variant for
// engines that carry their plugin library; built with VOSRT_PLUGINS_EMBEDDABLE).
//
// Three ways in (plugins/trt/README.md, "Loading"); a host uses exactly one of them:
//  1. IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, engines with a serialised plugin library,
//     vosrt's own Python code): TensorRT dlopens the file, calls setLoggerFinder and registers what
//     getCreators() returns. getCreators() always returns both creators.
//  2. Hosts that only dlopen the file (DeepStream, Triton's TensorRT backend, ONNX Runtime's TensorRT
//     EP, ctypes.CDLL): they call the exported initVosrtPlugins(), which registers both creators with
//     getPluginRegistry(), like TensorRT's own initLibNvInferPlugins().
//  3. Opt-in load-time registration: with VOSRT_PLUGINS_AUTO_REGISTER=1 in the environment a static
//     initializer does what initVosrtPlugins() does while the library is being loaded (LD_PRELOAD hosts
//     that call nothing). Do not combine it with path 1: TensorRT refuses creators that already exist.
// Registration through paths 2 and 3 is undone when the library is unloaded.
//
// The embeddable variant has no path 2 or 3: it must not reference libnvinfer at all (an engine's
// serialised library is loaded by a runtime that may not export getPluginRegistry to it), so it only
// exports getCreators and setLoggerFinder.
#include <cstdlib>
#include <cstring>

#include "NvInferVersion.h"
#include "d2conv3d_plugin.h"
#include "l2_readout_plugin.h"

// The library is built with hidden visibility; these are its only exported symbols.
#define VOSRT_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using nvinfer1::IPluginCreatorInterface;

vosrt::trt::D2Conv3DPluginCreator gD2Conv3DCreator;
vosrt::trt::L2ReadoutPluginCreator gL2ReadoutCreator;

constexpr int32_t kNbCreators = 2;
IPluginCreatorInterface* const gAllCreators[kNbCreators] = {&gD2Conv3DCreator, &gL2ReadoutCreator};

#if !defined(VOSRT_PLUGINS_EMBEDDABLE)
// Creators this copy of the library registered itself (paths 2 and 3), to deregister on unload.
bool gRegisteredHere[kNbCreators] = {false, false};

char const* nameOf(int32_t i) {
  return i == 0 ? gD2Conv3DCreator.getPluginName() : gL2ReadoutCreator.getPluginName();
}

bool same(char const* a, char const* b) { return std::strcmp(a != nullptr ? a : "", b != nullptr ? b : "") == 0; }

// Whether `registry` holds a creator of `name`, our version, in `libNamespace`. Searched through
// getAllCreators, not getCreator: TensorRT logs an error for every getCreator that finds nothing
// ("getCreator could not find plugin ..."), which every first registration would then print.
bool isRegistered(nvinfer1::IPluginRegistry* registry, char const* name, char const* libNamespace) {
  int32_t count = 0;
  IPluginCreatorInterface* const* all = registry->getAllCreators(&count);
  for (int32_t i = 0; all != nullptr && i < count; ++i) {
    if (all[i] == nullptr || !same(all[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE")) continue;
    auto const* creator = static_cast<nvinfer1::IPluginCreatorV3One const*>(all[i]);
    if (same(creator->getPluginName(), name) && same(creator->getPluginVersion(), vosrt::trt::kPluginVersion) &&
        same(creator->getPluginNamespace(), libNamespace))
      return true;
  }
  return false;
}

// Registers every creator not already registered under our name, version and namespace (by this copy or
// another: an engine's serialised copy of the same library, say). True when both are registered after.
bool registerMissing(nvinfer1::IPluginRegistry* registry, char const* libNamespace) {
  if (registry == nullptr) return false;
  bool all = true;
  for (int32_t i = 0; i < kNbCreators; ++i) {
    if (isRegistered(registry, nameOf(i), libNamespace)) continue;
    gRegisteredHere[i] = registry->registerCreator(*gAllCreators[i], libNamespace);
    all = all && gRegisteredHere[i];
  }
  return all;
}

bool autoRegisterRequested() {
  char const* value = std::getenv("VOSRT_PLUGINS_AUTO_REGISTER");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

struct Registration {
  Registration() {
    // Asked for even when nothing registers now: TensorRT's registry is then made before this object, so
    // it is destroyed after it and ~Registration never deregisters from a registry already gone (a host
    // that dlopens this library before it touches TensorRT, then calls initVosrtPlugins).
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (autoRegisterRequested()) registerMissing(registry, vosrt::trt::kPluginNamespace);
  }
  ~Registration() {
    // The creators die with this library; leave no dangling pointers in the registry.
    bool any = false;
    for (bool here : gRegisteredHere) any = any || here;
    if (!any) return;
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) return;
    for (int32_t i = 0; i < kNbCreators; ++i)
      if (gRegisteredHere[i]) registry->deregisterCreator(*gAllCreators[i]);
  }
};

Registration gRegistration;
#endif

// The TensorRT version whose headers this library was compiled against, as a string in the file itself:
// its logger, registry and plugin interfaces differ between majors (10 and 11), so a library must be loaded
// only by the major it was built for. sdk/backends/tensorrt.py reads it from the file before loading it
// (`strings libvosrt_plugins.so | grep vosrt-plugins` shows it too); `used` keeps the unreferenced array.
#define VOSRT_STRINGIFY_VALUE(x) #x
#define VOSRT_STRINGIFY(x) VOSRT_STRINGIFY_VALUE(x)
[[gnu::used]] char const kBuildRecord[] =
    "vosrt-plugins-build-record: tensorrt=" VOSRT_STRINGIFY(NV_TENSORRT_MAJOR) "." VOSRT_STRINGIFY(
        NV_TENSORRT_MINOR) "." VOSRT_STRINGIFY(NV_TENSORRT_PATCH) ";";

}  // namespace

//! Both creators, for TensorRT to register (IPluginRegistry::loadLibrary looks this up).
VOSRT_PLUGIN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  nbCreators = kNbCreators;
  return gAllCreators;
}

//! Lets TensorRT hand the library its logger (called by loadLibrary when exported).
VOSRT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  vosrt::trt::setLoggerFinder(finder);
}

#if !defined(VOSRT_PLUGINS_EMBEDDABLE)
//! Registers D2Conv3D and L2MemoryReadout (version "1") with getPluginRegistry() for hosts that only
//! dlopen the library. `logger` (an nvinfer1::ILogger*, may be null) receives the plugins' messages;
//! `libNamespace` must be "" or null (the ONNX nodes name the empty namespace). Idempotent; returns true
//! when both creators are registered afterwards. Same signature as TensorRT's initLibNvInferPlugins.
VOSRT_PLUGIN_EXPORT bool initVosrtPlugins(void* logger, char const* libNamespace) {
  if (libNamespace != nullptr && std::strcmp(libNamespace, vosrt::trt::kPluginNamespace) != 0) {
    vosrt::trt::logError("initVosrtPlugins: namespace '", libNamespace,
                         "' is not supported; the vosrt plugins live in the empty namespace");
    return false;
  }
  if (logger != nullptr) vosrt::trt::setLogger(static_cast<nvinfer1::ILogger*>(logger));
  return registerMissing(getPluginRegistry(), vosrt::trt::kPluginNamespace);
}
#endif
