"""Ctrl-C at an exact line, for tests of what a step rolls back: a KeyboardInterrupt raised just before a
chosen line of a function runs (where a signal handler may run: between two lines), through ``sys.settrace``."""
from __future__ import annotations

import contextlib
import linecache
import sys


@contextlib.contextmanager
def ctrl_c_at(function, line_start: str):
    """Ctrl-C's KeyboardInterrupt landing in ``function`` just before its first line that starts with
    ``line_start`` runs, once. Yields a list that holds the line number once it has fired."""
    fired = []

    def local(frame, event, arg):
        if event == "line" and not fired and \
                linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip().startswith(line_start):
            fired.append(frame.f_lineno)
            raise KeyboardInterrupt(f"injected before {line_start!r}")
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code is function.__code__ else None)
    try:
        yield fired
    finally:
        sys.settrace(None)
