"""Read the tensors of a checkpoint that also holds Python objects, without running any of the file's code.

Training scripts often save more than weights: an LR scheduler, an AMP scaler's state, an ``argparse.Namespace``
of their options. ``torch.load(weights_only=True)`` refuses such a file as a whole, and loading it with
``weights_only=False`` would run whatever callables the file names (a checkpoint from the internet may name
``os.system``). This unpickler takes the middle way: the globals torch's weights-only unpickler allows
(tensor rebuilding, dtypes, ``OrderedDict`` ...) are used as they are, and every other global the file names
becomes an inert stand-in (:class:`LeftOut`), whose construction and state are dropped. So the tensors and plain
data come back, the objects do not, and nothing but torch's own rebuild functions is ever called. A file that
sets the attributes of a class (pickle's BUILD on a class object, which no torch.save writes) is refused: the
class would keep them for the whole process.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch


class LeftOut:
    """An object of a class the file names that was not loaded (its class name is ``left_out``)."""

    left_out = "?"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    # the opcodes that fill list- and dict-like objects (APPENDS, SETITEMS)
    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __setitem__(self, key, value):
        pass

    def __repr__(self) -> str:
        return f"<{self.left_out}: left out>"


def _allowed_globals() -> dict:
    """``"module.name" -> object`` of what torch's weights-only unpickler accepts (empty where this torch has no
    such table: then nothing is loaded this way)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        return dict(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        return {}


class _Module:
    """The ``pickle_module`` torch.load is given: an Unpickler whose unknown globals are :class:`LeftOut`
    stand-ins, the names of which it records in ``left_out``."""

    __name__ = "vosrt_inert_pickle"   # torch.load looks at pickle_module.__name__

    def __init__(self):
        allowed, left_out = _allowed_globals(), set()
        self.allowed, self.left_out = allowed, left_out

        class Unpickler(pickle._Unpickler):   # Python's implementation, whose BUILD can be checked
            dispatch = dict(pickle._Unpickler.dispatch)

            def find_class(self, module, name):
                key = f"{module}.{name}"
                if key in allowed:
                    return allowed[key]
                left_out.add(key)
                return type(name, (LeftOut,), {"left_out": key})

            def load_build(self):
                # BUILD on a class sets its attributes for the whole process (collections.Counter's methods
                # replaced by what the file names); no torch.save writes it, as pickle never builds a class
                if isinstance(self.stack[-2], type):
                    raise pickle.UnpicklingError(f"the file sets attributes of the class {self.stack[-2].__qualname__}")
                pickle._Unpickler.load_build(self)

            dispatch[pickle.BUILD[0]] = load_build

        self.Unpickler = Unpickler

    def load(self, file, **kwargs):   # torch's legacy (non-zip) format reads its header with pickle_module.load
        return self.Unpickler(file, **kwargs).load()


def load_inert(path: str | Path):
    """(payload, sorted names of the classes and functions left out) of the checkpoint at ``path``, read as the
    module docstring says; raises what torch.load raises for a file it cannot read at all."""
    module = _Module()
    if not module.allowed:
        raise RuntimeError("this torch has no weights-only allow list to read by")
    payload = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=module)
    return payload, sorted(module.left_out)
