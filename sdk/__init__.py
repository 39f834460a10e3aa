"""vosrt.sdk: the runtime. Streams frames through ONNX Runtime or TensorRT model packages.

    import vosrt.sdk
    session = vosrt.sdk.load("path/to/package")     # the family's session (vosrt.sdk.families)
    for frame in frames:
        for done in session.push(frame):           # stcn: push(frame0, mask=first_mask) starts tracking
            use(done.index, done.labels)
    for done in session.flush():
        use(done.index, done.labels)

Every session speaks the protocol of :mod:`vosrt.sdk.session`; :func:`vosrt.sdk.streaming.stream` drives
one from a source to sinks. Never imports torch at module level: a deployment host needs numpy, opencv
and one inference runtime.
"""
from __future__ import annotations

from vosrt.sdk.errors import FrameError, UserError


def load(package_dir, backend: str = "auto", **overrides):
    """Open a model package and return its family's streaming session (the ``session`` of its row in
    :mod:`vosrt.sdk.families`: a :class:`~vosrt.sdk.tracker.Tracker` for ``stcn`` packages, a
    :class:`~vosrt.sdk.clip_segmenter.ClipSegmenter` for ``3dc-seg``, an
    :class:`~vosrt.sdk.instance_segmenter.InstanceSegmenter` for ``stem-seg``).

    ``backend``: ``"auto"`` (TensorRT when the package has engines and TensorRT is installed, else ONNX
    Runtime), ``"onnxruntime"``, ``"torch"`` (the PyTorch reference; needs the checkpoint) or
    ``"tensorrt"``. ``overrides``: session settings (the family's ``settings``, e.g. stcn:
    ``mem_every``, ``top_k``, ``memory_capacity``, ``color``) and backend options (``form``, ``device``,
    ``checkpoint``, ``threads``, ...). A setting of another family raises UserError.
    """
    from vosrt.sdk import families
    from vosrt.sdk.backends import open_backend
    from vosrt.sdk.package import load_package

    package = load_package(package_dir)
    family = families.get(package.family)
    session_options = {k: overrides.pop(k) for k in list(overrides) if k in family.settings}
    other_family = {k for f in families.all_families() for k in f.settings}
    family.check_settings({k: v for k, v in overrides.items() if k in other_family})
    _refuse_stray(family, overrides, other_family)
    engine = open_backend(package, backend, **overrides)
    return open_session(engine, package, **session_options)


def _refuse_stray(family, overrides, other_family) -> None:
    """One UserError for keywords that are neither a session setting of any family nor an option of any
    backend (a typo such as ``mem_evry``), with the closest known name; left to the backend, it said only
    "unknown option" of the backend."""
    import difflib

    from vosrt.sdk.backends.base import BACKEND_OPTIONS, COMMON_OPTIONS

    options = [*COMMON_OPTIONS, *BACKEND_OPTIONS]
    stray = sorted(set(overrides) - other_family - set(options))
    if stray:
        known = [*family.settings, *options]
        close = {name: difflib.get_close_matches(name, known, 1) for name in stray}
        guesses = [match[0] if len(stray) == 1 else f"{match[0]} for {name}" for name, match in close.items() if match]
        raise UserError(f"{', '.join(stray)}: not a setting of {family.name} packages nor an option of any backend"
                        + (f" (did you mean {', '.join(guesses)}?)" if guesses else "")
                        + f"; settings: {', '.join(family.settings)}; backend options: {', '.join(options)}")


def open_session(backend, package, **settings):
    """The family's session over an open ``backend`` (closed again if the session cannot start)."""
    from vosrt.sdk import families

    try:
        return families.get(package.family).session_class()(backend, package, **settings)
    except Exception:
        backend.close()
        raise


def __getattr__(name):
    # Session classes by name without importing every family's module at `import vosrt.sdk`.
    lazy = {"Tracker": "vosrt.sdk.tracker", "ClipSegmenter": "vosrt.sdk.clip_segmenter",
            "InstanceSegmenter": "vosrt.sdk.instance_segmenter",
            "SegmentedFrame": "vosrt.sdk.session", "Session": "vosrt.sdk.session", "stream": "vosrt.sdk.streaming"}
    if name in lazy:
        import importlib
        return getattr(importlib.import_module(lazy[name]), name)
    # modules the README names as vosrt.sdk.X after `import vosrt.sdk` (a signal handler's
    # vosrt.sdk.native_callbacks.hold(signum) must work whichever backend the application opened; the README's
    # vosrt.sdk.video.open_source(...) and PngSink sinks, and its vosrt.sdk.instance_metrics.VisWriter / MotsWriter)
    if name in ("native_callbacks", "streaming", "masks", "instances", "video", "instance_metrics"):
        import importlib
        return importlib.import_module(f"vosrt.sdk.{name}")
    raise AttributeError(f"module 'vosrt.sdk' has no attribute '{name}'")


__all__ = ["FrameError", "UserError", "load", "open_session"]
