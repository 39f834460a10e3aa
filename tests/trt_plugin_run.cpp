// Runs one vosrt plugin the way TensorRT would, on host memory: the plugin library is linked against
// libvosrt_kernels_emu.so (the kernels' own .cu code on host threads), and this executable stands in
// for libnvinfer (trt_stand_in.h). Used by tests/test_trt_plugins_compile.py to compare the plugin path
// (creator fields -> getOutputShapes -> configurePlugin -> getWorkspaceSize -> onShapeChange -> enqueue)
// with the PyTorch references; getOutputShapes runs on an IExprBuilder that evaluates the expressions.
//
//   trt_plugin_run LIB SPEC
//
// SPEC is a text file of lines:
//   plugin NAME
//   dtype float|half          (the files are float32 either way; half converts on the host)
//   field NAME int V...  |  field NAME float V
//   input RANK D... PATH      (float32, C order)
//   output RANK D... PATH     (written by this program)
//   shared_limit BUILD RUN    (optional: the emulated GPU's shared memory per block in bytes while the plugin
//                              is configured, and from then on: an engine built on one GPU, run on another)
//   profile_min INPUT AXIS V  (optional: the profile's minimum of that input's axis is V; else every minimum
//                              is the size the plugin runs at)
#include <dlfcn.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "NvInferRuntime.h"
#include "trt_stand_in.h"

using namespace nvinfer1;

namespace {

struct Tensor {
  Dims dims{};
  std::string path;
  std::vector<float> data;
  std::vector<_Float16> half;  // the tensor as the plugin sees it when running in fp16
  void const* bytes(bool fp16) const { return fp16 ? static_cast<void const*>(half.data()) : data.data(); }
  size_t count() const {
    size_t n = 1;
    for (int i = 0; i < dims.nbDims; ++i) n *= static_cast<size_t>(dims.d[i]);
    return n;
  }
};

// TensorRT's dimension expressions, evaluated: every expression carries its value (TensorRT itself keeps
// them symbolic; the plugin only combines them through IExprBuilder, which is what is checked here).
// As in TensorRT, only expressions built from constants are constant: an input size (and anything computed
// from one) answers isConstant() false and getConstantValue() std::numeric_limits<int64_t>::min() (what
// IDimensionExpr::getConstantValue documents), so a plugin that read a size as a constant would compute
// with that and fail the comparison with PyTorch.
class ValueExpr : public IDimensionExpr {
 public:
  ValueExpr(int64_t value, bool constant) : mValue(value), mConstant(constant) { mImpl = &mEval; }
  ~ValueExpr() noexcept override = default;
  int64_t value() const { return mValue; }

 private:
  struct Eval : apiv::VDimensionExpr {
    ValueExpr* owner = nullptr;
    bool isConstant() const override { return owner->mConstant; }
    int64_t getConstantValue() const override {
      return owner->mConstant ? owner->mValue : std::numeric_limits<int64_t>::min();
    }
    bool isSizeTensor() const override { return false; }
  };
  int64_t mValue;
  bool mConstant;
  Eval mEval;
  friend struct Eval;

 public:
  void bind() { mEval.owner = this; }
};

class EvaluatingBuilder : public IExprBuilder {
 public:
  EvaluatingBuilder() { mImpl = &mEval; }
  ~EvaluatingBuilder() noexcept override = default;
  IDimensionExpr const* make(int64_t value, bool constant = false) {
    mExprs.emplace_back(new ValueExpr(value, constant));
    mExprs.back()->bind();
    return mExprs.back().get();
  }
  static int64_t valueOf(IDimensionExpr const* e) { return static_cast<ValueExpr const*>(e)->value(); }

 private:
  struct Eval : apiv::VExprBuilder {
    EvaluatingBuilder* owner = nullptr;
    IDimensionExpr const* constant(int64_t value) override { return owner->make(value, true); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
      int64_t const x = valueOf(&a), y = valueOf(&b);
      bool const c = a.isConstant() && b.isConstant();
      switch (op) {
        case DimensionOperation::kSUM: return owner->make(x + y, c);
        case DimensionOperation::kPROD: return owner->make(x * y, c);
        case DimensionOperation::kMAX: return owner->make(x > y ? x : y, c);
        case DimensionOperation::kMIN: return owner->make(x < y ? x : y, c);
        case DimensionOperation::kSUB: return owner->make(x - y, c);
        case DimensionOperation::kEQUAL: return owner->make(x == y, c);
        case DimensionOperation::kLESS: return owner->make(x < y, c);
        case DimensionOperation::kFLOOR_DIV:
          return owner->make(x / y - ((x % y != 0) && ((x < 0) != (y < 0))), c);
        case DimensionOperation::kCEIL_DIV:
          return owner->make(x / y + ((x % y != 0) && ((x < 0) == (y < 0))), c);
      }
      return owner->make(-1);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
      return nullptr;
    }
  };
  Eval mEval{};
  std::vector<std::unique_ptr<ValueExpr>> mExprs;

 public:
  void bind() { mEval.owner = this; }
};

struct Field {
  std::string name;
  std::vector<int32_t> ints;
  float value = 0.0f;
  bool isFloat = false;
};

int fail(std::string const& message) {
  std::printf("FAIL %s\n", message.c_str());
  for (auto const& line : stand_in::gLog) std::printf("  log: %s\n", line.c_str());
  return 1;
}

Tensor parseTensor(std::istringstream& in) {
  Tensor t;
  in >> t.dims.nbDims;
  for (int i = 0; i < t.dims.nbDims; ++i) in >> t.dims.d[i];
  in >> t.path;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return fail("usage: trt_plugin_run LIB SPEC");
  std::string pluginName;
  bool fp16 = false;
  std::vector<Field> fields;
  std::vector<Tensor> inputs;
  Tensor output;
  int sharedAtBuild = 0, sharedAtRun = 0;  // 0: the emulation's default (an H200's)
  std::vector<std::array<int64_t, 3>> profileMins;  // (input, axis, value)
  std::ifstream spec(argv[2]);
  for (std::string line; std::getline(spec, line);) {
    std::istringstream in(line);
    std::string kind;
    in >> kind;
    if (kind == "plugin") {
      in >> pluginName;
    } else if (kind == "dtype") {
      std::string name;
      in >> name;
      fp16 = name == "half";
    } else if (kind == "field") {
      Field f;
      std::string type;
      in >> f.name >> type;
      f.isFloat = type == "float";
      if (f.isFloat) {
        in >> f.value;
      } else {
        for (int32_t v; in >> v;) f.ints.push_back(v);
      }
      fields.push_back(f);
    } else if (kind == "input") {
      inputs.push_back(parseTensor(in));
    } else if (kind == "output") {
      output = parseTensor(in);
    } else if (kind == "shared_limit") {
      in >> sharedAtBuild >> sharedAtRun;
    } else if (kind == "profile_min") {
      std::array<int64_t, 3> m{};
      in >> m[0] >> m[1] >> m[2];
      profileMins.push_back(m);
    }
  }
  for (Tensor& t : inputs) {
    t.data.resize(t.count());
    std::ifstream file(t.path, std::ios::binary);
    file.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(t.data.size() * sizeof(float)));
    if (!file) return fail("cannot read " + t.path);
    if (fp16) t.half.assign(t.data.begin(), t.data.end());
  }
  DataType const type = fp16 ? DataType::kHALF : DataType::kFLOAT;

  // What IPluginRegistry::loadLibrary does: dlopen, then register every creator getCreators() returns.
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return fail(std::string("dlopen: ") + dlerror());
  // the emulation's test hook, found through the plugin library's dependencies
  auto setSharedLimit = reinterpret_cast<void (*)(int)>(dlsym(lib, "vosrtEmuSetSharedLimit"));
  if (setSharedLimit == nullptr) return fail("the emulated kernels export no vosrtEmuSetSharedLimit");
  setSharedLimit(sharedAtBuild);
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  if (getCreators == nullptr) return fail("the library exports no getCreators");
  int32_t nbCreators = 0;
  IPluginCreatorInterface* const* creators = getCreators(nbCreators);
  for (int32_t i = 0; i < nbCreators; ++i) stand_in::registry()->registerCreator(*creators[i], "");
  auto* creator = static_cast<IPluginCreatorV3One*>(stand_in::registry()->getCreator(pluginName.c_str(), "1", ""));
  if (creator == nullptr) return fail("no creator registered for " + pluginName);

  std::vector<PluginField> pluginFields;
  for (Field const& f : fields) {
    pluginFields.emplace_back(f.name.c_str(), f.isFloat ? static_cast<void const*>(&f.value) : f.ints.data(),
                              f.isFloat ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32,
                              f.isFloat ? 1 : static_cast<int32_t>(f.ints.size()));
  }
  PluginFieldCollection fc{static_cast<int32_t>(pluginFields.size()), pluginFields.data()};
  IPluginV3* built = creator->createPlugin("layer", &fc, TensorRTPhase::kBUILD);
  if (built == nullptr) return fail("createPlugin refused the fields");
  // As TensorRT does: build-phase object for configuration, a runtime object re-created from its fields.
  auto* build = static_cast<IPluginV3OneBuild*>(built->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* builtRuntime = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  int32_t const n = static_cast<int32_t>(inputs.size());
  std::vector<DynamicPluginTensorDesc> dyn(n + 1);
  std::vector<PluginTensorDesc> desc(n);
  std::vector<PluginTensorDesc> runDesc(n + 1);  // what onShapeChange and enqueue see: the real dims
  for (int32_t i = 0; i <= n; ++i) {
    Tensor const& t = i < n ? inputs[i] : output;
    runDesc[i].dims = t.dims;
    runDesc[i].type = type;
    runDesc[i].format = TensorFormat::kLINEAR;
    runDesc[i].scale = -1.0F;  // TensorRT's value where the type is not kINT8
    // At build time desc.dims has -1 in place of every runtime dimension (DynamicPluginTensorDesc::desc in
    // NvInferRuntime.h); the README promises that every dimension may be dynamic, so all of them are -1 here
    // and the sizes come only from min/opt/max, as in an engine built with a dynamic profile.
    dyn[i].desc = runDesc[i];
    for (int d = 0; d < t.dims.nbDims; ++d) dyn[i].desc.dims.d[d] = -1;
    dyn[i].min = dyn[i].opt = dyn[i].max = t.dims;
    if (i < n) desc[i] = runDesc[i];
  }
  for (auto const& m : profileMins) {
    if (m[0] < 0 || m[0] >= n || m[1] < 0 || m[1] >= dyn[m[0]].min.nbDims) return fail("profile_min out of range");
    dyn[m[0]].min.d[m[1]] = m[2];
  }
  // Output shape through IExprBuilder, against the shape the PyTorch reference produced.
  EvaluatingBuilder exprs;
  exprs.bind();
  std::vector<DimsExprs> inExprs(n);
  for (int32_t i = 0; i < n; ++i) {
    inExprs[i].nbDims = inputs[i].dims.nbDims;
    for (int d = 0; d < inputs[i].dims.nbDims; ++d) inExprs[i].d[d] = exprs.make(inputs[i].dims.d[d]);
  }
  DimsExprs outExprs{};
  if (build->getOutputShapes(inExprs.data(), n, nullptr, 0, &outExprs, 1, exprs) != 0) return fail("getOutputShapes failed");
  if (outExprs.nbDims != output.dims.nbDims) return fail("getOutputShapes: wrong rank");
  for (int d = 0; d < outExprs.nbDims; ++d)
    if (EvaluatingBuilder::valueOf(outExprs.d[d]) != output.dims.d[d])
      return fail("getOutputShapes: dim " + std::to_string(d) + " is " +
                  std::to_string(EvaluatingBuilder::valueOf(outExprs.d[d])) + ", reference " +
                  std::to_string(output.dims.d[d]));

  for (int32_t pos = 0; pos <= n; ++pos)
    if (!build->supportsFormatCombination(pos, dyn.data(), n, 1)) return fail("linear format refused");
  DataType outType = DataType::kINT32;
  std::vector<DataType> inTypes(n, type);
  if (build->getOutputDataTypes(&outType, 1, inTypes.data(), n) != 0 || outType != type)
    return fail("getOutputDataTypes does not follow the inputs");
  if (build->configurePlugin(dyn.data(), n, dyn.data() + n, 1) != 0) return fail("configurePlugin failed");
  size_t const workspaceBytes = build->getWorkspaceSize(dyn.data(), n, dyn.data() + n, 1);
  setSharedLimit(sharedAtRun);

  IPluginV3* plugin = creator->createPlugin("layer", builtRuntime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
  if (plugin == nullptr) return fail("createPlugin refused the serialised fields");
  IPluginV3* attached = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
                            ->attachToContext(nullptr);
  auto* runtime = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  PluginTensorDesc outDesc = runDesc[n];
  if (runtime->onShapeChange(desc.data(), n, &outDesc, 1) != 0) return fail("onShapeChange failed");

  output.data.assign(output.count(), 0.0f);
  output.half.assign(output.count(), static_cast<_Float16>(0.0f));
  std::vector<unsigned char> workspace(workspaceBytes + 1);
  std::vector<void const*> pointers;
  for (Tensor const& t : inputs) pointers.push_back(t.bytes(fp16));
  void* outputs[1] = {const_cast<void*>(output.bytes(fp16))};
  if (runtime->enqueue(desc.data(), &outDesc, pointers.data(), outputs, workspace.data(), nullptr) != 0)
    return fail("enqueue failed");
  if (fp16) output.data.assign(output.half.begin(), output.half.end());

  std::ofstream file(output.path, std::ios::binary);
  file.write(reinterpret_cast<char const*>(output.data.data()),
             static_cast<std::streamsize>(output.data.size() * sizeof(float)));
  delete attached;
  delete plugin;
  delete built;
  std::printf("OK workspace %zu\n", workspaceBytes);
  return 0;
}
