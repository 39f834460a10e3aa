"""Progress shown during long work: one bar (or one line a second) per loop, one line per step.

    bar = Progress(total=frames, unit="frame")    # tqdm when installed, else a line every second
    bar.update(postfix="12.3 FPS"); bar.close()
    say(progress, "exporting segment")             # progress: a callable taking a line, or None
"""
from __future__ import annotations

import sys
import time
from typing import Callable

Reporter = Callable[[str], None] | None


def say(progress: Reporter, message: str) -> None:
    """Pass one line to ``progress`` (e.g. ``print``) when it is given."""
    if progress is not None:
        progress(message)


class Progress:
    """A progress bar on stderr: tqdm when installed, else a line every second. ``enabled=False``
    shows nothing."""

    def __init__(self, total: int | None = None, unit: str = "frame", enabled: bool = True, desc: str | None = None):
        self.bar = None
        self.count = 0
        self.unit = unit
        self.enabled = enabled
        self.last = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.last >= 1.0:
            self.last = time.perf_counter()
            print(f"  {self.count} {self.unit}s" + (f", {postfix}" if postfix else ""), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
