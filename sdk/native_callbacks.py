"""Python code that native code calls back: ONNX Runtime running vosrt's Python operators.

ONNX Runtime runs the plugin form's CPU operators (``sdk/cpu_ops.py``, through onnxruntime-extensions)
as Python callbacks on the thread that called ``InferenceSession.run``. Nothing may be raised out of such
a callback: pybind11 cannot pass an exception through ONNX Runtime's C++ frames and ends the whole
process with ``terminate``, losing the files being written and the host application with them. So:

- an exception raised by an operator's body is kept, the operator returns a placeholder, and
  :func:`release` raises the exception again once the session's run has returned, on the same thread
  (the ONNX Runtime backend calls it after every run, so the placeholder never reaches a caller);
- a stop signal that arrives while a callback runs on the main thread (the only one Python runs signal
  handlers on) is held by vosrt's handlers (:func:`hold`), and :func:`release` sends it again.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

_local = threading.local()  # .error: the first exception of a callback on this thread, not yet raised
_main_depth = 0             # callbacks running on the main thread
_held: list[int] = []       # signals held meanwhile, oldest first


def run_callback(body: Callable[[], T], placeholder: Callable[[], T]) -> T:
    """``body()``, or ``placeholder()`` when it raised: the exception is kept for :func:`release`."""
    global _main_depth
    main = threading.current_thread() is threading.main_thread()
    if main:
        _main_depth += 1
    try:
        return body()
    except BaseException as err:  # KeyboardInterrupt too: nothing may leave the callback
        if getattr(_local, "error", None) is None:
            _local.error = err
        return placeholder()
    finally:
        if main:
            _main_depth -= 1


@contextlib.contextmanager
def holding():
    """Around a native call that may run callbacks (an ONNX Runtime run of a graph with vosrt's Python operators):
    a stop signal on the main thread is held for the whole call, not only while a callback's body runs. A signal
    that lands between the native code's call into Python and :func:`run_callback`'s own bookkeeping (or after
    it, before the callback returns) raised in the callback and ended the process. Call :func:`release` after."""
    global _main_depth
    main = threading.current_thread() is threading.main_thread()
    if main:
        _main_depth += 1
    try:
        yield
    finally:
        if main:
            _main_depth -= 1


def hold(signum: int) -> bool:
    """For signal handlers: True when the signal arrived inside a native callback; it is then kept for
    :func:`release`, and the handler must return without raising."""
    if _main_depth == 0:
        return False
    _held.append(signum)
    return True


def release() -> None:
    """After a native call that may run callbacks has returned: raises the exception a callback on this
    thread kept, then sends the held signals again, so that their handlers run here, where an exception
    can propagate."""
    error = getattr(_local, "error", None)
    if error is not None:
        _local.error = None
        raise error
    while _held and _main_depth == 0:
        signal.raise_signal(_held.pop(0))
