"""Read the tensors of a checkpoint that also holds Python objects, without running any of the file's code.

Training scripts often save more than weights: an LR scheduler, an AMP scaler's state, an ``argparse.Namespace``
of their options. ``torch.load(weights_only=True)`` refuses such a file as a whole, and loading it with
``weights_only=False`` would run whatever callables the file names (a checkpoint from the internet may name
``os.system``). This unpickler takes the middle way: the globals torch's weights-only unpickler allows
(tensor rebuilding, dtypes, ``OrderedDict`` ...) are used as they are, and every other global the file names
becomes an inert stand-in (:class:`LeftOut`), whose construction and state are dropped. So the tensors and plain
data come back, the objects do not, and nothing but torch's own rebuild functions is ever called. A file that
sets the state of anything torch's weights-only unpickler would not (pickle's BUILD on a class or on an allowed
function, which no torch.save writes) is refused: they would keep it for the whole process. A TorchScript
archive is refused before torch.load sees it: torch hands such a file to torch.jit.load, which runs its code.
"""
from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
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
        allowed_types = {value for value in allowed.values() if isinstance(value, type)}

        class Unpickler(pickle._Unpickler):   # Python's implementation, whose BUILD can be checked
            dispatch = dict(pickle._Unpickler.dispatch)

            def find_class(self, module, name):
                key = f"{module}.{name}"
                if key in allowed:
                    return allowed[key]
                left_out.add(key)
                return type(name, (LeftOut,), {"left_out": key})

            def load_build(self):
                # BUILD sets an object's state. On a class it sets the class's attributes for the whole process
                # (collections.Counter's methods replaced by what the file names); on an allowed function, its
                # __defaults__ (torch's own _rebuild_tensor_v2 then negated every later tensor loaded, torch's
                # weights-only loads included). Allowed only where torch's weights-only unpickler allows it: a
                # Tensor, a Parameter, an OrderedDict or an object of an allowed class; and the stand-ins.
                inst = self.stack[-2]
                kind = type(inst)
                if not (kind in (torch.Tensor, torch.nn.Parameter, OrderedDict) or isinstance(inst, LeftOut)
                        or (not isinstance(inst, type) and kind in allowed_types)):
                    what = f"the class {inst.__qualname__}" if isinstance(inst, type) else \
                        f"{getattr(inst, '__qualname__', kind.__name__)}"
                    raise pickle.UnpicklingError(f"the file sets the state of {what}, which torch.save never writes")
                pickle._Unpickler.load_build(self)

            dispatch[pickle.BUILD[0]] = load_build

        self.Unpickler = Unpickler

    def load(self, file, **kwargs):   # torch's legacy (non-zip) format reads its header with pickle_module.load
        return self.Unpickler(file, **kwargs).load()


class TorchScriptFile(RuntimeError):
    """The file is a TorchScript archive (``torch.jit.save``), whose code loading it would run."""


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip holding ``constants.pkl`` or a ``code/`` folder, which
    torch.load(weights_only=False) hands to torch.jit.load whatever ``pickle_module`` it is given (its scripted
    ``__setstate__`` runs: it can write any file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_inert(path: str | Path):
    """(payload, sorted names of the classes and functions left out) of the checkpoint at ``path``, read as the
    module docstring says; raises what torch.load raises for a file it cannot read at all."""
    module = _Module()
    if not module.allowed:
        raise RuntimeError("this torch has no weights-only allow list to read by")
    if is_torchscript(path):   # torch.load hands such a file to torch.jit.load, which runs its code
        raise TorchScriptFile(f"{path} is a TorchScript archive")
    payload = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=module)
    return payload, sorted(module.left_out)
