"""Stop signals that arrive while Python runs as a callback inside native code.

ONNX Runtime runs vosrt's Python operators (``sdk/cpu_ops.py``, through onnxruntime-extensions) on the
thread that called ``InferenceSession.run``. An exception raised there by a signal handler (Ctrl-C's
KeyboardInterrupt, the CLI's SIGTERM/SIGHUP stop) cannot cross the C++ frames between the operator and
the caller: pybind11 ends the whole process with ``terminate``, and the files being written are lost. So
while such a callback runs on the main thread (the only one Python runs signal handlers on), vosrt's
handlers hold the signal, and :func:`release` sends it again once the native call has returned.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_depth = 0               # native callbacks running on the main thread
_held: list[int] = []    # signals held meanwhile, oldest first


@contextmanager
def native_callback():
    """Around Python code that native code calls (the body of a custom operator)."""
    global _depth
    main = threading.current_thread() is threading.main_thread()
    if main:
        _depth += 1
    try:
        yield
    finally:
        if main:
            _depth -= 1


def hold(signum: int) -> bool:
    """For signal handlers: True when the signal arrived inside a native callback; it is then kept for
    :func:`release`, and the handler must return without raising."""
    if _depth == 0:
        return False
    _held.append(signum)
    return True


def release() -> None:
    """After a native call that may run callbacks has returned: sends the held signals again, so that their
    handlers run here, where an exception can propagate."""
    while _held and _depth == 0:
        signal.raise_signal(_held.pop(0))
