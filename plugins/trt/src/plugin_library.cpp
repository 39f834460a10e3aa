// Entry points of libvosrt_plugins.so.
//
// Two ways in, and they must not collide (TensorRT refuses a library whose creators are already
// registered, "Cannot register the library as plugin creator of X exists already"):
//  1. IPluginRegistry::loadLibrary / trtexec --dynamicPlugins / engines with serialised plugin
//     libraries: TensorRT dlopens the file and registers what getCreators() returns.
//  2. Hosts that only dlopen it (ONNX Runtime's TensorRT EP, Triton with LD_PRELOAD, ctypes.CDLL): the
//     static initializer below registers both creators with getPluginRegistry() at load time.
// Path 2 runs during the dlopen of path 1 as well, so getCreators() hands out only the creators the load
// did not already register (normally none). The net effect is the same in every host: after the
// library is loaded, D2Conv3D and L2MemoryReadout version "1" namespace "" are registered exactly once.
// Setting VOSRT_PLUGINS_AUTO_REGISTER=0 turns path 2 off (then getCreators() returns both).
#include <cstdlib>
#include <cstring>

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

// Creators registered by this copy of the library at load time (to deregister on unload), and those
// already present from another copy (a serialised-library copy of the same file, say).
bool gRegisteredHere[kNbCreators] = {false, false};
bool gPresentAlready[kNbCreators] = {false, false};
IPluginCreatorInterface* gPending[kNbCreators] = {nullptr, nullptr};

bool autoRegisterEnabled() {
  char const* value = std::getenv("VOSRT_PLUGINS_AUTO_REGISTER");
  return value == nullptr || std::strcmp(value, "0") != 0;
}

char const* nameOf(int32_t i) {
  return i == 0 ? gD2Conv3DCreator.getPluginName() : gL2ReadoutCreator.getPluginName();
}

struct LoadTimeRegistration {
  LoadTimeRegistration() {
    if (!autoRegisterEnabled()) return;
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) return;
    for (int32_t i = 0; i < kNbCreators; ++i) {
      if (registry->getCreator(nameOf(i), vosrt::trt::kPluginVersion, vosrt::trt::kPluginNamespace) != nullptr) {
        gPresentAlready[i] = true;
      } else {
        gRegisteredHere[i] = registry->registerCreator(*gAllCreators[i], vosrt::trt::kPluginNamespace);
      }
    }
  }
  ~LoadTimeRegistration() {
    // The creators die with this library; leave no dangling pointers in the registry.
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) return;
    for (int32_t i = 0; i < kNbCreators; ++i)
      if (gRegisteredHere[i]) registry->deregisterCreator(*gAllCreators[i]);
  }
};

LoadTimeRegistration gLoadTimeRegistration;

}  // namespace

//! The creators TensorRT should register for this library (IPluginRegistry::loadLibrary looks this up).
VOSRT_PLUGIN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  nbCreators = 0;
  for (int32_t i = 0; i < kNbCreators; ++i)
    if (!gRegisteredHere[i] && !gPresentAlready[i]) gPending[nbCreators++] = gAllCreators[i];
  return gPending;
}

//! Lets TensorRT hand the library its logger (called by loadLibrary when exported).
VOSRT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  vosrt::trt::setLoggerFinder(finder);
}
