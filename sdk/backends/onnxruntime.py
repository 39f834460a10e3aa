"""ONNX Runtime backend: a package's graphs on the CPU (graphs with custom operators in their plugin form,
through vosrt's CPU operators; the rest, or all with ``form="portable"``, in the portable form), or the
portable graphs on CUDA with I/O binding.

Two ways of holding tensors:

* host mode (CPU execution provider, the default without a GPU): backend tensors are numpy arrays and
  ``write``/``read`` are numpy slicing.
* bound mode (CUDA execution provider, or ``io_binding=True`` on the CPU to exercise the same path):
  backend tensors are :class:`BoundTensor` wrappers of ``OrtValue``s that live on the session's device.
  Graph outputs stay there (``IOBinding.bind_output``) and feed the next graph directly. ONNX Runtime's
  Python API has no strided device copy, so ``write`` and ``read`` run two tiny helper graphs (Slice +
  Concat) on the same device; ``write`` renders into a second buffer of the same size allocated with
  the first and swaps the two, so a buffer's memory is fixed at allocation (twice its size).
  The helper graphs are built with the ``onnx`` package, which bound mode therefore needs.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from vosrt.sdk import native_callbacks
from vosrt.sdk.backends.base import Backend, Tensor, check_threads, flatten_to, refuse_unknown_options
from vosrt.sdk.errors import UserError

_NUMPY_OF_ORT = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8,
                 "tensor(float16)": np.float16, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class BoundTensor:
    """An ``OrtValue`` on the backend's device, plus the spare buffer ``write`` renders into."""

    __slots__ = ("value", "spare")

    def __init__(self, value: "ort.OrtValue", spare: "ort.OrtValue | None" = None):
        self.value = value
        self.spare = spare

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())


def _provider_device(providers: list) -> tuple[str, int]:
    """(device, device id) of the tensors for sessions on ``providers`` (names, or (name, options) pairs): CUDA's
    ``device_id`` where the first is the CUDA provider, else the host."""
    first = providers[0] if providers else "CPUExecutionProvider"
    name, options = (first, {}) if isinstance(first, str) else (first[0], dict(first[1] or {}))
    if name != "CUDAExecutionProvider":
        return "cpu", 0
    try:
        return "cuda", int(options.get("device_id", 0))
    except (TypeError, ValueError):
        raise UserError(f"providers: CUDAExecutionProvider's device_id must be a GPU index, got "
                        f"{options.get('device_id')!r}") from None


def gpu_install_command() -> str:
    """How to get ONNX Runtime's CUDA provider: onnxruntime-gpu in place of onnxruntime. Both install the one Python
    package ``onnxruntime``, and with both installed the CPU build's files could win (the gpu extra's hint, followed,
    left CUDA unavailable)."""
    return "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"


class OnnxRuntimeBackend(Backend):
    """Runs a package's ONNX graphs in ONNX Runtime.

    Options: ``form`` (``"auto"``, default: on the CPU, the plugin form of each graph that has custom
    operators, run by vosrt's CPU operator library (:mod:`vosrt.sdk.cpu_ops`), and the portable form
    where that library cannot be had (with a one-line notice on stderr) or on CUDA; ``"portable"``;
    ``"plugin"``: the plugin form through the CPU operators, or an error),
    ``device`` (``"auto"``: CUDA when onnxruntime-gpu sees a GPU, else CPU; or ``"cpu"`` / ``"cuda"``),
    ``io_binding`` (default: on for CUDA, off for CPU), ``threads`` (intra-op threads, default ORT's),
    ``providers`` (explicit provider list, overrides ``device``), ``memory_arena`` (default off: see
    :func:`session_options`).
    """

    name = "onnxruntime"

    def __init__(self, package, form: str = "auto", device: str = "auto", io_binding: bool | None = None,
                 threads: int | None = None, providers: list | None = None, memory_arena: bool = False, **unused):
        self.check_options(package, form=form, device=device, threads=threads, providers=providers, **unused)
        available = ort.get_available_providers()
        given, chosen = providers is not None, device == "auto"
        if given:   # they say where the graphs run, and so where the tensors go (it was GPU 0 whatever they said)
            device, device_id = _provider_device(providers)
        else:
            if chosen:
                device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
            providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda"
                         else ["CPUExecutionProvider"])
            device_id = 0
        self.device = device
        self._device_id = device_id
        self._threads = check_threads(threads)
        self._arena = bool(memory_arena)
        self.forms = _choose_forms(package, form, device)  # graph -> form that runs
        self.form = "+".join(sorted(set(self.forms.values()), reverse=True))
        # The plugin-form graphs that hold custom operators, which run through the CPU operators (a plugin-form
        # graph without any, which a package exported in the plugin form alone has, runs as it is).
        self._cpu_ops_graphs: set[str] = set()
        if "plugin" in self.forms.values():
            from vosrt.sdk import cpu_ops
            self._cpu_ops_graphs = {g for g, f in self.forms.items()
                                    if f == "plugin" and cpu_ops.has_plugin_nodes(package.graph_path(g, f))}
        self.bound = device == "cuda" if io_binding is None else bool(io_binding)
        self._form_asked = form
        self._providers = providers
        self.package = package
        self.sessions: dict[str, ort.InferenceSession] = {}
        self._overridable: dict[str, set[str]] = {}   # initializers a feed may override (e.g. top_k)
        self._paths: dict[str, object] = {}
        self._variants: dict[tuple, tuple] = {}       # (graph, overrides) -> (session, kept OrtValues)
        self._defaults: dict[str, dict[str, np.ndarray]] = {}   # graph -> its overridable initializers' values
        self._inputs: dict[str, dict[str, str]] = {}
        self._outputs: dict[str, list[str]] = {}
        for graph in package.graphs:
            self._open(graph)
            if device == "cuda" and "CUDAExecutionProvider" not in self.sessions[graph].get_providers():
                # onnxruntime-gpu lists the CUDA provider whenever it was built with it; without a usable GPU (no
                # device, CUDA or cuDNN missing) the session falls back to the CPU with a log line, and the
                # backend went on binding CUDA tensors to it (runs failed, or "cuda" was reported of a CPU run)
                if given or not chosen:
                    raise UserError(f"device='cuda': ONNX Runtime could not start its CUDA provider for {self._paths[graph]} "
                                    "(see its messages above: a GPU, and the CUDA and cuDNN libraries this "
                                    f"onnxruntime-gpu {ort.__version__} was built for, are needed); or run on the CPU "
                                    "(device='cpu')")
                print("vosrt: ONNX Runtime could not start its CUDA provider (see its messages above); running on "
                      "the CPU", file=sys.stderr)
                self.__init__(package, form=form, device="cpu", io_binding=io_binding, threads=threads,
                              memory_arena=memory_arena)
                return
        self._ort_device = "cuda" if device == "cuda" else "cpu"
        self._helpers: dict[tuple, ort.InferenceSession] = {}

    def _open(self, graph: str) -> None:
        """Open ``graph`` in the form :attr:`forms` names (again, after :meth:`fit_top_k` changed it)."""
        path = self.package.graph_path(graph, self.forms[graph])
        try:
            session = ort.InferenceSession(self._model(graph), self._session_options(graph), providers=self._providers)
        except Exception as err:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise UserError(f"ONNX Runtime cannot open {path}: {err}") from None
        self.sessions[graph] = session
        inputs = {i.name: i.type for i in session.get_inputs()}
        self._overridable[graph] = {i.name for i in session.get_overridable_initializers()} - set(inputs)
        for name in self._overridable[graph]:
            inputs[name] = "overridable initializer"
        self._inputs[graph] = inputs
        self._paths[graph] = path
        self._outputs[graph] = [o.name for o in session.get_outputs()]
        self._defaults.pop(graph, None)

    def fit_top_k(self, graph: str, top_k: int, positions: int) -> None:
        """Make ``graph`` able to read the memory with a fed ``top_k`` (a session's, which may differ from the
        package's that :func:`_choose_forms` looked at) over up to ``positions`` memory entries. The plugin form run
        by vosrt's CPU operators reads at most ``MAX_TOP_K`` entries per query, or all of them: a tracker opened
        with ``top_k=100`` was accepted and failed with a KernelError at its second frame, once the memory held
        more than 100 entries. With ``form="auto"`` the graph runs in its portable form instead (a notice on
        stderr, as for a package's own top_k); where that cannot be (``form="plugin"``, or no portable file),
        UserError saying what to ask for."""
        if graph not in self._cpu_ops_graphs:
            return
        from vosrt.sdk import cpu_ops
        if cpu_ops.reads_top_k(top_k, positions):
            return
        why = (f"top_k={top_k}: the plugin form of graph '{graph}' of {self.package.path} runs on vosrt's CPU "
               f"operators, whose L2MemoryReadout reads at most {cpu_ops.MAX_TOP_K} memory entries per query, or all")
        has_portable = "portable" in self.package.graphs[graph]
        if self._form_asked == "plugin" or not has_portable:
            instead = "; or run the portable form (form='portable')" if has_portable else (
                "; or export the package with its portable form (`vosrt export ... --forms plugin,portable`)")
            raise UserError(f"{why}; ask for top_k {cpu_ops.MAX_TOP_K} or less, or 0 (every entry){instead}")
        print(f"vosrt: {why}; running the portable form of '{graph}'", file=sys.stderr)
        self.forms[graph] = "portable"
        self._cpu_ops_graphs.discard(graph)
        self.form = "+".join(sorted(set(self.forms.values()), reverse=True))
        self._open(graph)

    @classmethod
    def check_options(cls, package, form: str = "auto", device: str = "auto", io_binding: bool | None = None,
                      threads: int | None = None, providers: list | None = None, memory_arena: bool = False,
                      **unused) -> None:
        refuse_unknown_options(cls.name, unused)
        available = ort.get_available_providers()
        if device not in cls.devices:
            raise UserError(f"device: expected 'auto', 'cpu' or 'cuda', got '{device}'")
        check_threads(threads)
        if form not in ("auto", "portable", "plugin"):
            raise UserError(f"form: expected 'auto', 'portable' or 'plugin', got '{form}'")
        if form == "plugin" and not any("plugin" in files for files in package.graphs.values()):
            raise UserError(f"form='plugin': package {package.path} has no plugin form (available forms: "
                            f"{', '.join(package.forms) or 'none'}); use form='auto' or form='portable', or export "
                            "the package with `vosrt export ... --forms plugin,portable`")
        if form == "plugin" and device == "cuda":
            raise UserError(_PLUGIN_ON_CPU_ONLY)
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise UserError("device='cuda' needs onnxruntime-gpu and a CUDA device; this onnxruntime offers "
                            f"{', '.join(available)} (onnxruntime-gpu replaces onnxruntime, whose Python package it "
                            f"shares: `{gpu_install_command()}`)")

    def _model(self, graph: str) -> str:
        """The file ONNX Runtime opens for ``graph``: the package's, or for the plugin form its copy with the
        custom nodes handed to the CPU operators (cached, :func:`vosrt.sdk.cpu_ops.cpu_graph_for`)."""
        path = self.package.graph_path(graph, self.forms[graph])
        if graph in self._cpu_ops_graphs:
            from vosrt.sdk import cpu_ops
            return str(cpu_ops.cpu_graph_for(path))
        return str(path)

    def _session_options(self, graph: str | None = None) -> "ort.SessionOptions":
        options = session_options(self._threads, self._arena)
        if graph in self._cpu_ops_graphs:
            from vosrt.sdk import cpu_ops
            options.register_custom_ops_library(cpu_ops.register_onnxruntime_ops(cpu_ops.load_cpu_ops()))
        return options

    # ------------------------------------------------------------------ graphs
    def input_names(self, graph: str) -> list[str]:
        return list(self._inputs[graph])

    def output_names(self, graph: str) -> list[str]:
        """Names of ``graph``'s outputs."""
        return list(self._outputs[graph])

    def _input_meta(self, graph: str, name: str):
        return next((meta for meta in self.sessions[graph].get_inputs() if meta.name == name), None)

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        meta = self._input_meta(graph, name)
        return np.dtype(_NUMPY_OF_ORT.get(meta.type, np.float32) if meta is not None else np.float32)

    def input_shape(self, graph: str, name: str) -> tuple | None:
        meta = self._input_meta(graph, name)
        return tuple(meta.shape) if meta is not None else None

    def _check_inputs(self, graph: str, inputs: Mapping[str, Tensor]) -> None:
        unknown = set(inputs) - set(self._inputs[graph])
        if unknown:
            raise ValueError(f"graph '{graph}' has no input(s) {sorted(unknown)}; it takes {sorted(self._inputs[graph])}")

    def run(self, graph: str, inputs: Mapping[str, Tensor], outputs: Sequence[str] | None = None
            ) -> dict[str, Tensor]:
        try:
            if self.forms.get(graph) != "plugin":
                return self._run(graph, inputs, outputs)
            from vosrt.sdk import cpu_ops
            # The CPU operators are one library for the whole process: this backend's thread count goes
            # with its own runs (another backend may have asked for another).
            with native_callbacks.holding(), cpu_ops.operator_threads(self._threads):
                return self._run(graph, inputs, outputs)
        finally:  # an error or a stop signal kept during a Python operator is raised here
            native_callbacks.release()

    def _run(self, graph: str, inputs: Mapping[str, Tensor], outputs: Sequence[str] | None) -> dict[str, Tensor]:
        if not self.sessions:
            raise UserError(f"onnxruntime backend ({self.package.path}) was closed; open a new one")
        self._check_inputs(graph, inputs)
        names = list(outputs) if outputs is not None else self._outputs[graph]
        session = self.sessions[graph]
        if not self.bound:
            feeds = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
            return dict(zip(names, session.run(names, feeds)))
        overrides = {k: np.ascontiguousarray(self.download(v)) for k, v in inputs.items() if k in self._overridable[graph]}
        if overrides:
            # IOBinding binds graph inputs only; an overridden initializer (the portable segment graph's
            # top_k) is set at session creation instead, one cached session per distinct value other than
            # the graph's own.
            inputs = {k: v for k, v in inputs.items() if k not in overrides}
            defaults = self._initializer_defaults(graph)
            if not all(k in defaults and np.array_equal(defaults[k], v) for k, v in overrides.items()):
                session = self._session_with(graph, overrides)
        binding = session.io_binding()
        for key, value in inputs.items():
            if isinstance(value, BoundTensor):
                binding.bind_ortvalue_input(key, value.value)
            elif isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(key, value)
            else:
                binding.bind_cpu_input(key, np.ascontiguousarray(value))
        for key in names:
            binding.bind_output(key, self._ort_device, self._device_id)
        session.run_with_iobinding(binding)
        return {key: BoundTensor(value) for key, value in zip(names, binding.get_outputs())}

    def _initializer_defaults(self, graph: str) -> dict[str, np.ndarray]:
        """The values ``graph``'s overridable initializers hold (read once): a feed equal to them runs on the
        graph's own session, not on a second one made for the value (the tracker feeds top_k every frame)."""
        if graph not in self._defaults:
            import onnx
            from onnx import numpy_helper

            names = self._overridable[graph]
            model = onnx.load(self._model(graph), load_external_data=False)
            self._defaults[graph] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
                                     if i.name in names}
        return self._defaults[graph]

    def _session_with(self, graph: str, overrides: dict[str, np.ndarray]) -> "ort.InferenceSession":
        key = (graph, tuple(sorted((k, v.dtype.str, v.shape, v.tobytes()) for k, v in overrides.items())))
        if key not in self._variants:
            options = self._session_options(graph)
            kept = [ort.OrtValue.ortvalue_from_numpy(v) for v in overrides.values()]
            for name, value in zip(overrides, kept):
                options.add_initializer(name, value)
            session = ort.InferenceSession(self._model(graph), options, providers=self._providers)
            self._variants[key] = (session, kept)
        return self._variants[key][0]

    # ------------------------------------------------------------------ data
    def upload(self, array: np.ndarray) -> Tensor:
        array = np.ascontiguousarray(array)
        if not self.bound:
            return array.copy()
        return BoundTensor(ort.OrtValue.ortvalue_from_numpy(array, self._ort_device, self._device_id))

    def download(self, tensor: Tensor) -> np.ndarray:
        if isinstance(tensor, BoundTensor):
            return tensor.value.numpy()
        if isinstance(tensor, ort.OrtValue):
            return tensor.numpy()
        return np.array(tensor, copy=True)

    def zeros(self, shape: Sequence[int], dtype: type = np.float32) -> Tensor:
        zeros = np.zeros(tuple(int(s) for s in shape), dtype)
        if not self.bound:
            return zeros
        make = ort.OrtValue.ortvalue_from_numpy
        return BoundTensor(make(zeros, self._ort_device, self._device_id), make(zeros, self._ort_device, self._device_id))

    def shape(self, tensor: Tensor) -> tuple[int, ...]:
        if isinstance(tensor, BoundTensor):
            return tensor.shape
        if isinstance(tensor, ort.OrtValue):
            return tuple(tensor.shape())
        return tuple(np.shape(tensor))

    def nbytes(self, tensor: Tensor) -> int:
        if isinstance(tensor, BoundTensor):
            size = tensor.value.tensor_size_in_bytes()
            return size * (2 if tensor.spare is not None else 1)
        return int(np.asarray(tensor).nbytes)

    def write(self, dst: Tensor, axis: int, start: int, src: Tensor) -> None:
        if not self.bound:
            src = np.asarray(src) if not isinstance(src, np.ndarray) else src
            src = src.reshape(flatten_to(src.shape, dst.ndim))
            index = (slice(None),) * axis + (slice(start, start + src.shape[axis]),)
            dst[index] = src
            return
        if dst.spare is None:
            raise ValueError("write() needs a buffer allocated with zeros()")
        rank = len(dst.shape)
        src_value = src.value if isinstance(src, BoundTensor) else (
            src if isinstance(src, ort.OrtValue) else
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(src, np.float32), self._ort_device, self._device_id))
        session = self._helper("write", rank, axis)
        binding = session.io_binding()
        binding.bind_ortvalue_input("dst", dst.value)
        binding.bind_ortvalue_input("src", src_value)
        binding.bind_cpu_input("start", np.array([start], np.int64))
        binding.bind_ortvalue_output("out", dst.spare)
        session.run_with_iobinding(binding)
        dst.value, dst.spare = dst.spare, dst.value

    def read(self, src: Tensor, axis: int, start: int, stop: int) -> Tensor:
        if not self.bound:
            index = (slice(None),) * axis + (slice(start, stop),)
            return src[index]
        rank = len(src.shape)
        session = self._helper("read", rank, axis)
        binding = session.io_binding()
        binding.bind_ortvalue_input("src", src.value)
        binding.bind_cpu_input("start", np.array([start], np.int64))
        binding.bind_cpu_input("stop", np.array([stop], np.int64))
        binding.bind_output("out", self._ort_device, self._device_id)
        session.run_with_iobinding(binding)
        return BoundTensor(binding.get_outputs()[0])

    def _helper(self, kind: str, rank: int, axis: int) -> "ort.InferenceSession":
        key = (kind, rank, axis)
        if key not in self._helpers:
            model = _helper_model(kind, rank, axis)
            self._helpers[key] = ort.InferenceSession(model, self._session_options(), providers=self._providers)
        return self._helpers[key]

    def close(self) -> None:
        self.sessions.clear()
        self._helpers.clear()
        self._variants.clear()   # the sessions made for an overridden top_k

    def describe(self) -> str:
        mode = ("I/O binding" if self.bound else "host tensors") + (", memory arena" if self._arena else "")
        plugin = [g for g, f in self.forms.items() if f == "plugin"]
        forms = (f"plugin form with vosrt CPU operators for {', '.join(plugin)}, portable for the rest" if plugin
                 else "portable form")
        return f"onnxruntime {ort.__version__} ({self.device}, {forms}, {mode})"


_PLUGIN_ON_CPU_ONLY = "form='plugin' runs its custom operators on the CPU; use device='cpu' or form='portable'"


def _choose_forms(package, form: str, device: str) -> dict[str, str]:
    """Form each graph runs in: the plugin form only for graphs with custom operators in it (elsewhere the
    two forms are the same graph), and only on the CPU, where vosrt's CPU operators run them. A graph the
    package holds only in the plugin form (``vosrt export --forms plugin``) runs in it: as it is where it has
    no custom operator, through the CPU operators where it has. ``form`` is one of auto, portable and plugin
    (:meth:`OnnxRuntimeBackend.check_options` refused the rest)."""
    forms = {graph: "portable" if "portable" in files else "plugin" for graph, files in package.graphs.items()}
    plugin_files = {g: files["plugin"] for g, files in package.graphs.items() if "plugin" in files}
    if not plugin_files:
        return forms
    if form == "plugin" and device != "cpu":
        raise UserError(_PLUGIN_ON_CPU_ONLY)
    only_plugin: list[str] = []   # graphs with custom operators and no portable file
    try:
        from vosrt.sdk import cpu_ops
        with_ops = [g for g, path in plugin_files.items() if cpu_ops.has_plugin_nodes(path)]
        only_plugin = [g for g in with_ops if forms[g] == "plugin"]
        if only_plugin and (form == "portable" or device != "cpu"):
            asked = "form='portable'" if form == "portable" else f"device='{device}'"
            instead = "use form='auto'" if form == "portable" else "use device='cpu'"
            raise UserError(f"{asked}: package {package.path} has no portable form of graph(s) "
                            f"{', '.join(only_plugin)}, whose custom operators ONNX Runtime runs only through vosrt's "
                            f"CPU operators; {instead}, or export the package with `vosrt export ... --forms "
                            f"plugin,portable`")
        if form == "portable" or (form == "auto" and device != "cpu") or not with_ops:
            return forms
        top_k = package.streaming.get("top_k")
        if top_k is not None and not cpu_ops.reads_top_k(int(top_k)):
            # A package exported before vosrt export refused it: the plugin form's L2MemoryReadout holds a top_k the
            # CPU operators (and the TensorRT plugin) cannot read, which failed mid-stream once the memory held more
            # entries. The portable form's TopK reads any.
            why = (f"the plugin form of {package.path} reads with top_k {top_k} (streaming.top_k), beyond the "
                   f"{cpu_ops.MAX_TOP_K} its L2MemoryReadout takes")
            if form == "plugin" or only_plugin:
                raise UserError(f"{why}; run the portable form (form='portable'), or export the package again with "
                                f"--top-k {cpu_ops.MAX_TOP_K} or less (or 0: every entry)")
            print(f"vosrt: {why}; running the portable form", file=sys.stderr)
            return forms
        ops = cpu_ops.load_cpu_ops()
        cpu_ops.register_onnxruntime_ops(ops)
    except (ImportError, OSError, RuntimeError) as err:  # CpuOpsUnavailable is a RuntimeError
        if form == "plugin" or only_plugin:
            reason = "form='plugin'" if form == "plugin" else \
                f"package {package.path} has graph(s) {', '.join(only_plugin)} only in the plugin form, which"
            raise UserError(f"{reason} needs vosrt's CPU operators: {err}") from None
        reason = str(err).strip().splitlines()[0]
        print(f"vosrt: CPU operators unavailable ({reason}); running the portable form", file=sys.stderr)
        return forms
    forms.update({graph: "plugin" for graph in with_ops})
    return forms


def session_options(threads: int | None = None, memory_arena: bool = False) -> "ort.SessionOptions":
    """The ONNX Runtime session options of every vosrt session (backend, parity checks, engine checks).

    Warnings are silenced (the portable ``top_k`` input's default initializer draws a harmless one).
    A tracker alternates between several sessions, each with its own thread pool; spinning workers of
    the session that just ran would steal the cores from the next one (2x slower on 2 cores), so
    workers do not spin. The CPU memory arena is off unless ``memory_arena``: each session's arena would
    keep its own graph's peak of intermediate buffers for good, so a tracker's three sessions held the sum
    of three peaks, while freed buffers now go back to the system between graphs at no measurable cost in
    time (full STCN at 480p, plugin form: 1.30 GB peak RSS with arenas, 0.91 GB without;
    ``samples/bench_stcn_graphs.py [--arena]`` compares). ``threads``: intra-op threads (default: ONNX
    Runtime's choice).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = bool(memory_arena)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


def _helper_model(kind: str, rank: int, axis: int) -> bytes:
    """Serialized ONNX model for ``write`` (Slice + Concat into a new tensor) or ``read`` (Slice)."""
    try:
        from onnx import TensorProto, helper
    except ImportError:
        raise UserError("onnxruntime with I/O binding needs the 'onnx' package for its buffer helpers "
                        "(pip install onnx)") from None
    const = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
    f32 = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)  # noqa: E731
    i64 = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, [1])  # noqa: E731
    if kind == "read":
        nodes = [const("axes", [axis]), helper.make_node("Slice", ["src", "start", "stop", "axes"], ["out"])]
        inputs = [f32("src"), i64("start"), i64("stop")]
    else:
        # out = concat(dst[.., :start], reshape(src), dst[.., start+n:]) along axis; src may have its
        # trailing axes flattened or split differently, so it is reshaped to dst's layout first.
        nodes = [
            const("axes", [axis]), const("zero", [0]), const("big", [2 ** 62]), const("minus1", [-1]),
            helper.make_node("Shape", ["dst"], ["head"], end=axis),
            helper.make_node("Shape", ["dst"], ["tail"], start=axis + 1),
            helper.make_node("Concat", ["head", "minus1", "tail"], ["target"], axis=0),
            helper.make_node("Reshape", ["src", "target"], ["src_r"]),
            helper.make_node("Shape", ["src_r"], ["n"], start=axis, end=axis + 1),
            helper.make_node("Add", ["start", "n"], ["stop"]),
            helper.make_node("Slice", ["dst", "zero", "start", "axes"], ["before"]),
            helper.make_node("Slice", ["dst", "stop", "big", "axes"], ["after"]),
            helper.make_node("Concat", ["before", "src_r", "after"], ["out"], axis=axis),
        ]
        inputs = [f32("dst"), helper.make_tensor_value_info("src", TensorProto.FLOAT, None), i64("start")]
    graph = helper.make_graph(nodes, f"vosrt_{kind}_{axis}", inputs, [f32("out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model.SerializeToString()
