"""Python code that native code calls back: ONNX Runtime running vosrt's Python operators.

ONNX Runtime runs the plugin form's CPU operators (``sdk/cpu_ops.py``, through onnxruntime-extensions)
as Python callbacks on the thread that called ``InferenceSession.run``. Nothing may be raised out of such
a callback: pybind11 cannot pass an exception through ONNX Runtime's C++ frames and ends the whole
process with ``terminate``, losing the files being written and the host application with them. So:

- an exception raised by an operator's body is kept, the operator returns a placeholder, and
  :func:`release` raises the exception again once the session's run has returned, on the same thread
  (the ONNX Runtime backend calls it after every run, so the placeholder never reaches a caller);
- a stop signal that arrives while a callback runs on the main thread (the only one Python runs signal
  handlers on) is held (:func:`hold`), and :func:`release` sends it again. vosrt's handlers ask :func:`hold`;
  for the length of a run, :func:`holding` also puts a holding stand-in before every Python-code handler of
  SIGINT, SIGTERM and SIGHUP (Ctrl-C's ``KeyboardInterrupt`` of an application that installed none, or an
  application's own handler that does not ask :func:`hold`), which raised inside the callback and ended the
  process with pybind11's ``terminate called``.
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


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _stand_in(previous):
    """A handler that holds the signal while a native call runs, else hands it to ``previous``."""
    def handler(signum, frame):
        if hold(signum):
            return
        return previous(signum, frame)
    return handler


@contextlib.contextmanager
def holding():
    """Around a native call that may run callbacks (an ONNX Runtime run of a graph with vosrt's Python operators):
    a stop signal on the main thread is held for the whole call, not only while a callback's body runs. A signal
    that lands between the native code's call into Python and :func:`run_callback`'s own bookkeeping (or after
    it, before the callback returns) raised in the callback and ended the process. Handlers that do not ask
    :func:`hold` themselves (Python's own Ctrl-C handler, raising KeyboardInterrupt) are wrapped for the call and
    put back after it (see the module docstring). Call :func:`release` after."""
    global _main_depth
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        _main_depth += 1
        if _main_depth == 1:
            try:
                for signum in _STOP_SIGNALS:
                    handler = signal.getsignal(signum)
                    if callable(handler):
                        previous[signum] = handler
                        signal.signal(signum, _stand_in(handler))
            except BaseException:
                _restore(previous)
                _main_depth -= 1
                raise
    try:
        yield
    finally:
        if main:
            try:
                _restore(previous)
            finally:   # a Ctrl-C raised by a handler just put back left the depth at 1: every later signal held
                _main_depth -= 1


def _restore(previous: dict) -> None:
    """Put ``previous``'s handlers back, all of them even when a signal raises on the way (the handler of one put
    back before it raising KeyboardInterrupt): the others stayed stand-ins."""
    raised, pending = None, list(previous.items())
    while pending:
        try:
            while pending:
                signal.signal(*pending[0])   # again after a raise: it may have landed before the call
                pending.pop(0)
        except BaseException as err:
            raised = raised or err
    if raised is not None:
        raise raised


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
