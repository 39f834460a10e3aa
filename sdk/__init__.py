"""vosrt.sdk: the runtime. Streams frames through ONNX Runtime or TensorRT model packages.

    import vosrt.sdk
    tracker = vosrt.sdk.load("packages/stcn-lite")          # -> Tracker (stcn packages)
    segmenter = vosrt.sdk.load("packages/3dc-seg-lite")      # -> ClipSegmenter (3dc-seg packages)

Never imports torch at module level: a deployment host needs numpy, opencv and one inference runtime.
"""
from __future__ import annotations

from vosrt.sdk.errors import UserError

# Session options by family; every other keyword goes to the backend (form, device, checkpoint, ...).
SESSION_OPTIONS = {
    "stcn": ("mem_every", "top_k", "memory_capacity", "color"),
    "3dc-seg": ("overlap", "threshold", "color"),
}


def load(package_dir, backend: str = "auto", **overrides):
    """Open a model package and return its streaming session: a :class:`~vosrt.sdk.tracker.Tracker` for
    ``stcn`` packages, a :class:`~vosrt.sdk.clips.ClipSegmenter` for ``3dc-seg``.

    ``backend``: ``"auto"`` (TensorRT when the package has engines and TensorRT is installed, else ONNX
    Runtime), ``"onnxruntime"``, ``"torch"`` (the PyTorch reference; needs the checkpoint) or
    ``"tensorrt"``. ``overrides``: session settings (stcn: ``mem_every``, ``top_k``,
    ``memory_capacity``, ``color``; 3dc-seg: ``overlap``, ``threshold``, ``color``) and backend options
    (``form``, ``device``, ``checkpoint``, ``threads``, ...). Unknown names raise UserError.
    """
    from vosrt.sdk.backends import open_backend
    from vosrt.sdk.package import load_package

    package = load_package(package_dir)
    session_keys = SESSION_OPTIONS[package.family]
    session_options = {k: overrides.pop(k) for k in list(overrides) if k in session_keys}
    other_family = {k for keys in SESSION_OPTIONS.values() for k in keys} - set(session_keys)
    wrong = sorted(set(overrides) & other_family)
    if wrong:
        raise UserError(f"{', '.join(wrong)}: not a setting of {package.family} sessions "
                        f"(they take {', '.join(session_keys)})")
    engine = open_backend(package, backend, **overrides)
    try:
        if package.family == "stcn":
            from vosrt.sdk.tracker import Tracker
            return Tracker(engine, package, **session_options)
        from vosrt.sdk.clips import ClipSegmenter
        return ClipSegmenter(engine, package, **session_options)
    except Exception:
        engine.close()
        raise


__all__ = ["UserError", "load"]
