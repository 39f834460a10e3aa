// A stand-in TensorRT host for tests/test_trt_plugins_compile.py: it provides the two libnvinfer symbols
// the plugin library uses (getPluginRegistry, getLogger) and the kernels' C API as recording stubs, then
// dlopens libvosrt_plugins.so and drives its creators and plugins through the IPluginV3 interfaces
// exactly as TensorRT would call them (no GPU, no libnvinfer). Every check prints "FAIL ..." on failure;
// the exit status is the number of failures.
//
//   trt_plugin_host LIB registered|unregistered|embedded
// registered: VOSRT_PLUGINS_AUTO_REGISTER=1 registered the creators while the library loaded;
// unregistered: nothing registered them, the host calls initVosrtPlugins; embedded: the self-contained
// variant, which only hands its creators to TensorRT (getCreators) and never touches the registry.
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "NvInferRuntime.h"
#include "trt_stand_in.h"
#include "vosrt_kernels.h"

using namespace nvinfer1;
using stand_in::gLog;
using stand_in::logged;
using stand_in::registry;

namespace {

int gFailures = 0;
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::printf("FAIL line %d: %s\n", __LINE__, #cond);                \
      ++gFailures;                                                       \
    }                                                                    \
  } while (0)

// What the kernel stubs were last called with.
struct {
  vosrtD2Conv3DParams d2;
  vosrtL2ReadoutParams l2;
  vosrtDataType_t dtype;
  void const* pointers[6];
  size_t workspace_bytes;
  int calls;
} gLast;

}  // namespace

// ---- kernel symbols the plugin library resolves from this executable (-rdynamic)

extern "C" vosrtStatus_t vosrtD2Conv3DValidate(const vosrtD2Conv3DParams*) { return VOSRT_SUCCESS; }
extern "C" size_t vosrtD2Conv3DWorkspaceSize(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype) {
  return static_cast<size_t>(p->batch) * 1000 + static_cast<size_t>(p->in_t) * 10 + (dtype == VOSRT_FLOAT16 ? 1 : 0);
}
extern "C" size_t vosrtD2Conv3DMinWorkspaceSize(const vosrtD2Conv3DParams*, vosrtDataType_t) { return 7; }
extern "C" vosrtStatus_t vosrtD2Conv3DForward(const vosrtD2Conv3DParams* p, vosrtDataType_t dtype, const void* x,
                                              const void* dilation, const void* modulation, const void* weight,
                                              const void* bias, void* y, void*, size_t workspace_bytes, cudaStream_t) {
  gLast.d2 = *p;
  gLast.dtype = dtype;
  void const* pointers[6] = {x, dilation, modulation, weight, bias, y};
  std::memcpy(gLast.pointers, pointers, sizeof(pointers));
  gLast.workspace_bytes = workspace_bytes;
  ++gLast.calls;
  return VOSRT_SUCCESS;
}
extern "C" vosrtStatus_t vosrtL2ReadoutValidate(const vosrtL2ReadoutParams*) { return VOSRT_SUCCESS; }
extern "C" size_t vosrtL2ReadoutWorkspaceSize(const vosrtL2ReadoutParams* p, vosrtDataType_t) {
  return static_cast<size_t>(p->mem_size);
}
extern "C" vosrtStatus_t vosrtL2ReadoutForward(const vosrtL2ReadoutParams* p, vosrtDataType_t dtype, const void* mk,
                                               const void* qk, const void* mv, void* out, void*, size_t, cudaStream_t) {
  gLast.l2 = *p;
  gLast.dtype = dtype;
  void const* pointers[6] = {mk, qk, mv, out, nullptr, nullptr};
  std::memcpy(gLast.pointers, pointers, sizeof(pointers));
  ++gLast.calls;
  return VOSRT_SUCCESS;
}
extern "C" vosrtStatus_t vosrtL2ReadoutDeviceCheck(const vosrtL2ReadoutParams*, vosrtDataType_t, size_t*, size_t*) {
  return VOSRT_SUCCESS;
}
extern "C" const char* vosrtGetStatusString(vosrtStatus_t) { return "stub status"; }

namespace {

Dims dims(std::initializer_list<int64_t> values) {
  Dims d{};
  d.nbDims = static_cast<int32_t>(values.size());
  int i = 0;
  for (int64_t v : values) d.d[i++] = v;
  return d;
}

PluginTensorDesc desc(Dims d, DataType type) {
  PluginTensorDesc t{};
  t.dims = d;
  t.type = type;
  t.format = TensorFormat::kLINEAR;
  t.scale = 1.0f;
  return t;
}

IPluginCreatorV3One* creatorNamed(IPluginCreatorInterface* const* list, int32_t n, char const* name) {
  for (int32_t i = 0; i < n; ++i) {
    auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
    if (std::strcmp(c->getPluginName(), name) == 0) return c;
  }
  return nullptr;
}

void checkD2Conv3D(IPluginCreatorV3One* creator) {
  CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0 && std::strcmp(creator->getPluginNamespace(), "") == 0);
  PluginFieldCollection const* names = creator->getFieldNames();
  CHECK(names->nbFields == 6);
  // Python and the ONNX parser may send int64 and the node identity as characters.
  int64_t kernel[3] = {3, 3, 3}, pads[3] = {1, 1, 1}, group = 1;
  char version[] = "1";
  PluginField fields[] = {PluginField("kernel_shape", kernel, PluginFieldType::kINT64, 3),
                          PluginField("pads", pads, PluginFieldType::kINT64, 3),
                          PluginField("group", &group, PluginFieldType::kINT64, 1),
                          PluginField("plugin_version", version, PluginFieldType::kCHAR, 1)};
  PluginFieldCollection fc{4, fields};
  IPluginV3* plugin = creator->createPlugin("d2", &fc, TensorRTPhase::kBUILD);
  CHECK(plugin != nullptr);
  if (plugin == nullptr) return;
  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  CHECK(std::strcmp(core->getPluginName(), "D2Conv3D") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0);
  CHECK(build->getNbOutputs() == 1);

  // serialised fields: the node attributes with defaults filled in, readable by a runtime-phase createPlugin
  PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
  CHECK(saved->nbFields == 6);
  for (int32_t i = 0; i < saved->nbFields; ++i) {
    PluginField const& f = saved->fields[i];
    CHECK(f.type == PluginFieldType::kINT32);
    int32_t const* v = static_cast<int32_t const*>(f.data);
    if (std::strcmp(f.name, "strides") == 0) CHECK(f.length == 3 && v[0] == 1 && v[2] == 1);
    if (std::strcmp(f.name, "pads") == 0) CHECK(f.length == 3 && v[0] == 1 && v[1] == 1);
    if (std::strcmp(f.name, "group") == 0) CHECK(f.length == 1 && v[0] == 1);
    if (std::strcmp(f.name, "max_workspace_mb") == 0) CHECK(f.length == 1 && v[0] == 0);
  }
  IPluginV3* restored = creator->createPlugin("d2", saved, TensorRTPhase::kRUNTIME);
  CHECK(restored != nullptr);

  // formats: fp32 or fp16, linear, one type for all
  DynamicPluginTensorDesc io[5]{};
  for (auto& t : io) t.desc = desc(dims({1}), DataType::kHALF);
  CHECK(build->supportsFormatCombination(0, io, 4, 1));
  io[1].desc.type = DataType::kFLOAT;
  CHECK(!build->supportsFormatCombination(1, io, 4, 1));
  io[0].desc.type = DataType::kINT32;
  CHECK(!build->supportsFormatCombination(0, io, 4, 1));
  DataType in[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF}, out = DataType::kFLOAT;
  CHECK(build->getOutputDataTypes(&out, 1, in, 4) == 0 && out == DataType::kHALF);

  // 4 inputs X, D, Wt, B (no modulation): roles, params, workspace, enqueue
  PluginTensorDesc inputs[4] = {desc(dims({2, 4, 5, 6, 7}), DataType::kHALF), desc(dims({2, 3, 5, 6, 7}), DataType::kHALF),
                                desc(dims({8, 4, 3, 3, 3}), DataType::kHALF), desc(dims({8}), DataType::kHALF)};
  PluginTensorDesc output = desc(dims({2, 8, 5, 6, 7}), DataType::kHALF);
  CHECK(runtime->onShapeChange(inputs, 4, &output, 1) == 0);
  char buffers[5];
  void const* ptrs[4] = {&buffers[0], &buffers[1], &buffers[2], &buffers[3]};
  void* outs[1] = {&buffers[4]};
  CHECK(runtime->enqueue(inputs, &output, ptrs, outs, nullptr, nullptr) == 0);
  CHECK(gLast.d2.batch == 2 && gLast.d2.in_channels == 4 && gLast.d2.in_t == 5 && gLast.d2.in_w == 7);
  CHECK(gLast.d2.out_channels == 8 && gLast.d2.has_modulation == 0 && gLast.d2.has_bias == 1);
  CHECK(gLast.d2.pad[0] == 1 && gLast.d2.kernel[2] == 3 && gLast.d2.stride[1] == 1);
  CHECK(gLast.dtype == VOSRT_FLOAT16);
  CHECK(gLast.pointers[0] == ptrs[0] && gLast.pointers[1] == ptrs[1] && gLast.pointers[2] == nullptr);
  CHECK(gLast.pointers[3] == ptrs[2] && gLast.pointers[4] == ptrs[3] && gLast.pointers[5] == outs[0]);
  CHECK(gLast.workspace_bytes == 2 * 1000 + 5 * 10 + 1);

  // 4 inputs X, D, M, Wt: input 3 is rank 5, so input 2 is the modulation
  PluginTensorDesc withM[4] = {inputs[0], inputs[1], desc(dims({2, 27, 5, 6, 7}), DataType::kHALF), inputs[2]};
  CHECK(runtime->onShapeChange(withM, 4, &output, 1) == 0);
  CHECK(runtime->enqueue(withM, &output, ptrs, outs, nullptr, nullptr) == 0);
  CHECK(gLast.d2.has_modulation == 1 && gLast.d2.has_bias == 0);
  CHECK(gLast.pointers[2] == ptrs[2] && gLast.pointers[3] == ptrs[3] && gLast.pointers[4] == nullptr);

  // workspace from the profile's maximum shapes
  DynamicPluginTensorDesc dyn[4]{};
  for (int i = 0; i < 4; ++i) {
    dyn[i].desc = inputs[i];
    dyn[i].min = dyn[i].opt = dyn[i].max = inputs[i].dims;
  }
  dyn[0].max = dims({3, 4, 9, 6, 7});
  dyn[1].max = dims({3, 3, 9, 6, 7});
  CHECK(build->getWorkspaceSize(dyn, 4, nullptr, 1) == 3 * 1000 + 9 * 10 + 1);

  // a shape that does not fit is refused and explained through the logger
  PluginTensorDesc badD[4] = {inputs[0], desc(dims({2, 3, 5, 6, 6}), DataType::kHALF), inputs[2], inputs[3]};
  gLog.clear();
  CHECK(runtime->onShapeChange(badD, 4, &output, 1) != 0);
  CHECK(logged("D must be [N, 3, To, Ho, Wo]"));

  IPluginV3* clone = plugin->clone();
  CHECK(clone != nullptr && clone != plugin);
  auto* cloneRuntime = static_cast<IPluginV3OneRuntime*>(clone->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  CHECK(cloneRuntime->getFieldsToSerialize()->nbFields == 6 && cloneRuntime->getFieldsToSerialize() != saved);
  // a clone attached to a new execution context can enqueue the configured input count at once
  CHECK(cloneRuntime->enqueue(withM, &output, ptrs, outs, nullptr, nullptr) == 0);
  CHECK(gLast.d2.has_modulation == 1);
  delete clone;
  delete restored;
  delete plugin;

  // max_workspace_mb (set by `vosrt build --workspace`) caps the workspace asked for and handed to the
  // kernels, survives serialisation, and never goes below the kernels' minimum
  int32_t limitMb = 1;
  PluginField limited[] = {PluginField("kernel_shape", kernel, PluginFieldType::kINT64, 3),
                           PluginField("pads", pads, PluginFieldType::kINT64, 3),
                           PluginField("max_workspace_mb", &limitMb, PluginFieldType::kINT32, 1)};
  PluginFieldCollection limitedFc{3, limited};
  IPluginV3* capped = creator->createPlugin("d2", &limitedFc, TensorRTPhase::kBUILD);
  CHECK(capped != nullptr);
  if (capped != nullptr) {
    auto* cappedBuild = static_cast<IPluginV3OneBuild*>(capped->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* cappedRuntime =
        static_cast<IPluginV3OneRuntime*>(capped->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    DynamicPluginTensorDesc big[4]{};
    for (int i = 0; i < 4; ++i) {
      big[i].desc = inputs[i];
      big[i].min = big[i].opt = big[i].max = inputs[i].dims;
    }
    big[0].max = dims({3000, 4, 9, 6, 7});  // the stub prefers 3000·1000 + 90 bytes: above 1 MiB
    big[1].max = dims({3000, 3, 9, 6, 7});
    CHECK(cappedBuild->getWorkspaceSize(big, 4, nullptr, 1) == (size_t{1} << 20));
    IPluginV3* uncapped = creator->createPlugin("d2", &fc, TensorRTPhase::kBUILD);
    auto* uncappedBuild =
        static_cast<IPluginV3OneBuild*>(uncapped->getCapabilityInterface(PluginCapabilityType::kBUILD));
    CHECK(uncappedBuild->getWorkspaceSize(big, 4, nullptr, 1) == 3000 * 1000 + 9 * 10 + 1);  // no limit: all of it
    delete uncapped;
    IPluginV3* reloaded = creator->createPlugin("d2", cappedRuntime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    CHECK(reloaded != nullptr);
    if (reloaded != nullptr) {
      auto* reloadedRuntime =
          static_cast<IPluginV3OneRuntime*>(reloaded->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
      PluginTensorDesc large[4] = {desc(dims({2000, 4, 5, 6, 7}), DataType::kHALF),
                                   desc(dims({2000, 3, 5, 6, 7}), DataType::kHALF), inputs[2], inputs[3]};
      CHECK(reloadedRuntime->onShapeChange(large, 4, &output, 1) == 0);
      CHECK(reloadedRuntime->enqueue(large, &output, ptrs, outs, nullptr, nullptr) == 0);
      CHECK(gLast.workspace_bytes == (size_t{1} << 20));  // what TensorRT allocated, not the preferred 2 MB
      delete reloaded;
    }
    delete capped;
  }
  int32_t negative = -1;
  PluginField badLimit[] = {PluginField("kernel_shape", kernel, PluginFieldType::kINT64, 3),
                            PluginField("max_workspace_mb", &negative, PluginFieldType::kINT32, 1)};
  PluginFieldCollection badLimitFc{2, badLimit};
  gLog.clear();
  CHECK(creator->createPlugin("d2", &badLimitFc, TensorRTPhase::kBUILD) == nullptr);
  CHECK(logged("max_workspace_mb"));

  // a node without kernel_shape is refused
  PluginFieldCollection empty{0, nullptr};
  gLog.clear();
  CHECK(creator->createPlugin("d2", &empty, TensorRTPhase::kBUILD) == nullptr);
  CHECK(logged("kernel_shape"));
}

void checkL2Readout(IPluginCreatorV3One* creator) {
  int32_t topK = 20;
  PluginField fields[] = {PluginField("top_k", &topK, PluginFieldType::kINT32, 1)};
  PluginFieldCollection fc{1, fields};
  IPluginV3* plugin = creator->createPlugin("readout", &fc, TensorRTPhase::kBUILD);
  CHECK(plugin != nullptr);
  if (plugin == nullptr) return;
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  PluginTensorDesc inputs[3] = {desc(dims({1, 64, 300}), DataType::kFLOAT), desc(dims({1, 64, 40}), DataType::kFLOAT),
                                desc(dims({1, 512, 300}), DataType::kFLOAT)};
  PluginTensorDesc output = desc(dims({1, 512, 40}), DataType::kFLOAT);
  CHECK(runtime->onShapeChange(inputs, 3, &output, 1) == 0);
  char buffers[4];
  void const* ptrs[3] = {&buffers[0], &buffers[1], &buffers[2]};
  void* outs[1] = {&buffers[3]};
  CHECK(runtime->enqueue(inputs, &output, ptrs, outs, nullptr, nullptr) == 0);
  CHECK(gLast.l2.batch == 1 && gLast.l2.key_dim == 64 && gLast.l2.mem_size == 300 && gLast.l2.query_size == 40);
  CHECK(gLast.l2.value_dim == 512 && gLast.l2.top_k == 20 && std::fabs(gLast.l2.scale - 0.125f) < 1e-7f);
  CHECK(gLast.dtype == VOSRT_FLOAT32 && gLast.pointers[3] == outs[0]);
  PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
  CHECK(saved->nbFields == 2);
  delete plugin;

  int32_t tooMany = VOSRT_L2_READOUT_MAX_TOP_K + 1;
  PluginField bad[] = {PluginField("top_k", &tooMany, PluginFieldType::kINT32, 1)};
  PluginFieldCollection badFc{1, bad};
  gLog.clear();
  CHECK(creator->createPlugin("readout", &badFc, TensorRTPhase::kBUILD) == nullptr);
  CHECK(logged("exceeds"));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::printf("usage: %s LIB registered|unregistered|embedded\n", argv[0]);
    return 100;
  }
  std::string const mode = argv[2];
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::printf("FAIL dlopen: %s\n", dlerror());
    return 100;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using InitPlugins = bool (*)(void*, char const*);
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto initPlugins = reinterpret_cast<InitPlugins>(dlsym(lib, "initVosrtPlugins"));
  CHECK(getCreators != nullptr);
  CHECK(dlsym(lib, "setLoggerFinder") != nullptr);
  if (getCreators == nullptr) return gFailures;

  // getCreators() always hands TensorRT both creators, whatever registered them already.
  int32_t n = -1;
  IPluginCreatorInterface* const* list = getCreators(n);
  CHECK(n == 2);
  int32_t registered = -1;
  registry()->getAllCreators(&registered);
  if (mode == "embedded") {
    // no libnvinfer symbol is used: nothing registered at load time, no init entry point
    CHECK(registered == 0);
    CHECK(initPlugins == nullptr);
  } else if (mode == "registered") {
    CHECK(registered == 2);  // opt-in load-time registration
    CHECK(initPlugins != nullptr && initPlugins(nullptr, "") && initPlugins(nullptr, nullptr));
  } else {
    CHECK(registered == 0);  // load-time registration is opt-in
    CHECK(initPlugins != nullptr);
    if (initPlugins != nullptr) {
      CHECK(initPlugins(&stand_in::gLogger, ""));  // the library logs through it from now on
      CHECK(!initPlugins(nullptr, "other_namespace"));  // the ONNX nodes name the empty namespace
    }
  }
  registry()->getAllCreators(&registered);
  CHECK(registered == (mode == "embedded" ? 0 : 2));  // registering twice adds nothing
  CHECK(!logged("could not find plugin"));  // registering printed no lookup error
  int32_t again = -1;
  getCreators(again);
  CHECK(again == 2);  // also after registration
  for (int32_t i = 0; i < n; ++i)
    CHECK(std::strcmp(list[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
  IPluginCreatorV3One* d2 = creatorNamed(list, n, "D2Conv3D");
  IPluginCreatorV3One* l2 = creatorNamed(list, n, "L2MemoryReadout");
  CHECK(d2 != nullptr && l2 != nullptr);
  if (mode != "embedded") {  // the embedded variant carries the real kernels, which need a GPU
    if (d2 != nullptr) checkD2Conv3D(d2);
    if (l2 != nullptr) checkL2Readout(l2);
  }

  dlclose(lib);
  int32_t left = -1;
  registry()->getAllCreators(&left);
  CHECK(left == 0);  // unloading deregisters what loading or initVosrtPlugins registered
  std::printf("%s %d failure(s)\n", gFailures ? "FAIL" : "OK", gFailures);
  return gFailures;
}
