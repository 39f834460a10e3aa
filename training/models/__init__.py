"""Model registry and checkpoints.

``build_model(name, **overrides)`` builds any model of the family table (``vosrt.sdk.families``: each
row names its models and its ``model_module``). Each family module provides ``build(variant, **overrides)`` returning an nn.Module whose ``config`` attribute
is a JSON-able dict holding at least ``{"model": name, **overrides}``, and
``matches_state_dict(state_dict) -> bool`` recognising that family's published/bare state_dicts; optionally
``adapt_state_dict(state_dict) -> state_dict`` (a published file's names mapped to the module's own, others
unchanged) and ``config_from_state_dict(state_dict) -> overrides`` (the configuration read off the weights).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from vosrt.sdk import families
from vosrt.sdk.errors import UserError
from vosrt.sdk.package import replace_file

CHECKPOINT_FORMAT = "vosrt-checkpoint"


def check_min_size(height: int, width: int, smallest: int, model: str, what: str, fix: str) -> None:
    """UserError when ``height`` or ``width`` is below ``smallest``, the least a model's layers take
    (stem-seg's decoder pools; its ``min_size``): ``what`` names the setting (``--size``), ``fix`` is how to
    give it, formatted with the nearest valid ``height`` and ``width`` (``--size {height} {width}``)."""
    if min(height, width) < smallest:
        raise UserError(f"{what}: {model} takes inputs of at least {smallest}x{smallest}, got {height}x{width}; "
                        f"give {fix.format(height=max(height, smallest), width=max(width, smallest))}")


def family_of(name: str) -> str:
    """The family name of model ``name`` (``stcn-lite`` -> ``stcn``); UserError for an unknown one."""
    return families.of_model(name).name


def variant_config(config_class, variants: dict, name: str, overrides: dict, label: str):
    """``variants[name]`` (a config dataclass of ``config_class``) with ``overrides`` applied; JSON lists
    become tuples where the field is a tuple. UserError for an unknown variant or field."""
    from dataclasses import asdict, fields

    if name not in variants:
        raise UserError(f"unknown {label} variant {name!r}: expected one of {', '.join(variants)}")
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"{name}: unknown config field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    values = asdict(variants[name])
    for key, value in overrides.items():
        values[key] = tuple(value) if isinstance(values[key], tuple) else value  # JSON gives lists
    return config_class(**values)


def _model_module(name: str):
    family = families.of_model(name)
    if family.model_module is None:
        raise UserError(f"model '{name}': the {family.name} family has no training model module")
    return importlib.import_module(family.model_module)


def build_model(name: str, **overrides) -> torch.nn.Module:
    """Build a model by name with random weights. ``overrides`` change config fields (widths, depths…);
    a value of the wrong kind raises UserError (:func:`check_overrides`)."""
    check_overrides(name, overrides, f"model {name}")
    return _model_module(name).build(name, **overrides)


def check_overrides(name: str, overrides: dict, source: str) -> None:
    """UserError naming ``source`` for an override that is not a config field of model ``name`` (its
    module's ``VARIANTS``) or whose value is not of the field's kind: an integer ≥ 1 (≥ 0 where the default
    is 0), a number (> 0 where the default is), true or false, a string, or a list of these as the default
    holds."""
    import dataclasses
    import json
    import math

    variants = getattr(_model_module(name), "VARIANTS", None)
    if not isinstance(variants, dict) or not dataclasses.is_dataclass(variants.get(name)):
        return
    defaults = {f.name: getattr(variants[name], f.name) for f in dataclasses.fields(variants[name])}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise UserError(f"{source}: unknown config field(s) {', '.join(unknown)} of {name}; expected some of "
                        f"{', '.join(sorted(defaults))}")

    def kind(default):
        """(test, what it takes, the same in the plural) for values of ``default``'s kind, or None."""
        if isinstance(default, bool):
            return lambda v: isinstance(v, bool), "true or false", "true or false values"
        if isinstance(default, int):
            low = 0 if default == 0 else 1
            return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
                    f"an integer ≥ {low}", f"integers ≥ {low}")
        if isinstance(default, float):
            positive = default > 0
            return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > 0 or not positive), "a number > 0" if positive else "a number",
                    "numbers > 0" if positive else "numbers")
        if isinstance(default, str):
            return lambda v: isinstance(v, str), "a string", "strings"
        if isinstance(default, (list, tuple)):
            item = kind(default[0]) if default else None
            if item is None:
                return lambda v: isinstance(v, (list, tuple)), "a list", "lists"
            return (lambda v: isinstance(v, (list, tuple)) and all(item[0](x) for x in v), f"a list of {item[2]}",
                    f"lists of {item[2]}")
        return None

    for key, value in overrides.items():
        expected = kind(defaults[key])
        if expected is not None and not expected[0](value):
            raise UserError(f"{source}: {key} should be {expected[1]}, got {json.dumps(value, default=repr)}")


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict | None = None, **extra) -> None:
    """Save ``model`` with the config that rebuilds it (default ``model.config``); ``extra`` entries
    (optimizer state, step, …) are stored beside it for training resumption.

    The file is written beside ``path`` and renamed over it once complete, so an interrupted save (Ctrl-C,
    a full disk, a killed job) leaves the previous checkpoint at ``path`` intact. A file that cannot be
    written (a full disk, no permission, a file size limit) raises UserError saying why and what to do."""
    config = dict(config if config is not None else model.config)
    if "model" not in config:
        raise ValueError(f"config must name the model ('model': one of {', '.join(families.model_names())})")
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "config": config,
               "state_dict": model.state_dict(), **extra}
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            writer = _WriteErrorRecorder(file)
            try:
                torch.save(payload, writer)
            except RuntimeError:
                if writer.error is not None:  # torch reports a failed write as "unexpected pos", without why
                    raise writer.error from None
                raise

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, write)
    except OSError as err:
        raise UserError(_write_failure(path, err, _tensor_bytes(payload))) from None


class _WriteErrorRecorder:
    """A file for ``torch.save`` that keeps the OSError of a failed write (torch replaces it with its own
    RuntimeError, which does not say why)."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self):
        try:
            self.file.flush()
        except OSError as err:
            self.error = self.error or err
            raise


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _write_failure(path: Path, err: OSError, size: int) -> str:
    """One line: which checkpoint could not be written, why, and what to do."""
    import errno
    import shutil

    kept = f"; {path} still holds the previous checkpoint" if path.is_file() else ""
    folder = path.parent
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free, "
        except OSError:
            free = ""
        return (f"cannot write checkpoint {path}: no space left on its disk ({free}the checkpoint takes about "
                f"{size / 2**20:.0f} MiB); free some space or write it to another disk{kept}")
    if err.errno == errno.EFBIG:
        return (f"cannot write checkpoint {path}: the file would exceed the size limit of this process or file "
                f"system (about {size / 2**20:.0f} MiB to write; see `ulimit -f`); write it elsewhere{kept}")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write checkpoint {path}: no permission to write in {folder} ({err.strerror}); write it elsewhere{kept}"
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
    return f"cannot write checkpoint {path}: {err.strerror or err}{where}{kept}"


def _strip_prefix(state_dict: dict) -> dict:
    # checkpoints saved from DataParallel / DistributedDataParallel prefix every key with "module."
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def state_dict_mismatch(expected: dict, found: dict, shown: int = 3) -> str:
    """A short account of how the state_dict ``found`` differs from ``expected`` (a few names of each kind)."""
    def names(keys):
        keys = sorted(keys)
        return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")

    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    resized = [k for k in sorted(set(expected) & set(found)) if tuple(expected[k].shape) != tuple(found[k].shape)]
    parts = [f"{len(missing)} missing ({names(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({names(unexpected)})" if unexpected else "",
             f"{len(resized)} of another shape (" + ", ".join(
                 f"{k}: {list(found[k].shape)} in the file, {list(expected[k].shape)} here" for k in resized[:shown])
             + (", ..." if len(resized) > shown else "") + ")" if resized else ""]
    return "; ".join(p for p in parts if p) or "they do not load"


def load_payload(path: str | Path):
    """``torch.load`` of a checkpoint file restricted to tensors and plain data (``weights_only``); a
    file that is not one raises UserError saying why, in one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        text = str(err)
        if path.stat().st_size == 0:   # torch said only "EOFError"
            reason = "the file is empty (0 bytes)"
        elif isinstance(err, EOFError) or "unexpected EOF" in text:
            # a pickle (torch's older format) cut short: torch's message is empty, or "unexpected EOF, expected
            # N more bytes" where the cut falls in the tensors' data
            reason = "the file ends early (cut short: an interrupted download or copy?)"
        elif "failed reading zip archive" in text or "failed finding central directory" in text:
            # a torch.save zip cut short or damaged; torch's message continues with a paragraph on miniz
            reason = ("the file is a damaged or cut-short torch.save archive (an interrupted download or copy?): "
                      + text.split(". This is an internal miniz error")[0].strip().splitlines()[0])
        elif "Unsupported operand" in text or isinstance(err, KeyError):
            # (a KeyError: bytes the unpickler read as a reference to an object it never saw, e.g. a text file)
            # the weights-only unpickler met bytes no torch.save writes (a text file, a truncated or raw pickle):
            # torch's message speaks of weights_only there too, which read as the file holding Python objects
            reason = "its content is not what torch.save writes (another kind of file, or one cut short)"
        elif "weights_only" in text or "Unsupported global" in text:
            # Never repeat torch's advice to load with weights_only=False: that runs the file's code. Read the
            # tensors and plain data, with the objects (a training script's scheduler, AMP state, options) left out
            # and none of their code run (inert_pickle).
            from vosrt.training.models.inert_pickle import TorchScriptFile, load_inert
            try:
                payload, left_out = load_inert(path)
            except TorchScriptFile:
                raise UserError(f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint: vosrt does not "
                                "load TorchScript, whose code would run; give the model's state_dict saved with "
                                "torch.save") from None
            except Exception:   # noqa: BLE001 - whatever torch raises: the file is not readable this way either
                payload, left_out = None, []
            if left_out:
                shown = ", ".join(left_out[:4]) + (", ..." if len(left_out) > 4 else "")
                print(f"note: {path} holds Python objects besides its tensors ({shown}); vosrt read its tensors and "
                      f"plain data and left those out, running none of the file's code", file=sys.stderr)
                return payload
            reason = "it holds Python objects besides tensors and plain data, which vosrt does not unpickle"
        else:
            reason = (text.strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path} is not a PyTorch checkpoint that can be read safely: {reason}") from None


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(config, state_dict) of a vosrt checkpoint or a bare published state_dict (family from its keys)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    payload = load_payload(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return dict(payload["config"]), _strip_prefix(payload["state_dict"])
    # training scripts often wrap the weights: STEm-Seg, 3DC-Seg and D²Conv3D under "model", STCN's training
    # checkpoint (model/model.py save_checkpoint, beside "it", "optimizer", "scheduler") under "network"
    for wrapper in ("state_dict", "model", "network"):
        if isinstance(payload, dict) and isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict = _strip_prefix(payload)
        for family in families.all_families():
            if family.model_module is None:
                continue
            module = importlib.import_module(family.model_module)
            # a family whose published files wrap or name the network otherwise maps them to its own names first
            candidate = module.adapt_state_dict(state_dict) if hasattr(module, "adapt_state_dict") else state_dict
            if module.matches_state_dict(candidate):
                # a family whose published checkpoints come in several configurations reads it off the weights
                overrides = module.config_from_state_dict(candidate) if hasattr(module, "config_from_state_dict") else {}
                return {"model": family.full_model, **overrides}, candidate
        sample = ", ".join(list(state_dict)[:5])
        raise UserError(f"{path}: a state_dict of no known model (first keys: {sample}); "
                        f"expected a checkpoint of one of the families {', '.join(families.names())}")
    held = f" (keys: {', '.join(map(str, list(payload)[:8]))})" if isinstance(payload, dict) else ""
    raise UserError(f"{path}: expected a vosrt checkpoint or a model state_dict, got {type(payload).__name__}{held}")


def load_checkpoint(path: str | Path, family: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Build the model a checkpoint describes and load its weights strictly. Returns (model, config).

    ``family`` (a family name), when given, rejects a checkpoint of another family with a clear error.
    """
    config, state_dict = read_checkpoint(path)
    name = config["model"]
    if family is not None and family_of(name) != family:
        raise UserError(f"{path} holds a '{family_of(name)}' model ({name}), but a '{family}' model was asked for")
    overrides = {k: v for k, v in config.items() if k != "model"}
    model = build_model(name, **overrides)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError:   # a few names of each kind: torch's message lists every key
        raise UserError(f"{path}: weights do not fit model '{name}': "
                        f"{state_dict_mismatch(model.state_dict(), state_dict)}") from None
    model.eval()
    return model, config
