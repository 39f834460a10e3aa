"""The one exception type for bad user input, shared by every layer, and the install command that the
messages about a missing optional dependency name."""
from __future__ import annotations

import shlex
from pathlib import Path


class UserError(ValueError):
    """Bad input from the user (an argument, a file, an array): the message says which input, what
    was expected and what arrived. The CLI prints it without a traceback; sessions stay usable."""


class FrameError(UserError):
    """A frame a session refuses (not an ``[H, W, 3]`` image, a wrong dtype, NaN values...): the frame
    alone is bad, not the session or its settings, so a stream can skip it and go on
    (:func:`vosrt.sdk.streaming.stream` does)."""


def first_few(names, count: int = 5) -> str:
    """The first ``count`` of ``names``, comma-separated, with " ..." where there are more: the lists of files,
    frames and sequences that messages name."""
    names = [str(name) for name in names]
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "")


def is_whole(value) -> bool:
    """Whether ``value`` is a whole number as the settings take it: a Python or numpy integer, not a bool (a
    float such as 2.0, a string "3" or True are not: a setting is never truncated or converted)."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """Whether ``value`` is a real number as the settings take it: a Python or numpy integer or float, not a bool
    (a string "0.3" or None are not)."""
    import numpy as np

    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def install_command(extra: str) -> str:
    """The pip command that adds the optional dependencies ``extra`` (a pyproject extra: train, export,
    eval, gpu, trt, live, dev) to this vosrt. Installed from a source checkout (the README's
    ``pip install -e``), vosrt names that checkout, since ``pip install 'vosrt[extra]'`` would look for
    vosrt on PyPI instead; otherwise the package name."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "setup.py").is_file() and \
            (checkout / "sdk" / "errors.py").is_file():
        return f"pip install -e {shlex.quote(f'{checkout}[{extra}]')}"
    return f"pip install 'vosrt[{extra}]'"
