"""PyTorch backend: the reference. Runs ``vosrt.training.graphs`` modules eagerly through the same session
logic as the other backends, so any difference between backends is the runtime's, not the SDK's.

The weights come from a checkpoint: ``load(pkg, backend="torch", checkpoint=PATH)``, else the manifest's
``source.checkpoint`` (the one the package was exported from), or from a model in memory:
``TorchBackend(Package.in_memory(family, h, w), model=model)`` (training validation runs the shipped
sessions this way, so the J&F reported during training is the SDK's). A package exported from random weights
without saving them cannot be reproduced in PyTorch; export from a saved checkpoint instead.

Its graphs declare the inputs and outputs of the exported ones (``input_shape``, ``input_dtype``, ``output_names``:
the package resolution, dynamic axes by name), and ``run`` refuses, as ONNX Runtime does, an input of another
dtype, rank or static size, so that code tested on the reference runs on the other backends.

torch is imported here only, never by the rest of ``vosrt.sdk``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vosrt.sdk.backends.base import Backend, Tensor, check_input, check_threads, flatten_to, refuse_unknown_options
from vosrt.sdk.errors import UserError, install_command

try:
    import torch
except ImportError as err:  # pragma: no cover - depends on the host
    raise ModuleNotFoundError(f"the torch backend needs PyTorch ({install_command('train')})", name="torch") from err


def _numpy_dtype(dtype: "torch.dtype"):
    """The numpy dtype of a torch dtype (its name where numpy has none, e.g. 'torch.bfloat16')."""
    try:
        return np.dtype(str(dtype).removeprefix("torch."))
    except TypeError:
        return str(dtype)


class TorchBackend(Backend):
    """Runs a package's graphs as PyTorch modules. Options: ``checkpoint`` (path) or ``model`` (a built
    model in memory, used as is), ``device`` (``"auto"``: CUDA when torch sees one, else CPU; with
    ``model``, the model's device), ``threads`` (torch intra-op threads: ``torch.set_num_threads``, which holds for
    the whole process, other torch sessions and the caller's own torch code included)."""

    name = "torch"

    def __init__(self, package, checkpoint=None, device: str = "auto", threads: int | None = None, model=None,
                 **unused):
        self.check_options(package, checkpoint=checkpoint, device=device, threads=threads, model=model, **unused)
        from vosrt.training.graphs import family_of_model, graphs_for
        from vosrt.training.models import load_checkpoint

        if model is not None:
            device = next(model.parameters()).device.type if device == "auto" else device
        checkpoint = checkpoint or package.checkpoint
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):   # device='auto' with a model in memory on another device
            raise UserError(f"torch backend: the model given is on device '{device}', which the torch backend does "
                            "not run on; move it to 'cpu' or 'cuda', or pass device='cpu' or device='cuda'")
        threads = check_threads(threads)
        if threads:
            torch.set_num_threads(threads)
        self.device = device
        if model is None:
            self.checkpoint = str(checkpoint)
            model, _ = load_checkpoint(checkpoint)
        else:
            self.checkpoint = "in memory"
        if family_of_model(model) != package.family:
            raise UserError(f"{self.checkpoint}: a {model.config.get('model')} model ({family_of_model(model)}), "
                            f"but the package {package.path} is {package.family}")
        self._check_same_network(package, model)
        model = model.to(device).eval()
        self.specs = graphs_for(model, top_k=int(package.streaming.get("top_k", 20)))
        missing = set(package.graphs) - set(self.specs)
        if missing:
            raise UserError(f"torch backend: the model has no graph(s) {sorted(missing)}")
        self._torch_device = torch.device(device)
        # Input shapes as the exported graphs declare them, dynamic axes by name ("objects", "memory"): the
        # example inputs at the package resolution (what export traces), built on the meta device (no memory).
        self._shapes: dict[str, dict[str, tuple]] = {}
        with torch.device("meta"):
            for graph, spec in self.specs.items():
                example = spec.example(package.height, package.width)
                self._shapes[graph] = {
                    name: tuple(spec.dynamic_axes.get(name, {}).get(axis, int(size))
                                for axis, size in enumerate(tensor.shape))
                    for name, tensor in zip(spec.input_names, example)}

    def _check_same_network(self, package, model) -> None:
        """UserError unless ``model`` is the network of ``package``'s graphs: the same variant and widths. One of
        another variant (a published full-size checkpoint beside a ``-lite`` package) ran without a word, so
        ``vosrt bench --compare torch`` printed the ratio of two different networks."""
        held = package.other_network(model, (getattr(model, "config", None) or {}).get("model"))
        if held:
            recorded = f" (the manifest records {package.checkpoint})" if package.checkpoint else ""
            raise UserError(f"torch backend: {self.checkpoint} holds {held}; pass the checkpoint the package was "
                            f"exported from{recorded} (checkpoint=PATH; command line: --checkpoint PATH)")

    @classmethod
    def check_options(cls, package, checkpoint=None, device: str = "auto", threads: int | None = None, model=None,
                      **unused) -> None:
        refuse_unknown_options(cls.name, unused)
        if device not in cls.devices:
            raise UserError(f"device: expected 'auto', 'cpu' or 'cuda', got '{device}'")
        if device == "cuda" and not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(f"device='cuda': this PyTorch ({torch.__version__}, {build}) sees no CUDA device; "
                            "use device='cpu' (on the command line --device cpu)")
        check_threads(threads)
        if model is not None:
            return
        recorded = checkpoint is None
        checkpoint = checkpoint or package.checkpoint
        if checkpoint is None:
            raise UserError(f"torch backend: package {package.path} records no checkpoint (source.checkpoint); "
                            "pass checkpoint=PATH (CLI: --checkpoint PATH)")
        if recorded and not checkpoint.is_file():
            raise UserError(f"torch backend: package {package.path} records checkpoint {checkpoint} "
                            "(source.checkpoint, the one it was exported from), which is not there (moved or "
                            "deleted?); pass checkpoint=PATH (CLI: --checkpoint PATH)")

    def input_names(self, graph: str) -> list[str]:
        # + the inputs only the portable form exposes (SegmentGraph takes an optional top_k override)
        return list(self.specs[graph].input_names) + list(self.specs[graph].portable_inputs)

    def output_names(self, graph: str) -> list[str]:
        """Names of ``graph``'s outputs."""
        return list(self.specs[graph].output_names)

    def input_shape(self, graph: str, name: str) -> tuple | None:
        # None for top_k, as on ONNX Runtime (an initializer a feed may override, of no declared shape)
        return self._shapes[graph].get(name)

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return np.dtype(np.int64 if name in self.specs[graph].portable_inputs else np.float32)

    def _check_inputs(self, graph: str, inputs: Mapping[str, Tensor]) -> None:
        spec = self.specs[graph]
        unknown = set(inputs) - set(self.input_names(graph))
        if unknown:
            raise ValueError(f"graph '{graph}' has no input(s) {sorted(unknown)}; it takes {self.input_names(graph)}")
        missing = [name for name in spec.input_names if name not in inputs]
        if missing:
            raise ValueError(f"graph '{graph}' needs input(s) {missing}")
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                shape, dtype = tuple(value.shape), _numpy_dtype(value.dtype)
            else:
                shape, dtype = np.shape(value), np.asarray(value).dtype
            if name in spec.portable_inputs:   # top_k: any integer array holding one value, as ONNX Runtime takes
                if dtype != np.int64 or int(np.prod(shape)) != 1:
                    check_input(self.name, graph, name, (1,), np.int64, shape, dtype)
                continue
            check_input(self.name, graph, name, self._shapes[graph][name], np.float32, shape, dtype)

    def _tensor(self, value) -> "torch.Tensor":
        if isinstance(value, torch.Tensor):
            return value
        return torch.from_numpy(np.ascontiguousarray(value)).to(self._torch_device)

    def run(self, graph: str, inputs: Mapping[str, Tensor], outputs: Sequence[str] | None = None
            ) -> dict[str, Tensor]:
        if not self.specs:
            raise UserError(f"torch backend ({self.checkpoint}) was closed; open a new one")
        spec = self.specs[graph]
        self._check_inputs(graph, inputs)
        args = [self._tensor(inputs[name]) for name in spec.input_names]
        kwargs = {name: self._tensor(inputs[name]) for name in spec.portable_inputs if name in inputs}
        with torch.inference_mode():
            result = spec.module(*args, **kwargs)
        if isinstance(result, torch.Tensor):
            result = (result,)
        named = dict(zip(spec.output_names, result))
        return {name: named[name] for name in (outputs or spec.output_names)}

    def upload(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(array, copy=True)).to(self._torch_device)

    def download(self, tensor: Tensor) -> np.ndarray:
        if isinstance(tensor, torch.Tensor):
            return tensor.detach().cpu().numpy().copy()
        return np.array(tensor, copy=True)

    def zeros(self, shape: Sequence[int], dtype: type = np.float32) -> Tensor:
        torch_dtype = {np.float32: torch.float32, np.uint8: torch.uint8, np.int64: torch.int64}[np.dtype(dtype).type]
        try:
            return torch.zeros(tuple(int(s) for s in shape), dtype=torch_dtype, device=self._torch_device)
        except RuntimeError as err:
            # torch.OutOfMemoryError (CUDA) and the CPU allocator's RuntimeError are MemoryError to the callers, as
            # numpy's is: the memory bank then names memory_capacity (it showed torch's allocator message instead)
            if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err):
                raise MemoryError(str(err).strip().splitlines()[0]) from None
            raise

    def write(self, dst: Tensor, axis: int, start: int, src: Tensor) -> None:
        src = self._tensor(src)
        src = src.reshape(flatten_to(src.shape, dst.ndim))
        index = (slice(None),) * axis + (slice(start, start + src.shape[axis]),)
        dst[index] = src

    def read(self, src: Tensor, axis: int, start: int, stop: int) -> Tensor:
        return src[(slice(None),) * axis + (slice(start, stop),)]

    def shape(self, tensor: Tensor) -> tuple[int, ...]:
        return tuple(tensor.shape)

    def nbytes(self, tensor: Tensor) -> int:
        return int(tensor.numel() * tensor.element_size())

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        """Drop the model, so that its weights (on the GPU too) go with the last reference to them rather than
        with the session that was closed; the backend must not run afterwards."""
        self.specs = {}
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> str:
        return f"torch {torch.__version__} ({self.device}, checkpoint {self.checkpoint})"
