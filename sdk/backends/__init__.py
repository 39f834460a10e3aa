"""Inference backends behind one interface (:class:`vosrt.sdk.backends.base.Backend`).

``open_backend(package, name)`` picks and opens one: ``onnxruntime`` (CPU, or CUDA with I/O binding),
``torch`` (the PyTorch reference, from the package's checkpoint) and ``tensorrt`` (built engines).
Backend modules are imported only when chosen, so a host needs only the runtime it uses.
"""
from __future__ import annotations

import importlib
import importlib.util

from vosrt.sdk.backends.base import Backend
from vosrt.sdk.errors import UserError, install_command

# backend name -> (module, class)
BACKENDS = {
    "onnxruntime": ("vosrt.sdk.backends.onnxruntime", "OnnxRuntimeBackend"),
    "torch": ("vosrt.sdk.backends.torch_backend", "TorchBackend"),
    "tensorrt": ("vosrt.sdk.backends.tensorrt", "TensorRTBackend"),
}
ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "pytorch": "torch", "trt": "tensorrt"}
# backend name -> the vosrt extra that installs its runtime (onnxruntime is a base dependency)
EXTRAS = {"torch": "train", "tensorrt": "trt"}


def available_backends() -> list[str]:
    """Backend names whose module and runtime can be imported here."""
    names = []
    for name, (module, _) in BACKENDS.items():
        runtime = {"onnxruntime": "onnxruntime", "torch": "torch", "tensorrt": "tensorrt"}[name]
        if importlib.util.find_spec(runtime) is not None and importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def resolve_backend_name(package, name: str = "auto") -> str:
    """The backend ``name`` stands for: ``auto`` is TensorRT when the package has engines and TensorRT is
    installed, else ONNX Runtime."""
    name = ALIASES.get(name, name)
    if name == "auto":
        if package.engines and "tensorrt" in available_backends():
            return "tensorrt"
        return "onnxruntime"
    if name not in BACKENDS:
        raise UserError(f"backend: expected one of auto, {', '.join(BACKENDS)}, got '{name}'")
    return name


def backend_class(name: str) -> type[Backend]:
    """The class of backend ``name`` (a resolved name, a key of :data:`BACKENDS`), its module imported; UserError
    saying what to install when its runtime is missing."""
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("vosrt"):
            raise UserError(f"backend '{name}' is not part of this vosrt build") from None
        hint = f": {install_command(EXTRAS[name])}" if name in EXTRAS else ""
        raise UserError(f"backend '{name}' needs the Python package '{err.name}', which is not installed{hint}") from None
    return getattr(module, class_name)


def check_backend(package, name: str = "auto", **options) -> str:
    """Refuse what :func:`open_backend` would refuse of ``name`` and ``options`` before it loads any graph or
    engine (:meth:`Backend.check_options`), opening nothing; returns the resolved backend name."""
    name = resolve_backend_name(package, name)
    backend_class(name).check_options(package, **options)
    return name


def open_backend(package, name: str = "auto", **options) -> Backend:
    """Open ``package``'s graphs on backend ``name`` (see :func:`resolve_backend_name`)."""
    name = resolve_backend_name(package, name)
    return backend_class(name)(package, **options)


__all__ = ["Backend", "BACKENDS", "available_backends", "backend_class", "check_backend", "open_backend",
           "resolve_backend_name"]
