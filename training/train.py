"""The generic training loop: schedule, checkpoints that resume exactly, logging, DDP; a family adds
its recipe (:mod:`vosrt.training.recipes`: dataset, step module, batch arguments, overlay, published
schedule, options nested under its name in the config).

    from vosrt.training.train import default_config, train
    config = default_config("stcn-lite", iterations=2000, size=(128, 224), lr=1e-4)
    train(["data/davis"], "runs/a", config)                 # or: vosrt train stcn --data ... --out ...

Config files: generic options at the top level, the family's under its name::

    {"model": "stcn-lite", "iterations": 1200, "size": [96, 96], "stcn": {"start_warm": 300}}

(the family's options are also accepted at the top level, as older files have them).

Run folder: ``config.json`` (the resolved configuration), ``last.pth`` (written every ``save_every``
steps and at the end; it also records the dataset, ``data``: a resumed run must give the same),
``checkpoints/step_NNNNNNN.pth``, ``tensorboard/`` (scalars: losses, lr, IoU, validation J&F; images:
input / truth / prediction overlays every ``image_every`` steps), ``.vosrt-train.lock`` (held while a run
trains: a second training into the folder is refused until it ends).

Validation (``--val``; a DAVIS folder's ``val`` split where it lists one) streams the videos through the
family's shipped SDK session on the torch
backend with the model in memory (:mod:`vosrt.training.validate`), at ``val_size`` (default: the
family's package resolution), so the J&F reported during training is what ``vosrt run`` + ``vosrt
eval`` give for the same checkpoint.

Exact resumption: a sample is a pure function of (seed, epoch, index) and the batch order of
(seed, epoch), so a resumed run re-enters the epoch at the batch it stopped at; the checkpoint holds the
step, the optimizer, scheduler and gradient-scaler states and the torch / numpy / python RNG states
(which data loading leaves alone: its workers' seeds come from (seed, epoch)).

Interruption: Ctrl-C (KeyboardInterrupt; under ``vosrt train`` also SIGTERM and SIGHUP) saves
``last.pth`` at the last complete step before the exception goes on, so ``--resume`` continues exactly
from there. A signal that arrives while a step updates the weights, optimizer, schedule and step count
waits for that update to finish (elsewhere it takes effect at once); a second one during the save
stops at once and leaves the previous ``last.pth``. Data-loading workers leave these signals to the
training process, which ends them (a SIGTERM sent to every process of a job no longer kills them first).
An error between steps (a frame that cannot be read, a failed validation) saves the last complete step
too; a loss that is no longer finite does not (``last.pth`` keeps the last saved step).

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the step module is wrapped in
DistributedDataParallel (nccl on GPUs, gloo on CPU); each rank takes its shard of every epoch's
permutation, ``batch_size`` is per process, and rank 0 alone logs, validates and writes checkpoints (a
validation that fails there ends every rank with its error).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from vosrt.sdk import families
from vosrt.sdk.errors import UserError
from vosrt.sdk.package import replace_file
from vosrt.training.models import (build_model, check_min_size, check_overrides, family_of, load_payload,
                                   read_checkpoint, save_checkpoint, state_dict_mismatch)
from vosrt.training.recipes import recipe_for
from vosrt.training.recipes.stcn import GENERATED  # the --data value of generated clips (re-exported)

CHECKPOINT_NAME = "last.pth"


@dataclass
class TrainConfig:
    """Everything that defines a training run: the generic options below and ``options``, the family
    recipe's (read as attributes too: ``config.top_p``). JSON files given with ``--config`` override
    fields (see the module docstring)."""

    model: str = families.names()[0]
    model_overrides: dict = field(default_factory=dict)
    stage: str = "main"                  # the recipe's stages (stcn: "main" on videos or "static" images)
    iterations: int = 150000
    batch_size: int = 4                  # per process
    lr: float = 1e-5
    weight_decay: float = 1e-7
    lr_steps: list = field(default_factory=lambda: [125000])
    gamma: float = 0.1
    size: list = field(default_factory=lambda: [384, 384])  # crop height, width (multiples of 16)
    freeze_bn: bool = True               # BatchNorm in eval() mode: running statistics as loaded, and its affine …
    bn_affine: bool = False              # … trained all the same where true (STCN: eval() mode, Adam over every weight)
    freeze_stages: int | None = None     # backbone stages (1: stem, 2: and res2, …) that do not train; None: the
                                         # recipe's published value where the run starts from weights (--init), else 0
    grad_clip: float | None = None
    repeat: int = 1                      # samples per video (or image) per epoch
    num_workers: int = 2
    seed: int = 14159265
    amp: bool = False
    log_every: int = 10
    image_every: int = 500
    save_every: int = 1000
    keep_every: int = 0                  # also keep checkpoints/step_N.pth every this many steps (0: never)
    val_every: int = 0                   # 0: validate only at the end (when a validation folder is given)
    val_videos: int = 8
    val_size: list | None = None         # validation session resolution [H, W] (default: the family's)
    options: object = None               # the recipe's options dataclass

    def __getattr__(self, name):
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"TrainConfig has no option '{name}'")

    @property
    def family(self) -> str:
        """The family of ``model`` (a name of the family table)."""
        return family_of(self.model)

    def to_dict(self) -> dict:
        """JSON-able: the generic options, and the family's nested under its name."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        values[self.family] = dataclasses.asdict(self.options)
        return values


GENERIC_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "options")

# What each generic option takes: (kind, smallest value); kinds: "int", "number", "bool", "str", "dict",
# "ints" (a list of integers), "size" (two positive integers); a "?" suffix also allows null.
_GENERIC_KINDS = {
    "model": ("str", None), "model_overrides": ("dict", None), "stage": ("str", None), "iterations": ("int", 1),
    "batch_size": ("int", 1), "lr": ("number", 0), "weight_decay": ("number", 0), "lr_steps": ("ints", 0),
    "gamma": ("number", 0), "size": ("size", 1), "freeze_bn": ("bool", None), "bn_affine": ("bool", None),
    "freeze_stages": ("int?", 0), "grad_clip": ("number?", 0),
    "repeat": ("int", 1), "num_workers": ("int", 0), "seed": ("int", 0), "amp": ("bool", None),
    "log_every": ("int", 1), "image_every": ("int", 0), "save_every": ("int", 1), "keep_every": ("int", 0),
    "val_every": ("int", 0), "val_videos": ("int", 1), "val_size": ("size?", 1),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(source: str, name: str, value, kind: str, low) -> None:
    """UserError unless ``value`` is of ``kind`` (see ``_GENERIC_KINDS``) and at least ``low``."""
    if kind.endswith("?"):
        if value is None:
            return
        kind = kind[:-1]
    at_least = "" if low is None else f" ≥ {low}"
    expected = {"int": f"an integer{at_least}", "number": f"a number{at_least}", "bool": "true or false",
                "str": "a string", "dict": "an object", "list": "a list", "ints": f"a list of integers{at_least}",
                "size": "[height, width], two positive integers"}[kind]
    ok = {"int": lambda v: _is_int(v) and (low is None or v >= low),
          "number": lambda v: _is_number(v) and (low is None or v >= low),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
          "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, (list, tuple)),
          "ints": lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) and x >= low for x in v),
          "size": lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v),
          }[kind](value)
    if not ok:
        raise UserError(f"{source}: {name} should be {expected}, got {json.dumps(value, default=repr)}")


def _option_kind(default) -> str:
    """The kind (``_check_value``) of a recipe option from its default value."""
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, str):
        return "str"
    if isinstance(default, dict):
        return "dict"
    if isinstance(default, (list, tuple)):
        return "list"
    return ""


def default_config(model: str = TrainConfig.model, stage: str = "main", **overrides) -> TrainConfig:
    """The published schedule of ``model``'s family (and ``stage``) from its recipe, with ``overrides``."""
    recipe = recipe_for(family_of(model))
    config = TrainConfig(model=model, stage=stage, options=recipe.options(), **recipe.schedule(stage))
    return apply_overrides(config, overrides)


def apply_overrides(config: TrainConfig, overrides: dict, source: str = "overrides") -> TrainConfig:
    """A copy of ``config`` with ``overrides`` applied: generic options, the family's options nested
    under its name or given flat; unknown names raise ``UserError``."""
    overrides = dict(overrides)
    model = overrides.get("model", config.model)
    try:
        family = family_of(model)
    except UserError as err:   # "unknown model '7'": said of the file or flag that gave it
        raise UserError(f"{source}: \"model\": {err}") from None
    recipe = recipe_for(family)
    options = config.options if family == config.family and config.options is not None else recipe.options()
    option_names = {f.name for f in dataclasses.fields(recipe.options)}
    nested = overrides.pop(family, None) or {}
    if not isinstance(nested, dict):
        raise UserError(f"{source}: '{family}' should hold an object of {family} training options")
    for name in families.names():
        if name != family and name in overrides:
            raise UserError(f"{source}: options for '{name}', but the model {model} is a {family} model")
    flat = {k: overrides.pop(k) for k in list(overrides) if k in option_names and k not in GENERIC_OPTIONS}
    unknown = sorted(set(overrides) - set(GENERIC_OPTIONS)) + sorted(set(nested) - option_names)
    if unknown:
        raise UserError(f"{source}: unknown training option(s) {unknown}; known: {sorted(GENERIC_OPTIONS)} and, "
                        f"for {family} (nested under \"{family}\" or at the top level), {sorted(option_names)}")

    for name, value in overrides.items():
        _check_value(source, name, value, *_GENERIC_KINDS[name])
    defaults = recipe.options()
    for name, value in {**flat, **nested}.items():
        kind = _option_kind(getattr(defaults, name))
        if kind:
            _check_value(source, f"{family} option {name}", value, kind, None)

    def plain(values):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}

    options = dataclasses.replace(options, **plain({**flat, **nested}))
    if flat or nested:
        recipe.check_options(options, source)
    config = dataclasses.replace(config, options=options, **plain(overrides))
    if "model_overrides" in overrides:  # now, naming the file or flag, rather than as a TypeError deep in the model
        check_overrides(config.model, config.model_overrides, f"{source}: model_overrides")
    return config


def load_config_file(path: str | Path, config: TrainConfig) -> TrainConfig:
    """Apply the JSON object in ``path`` to ``config``."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a JSON file" if path.is_dir() else "file not found"
        raise UserError(f"--config: {what}: {path}; give a JSON file of training options")
    try:
        overrides = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"--config {path}: not valid JSON ({err})") from None
    if not isinstance(overrides, dict):
        raise UserError(f"--config {path}: expected a JSON object of training options")
    return apply_overrides(config, overrides, source=f"--config {path}")


# ---------------------------------------------------------------------------------------------- resumption

# the options a resumed run takes from the command; every other one comes from the run's checkpoint
RESUME_SETTABLE = ("iterations", "num_workers", "log_every", "image_every", "save_every", "val_every", "keep_every")
# what a run saved before an option existed trained with (a resumed run goes on with the same weights trainable,
# which its optimizer state holds)
_BEFORE_OPTION = {"bn_affine": False, "freeze_stages": 0}
_BEFORE_FAMILY_OPTION = {"stcn": {"davis_weight": 1, "static_weights": {}}}
_RESOLVED_AT_START = ("freeze_stages",)   # None: chosen as the run starts (what it chose is the run's)   # (the same for a family's options: its epochs stay the same)


def resumed_config(config: TrainConfig, payload: dict, checkpoint_path: str | Path = CHECKPOINT_NAME) -> TrainConfig:
    """``config`` with the options stored in the training checkpoint ``payload`` (all but
    ``RESUME_SETTABLE``); UserError when the checkpoint is a run of another family."""
    stored = payload.get("train_config", {})
    stored_model = stored.get("model", payload.get("config", {}).get("model", config.model))
    if family_of(stored_model) != config.family:
        raise UserError(f"--resume: {checkpoint_path} is a run of {stored_model}, not of a {config.family} model; "
                        f"resume it with `vosrt train {stored_model} --resume ...`")
    # older checkpoints hold every family's options flat: keep this family's
    known = set(GENERIC_OPTIONS) | {config.family} | {f.name for f in dataclasses.fields(recipe_for(config.family).options)}
    kept = {k: v for k, v in stored.items() if k in known and k not in RESUME_SETTABLE}
    if stored:
        kept.update({k: v for k, v in _BEFORE_OPTION.items() if k not in stored})
        nested = stored.get(config.family) if isinstance(stored.get(config.family), dict) else {}
        kept.update({k: v for k, v in _BEFORE_FAMILY_OPTION.get(config.family, {}).items()
                     if k not in stored and k not in nested})
    return apply_overrides(config, kept)


def read_resume_checkpoint(out: str | Path) -> dict:
    """The training checkpoint ``out/last.pth`` that ``--resume`` continues (read once: pass it to
    :func:`resume_conflicts` and to :func:`train` as ``resume``); UserError when there is none or the file
    is not a checkpoint written by `vosrt train`."""
    path = Path(out) / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint to resume at {path}")
    try:
        payload = load_payload(path)
    except UserError as err:  # damaged (a copy cut short, a disk fault): said of --resume, with what can be done
        import shlex

        kept = sorted((Path(out) / "checkpoints").glob("step_*.pth"))
        fix = (f"resume from the last checkpoint kept (keep_every): `{shlex.join(['cp', str(kept[-1]), str(path)])}`, "
               f"then --resume again" if kept else "start a new run in another --out folder")
        raise UserError(f"--resume: {err}; {fix}") from None
    if not isinstance(payload, dict) or not {"state_dict", "optimizer", "step", "rng"} <= set(payload):
        raise UserError(f"--resume: {path} is not a training checkpoint of `vosrt train` (no optimizer "
                        f"state or step); start a new run folder, or pass the file with --init instead")
    return payload


def data_record(data) -> list[str]:
    """How a run's checkpoint records its dataset (``--data``): ``["generated"]``, or each folder's (or file's)
    absolute path, in order (the order of the folders orders the samples)."""
    if [str(d) for d in data] == [GENERATED]:
        return [GENERATED]
    return [str(Path(d).resolve()) for d in data]


def resumed_data_conflict(payload: dict, data) -> list[str] | None:
    """The data (:func:`data_record`) of the run whose checkpoint is ``payload`` where it is not ``data``, else
    None (also for checkpoints written before runs recorded their data). A folder that was moved is the
    same data: a recorded folder that is no longer there, given at its place in the list by its new path
    (the same name, which is there)."""
    recorded = payload.get("data")
    if recorded is None:
        return None
    given = data_record(data)
    if len(given) != len(recorded) or not all(map(_same_data, recorded, given)):
        return list(recorded)
    return None


def _same_data(recorded: str, given: str) -> bool:
    """Whether ``given`` (a resolved path, or "generated") is the recorded data ``recorded``, or ``recorded``
    moved: gone from its old path and there under the same name."""
    if recorded == given:
        return True
    old, new = Path(recorded), Path(given)
    return GENERATED not in (recorded, given) and old.name == new.name and not old.exists() and new.exists()


def gone_data_hint(recorded: list[str]) -> str:
    """A sentence for a refused resume whose recorded data folders are not all there any more: how a moved
    dataset is recognised; "" where they are."""
    gone = [path for path in recorded if path != GENERATED and not Path(path).exists()]
    return (f" ({', '.join(gone)} is not there any more: a moved dataset folder is taken for the run's when it "
            f"keeps its name)") if gone else ""


def moved_data(payload: dict, data) -> list[tuple[str, str]]:
    """``(recorded path, given path)`` of each dataset of the run whose checkpoint is ``payload`` that ``data``
    gives by a new path (see :func:`resumed_data_conflict`)."""
    recorded = payload.get("data") or []
    return [(old, new) for old, new in zip(recorded, data_record(data)) if old != new]


def check_resumed_data(payload: dict, data, out: str | Path) -> None:
    """UserError when the run whose checkpoint is ``payload`` was trained on other data than ``data`` (it would
    go on, silently, on another dataset)."""
    recorded = resumed_data_conflict(payload, data)
    if recorded is not None:
        run = " ".join(recorded)
        raise UserError(f"--resume: the run in {out} trains on --data {run}, not {' '.join(data_record(data))}: resume it "
                        f"with --data {run}, or start a new run in another --out folder (--init "
                        f"{Path(out) / CHECKPOINT_NAME} starts it from this run's weights){gone_data_hint(recorded)}")


def resume_conflicts(config: TrainConfig, payload: dict, names,
                     checkpoint_path: str | Path = CHECKPOINT_NAME) -> list[tuple[str, object, object]]:
    """``(name, value in config, value the run keeps)`` for each option of ``names`` that resuming the run
    whose checkpoint is ``payload`` (:func:`read_resume_checkpoint`) would not take from ``config`` (it
    keeps the run's)."""
    if "train_config" not in payload:
        return []
    resumed = resumed_config(config, payload, checkpoint_path)

    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return [(name, getattr(config, name), getattr(resumed, name)) for name in dict.fromkeys(names)
            if name not in RESUME_SETTABLE and plain(getattr(config, name)) != plain(getattr(resumed, name))
            and not (name in _RESOLVED_AT_START and getattr(config, name) is None)]


# ---------------------------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """torch / numpy / python RNG states as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- data

def build_dataset(config: TrainConfig, data: list[str | Path]):
    """The training sampler of ``config``'s family and stage (its recipe's) over the folders ``data``
    (or, for STCN main training, ``["generated"]``: clips generated on the fly)."""
    if not data:
        raise UserError("--data: give at least one dataset folder")
    if GENERATED in map(str, data) and len(data) > 1:   # it said "dataset folder not found: generated"
        raise UserError(f"--data: {GENERATED} trains alone (clips generated on the fly, not combined with dataset "
                        f"folders); give --data {GENERATED} only, or ./{GENERATED} for a folder of that name")
    if _generated(data) and Path(GENERATED).is_dir():
        # the word names the generated clips: a dataset folder of that name here was never read, without a word
        print(f"note: --data {GENERATED} trains on clips generated on the fly, not on the folder ./{GENERATED} here; "
              f"give --data ./{GENERATED} to train on that folder", file=sys.stderr, flush=True)
    # said here, naming the flag: the folder reader's own "dataset folder not found" did not say where it came from
    missing = [str(d) for d in data if str(d) != GENERATED and not Path(d).exists()]
    if missing:
        takes = ("expected NAME.jpg images with NAME.png masks (in the folder or folders below it), or a DAVIS / "
                 "YouTube-VOS folder (JPEGImages/)" if config.stage == "static" else
                 f"give a dataset folder (DAVIS or YouTube-VOS layout; `vosrt train --help` lists the others), or "
                 f"'{GENERATED}' for clips generated on the fly")
        raise UserError(f"--data: {', '.join(missing)}: no such file or folder; {takes}")
    size = tuple(int(s) for s in config.size)
    if len(size) != 2 or any(s % 16 for s in size):
        fit = [max(16, -(-int(s) // 16) * 16) for s in size] if len(size) == 2 else [384, 384]
        raise UserError(f"size (--size or \"size\" in the --config file): expected a height and a width, both "
                        f"multiples of 16, got {config.size}; e.g. --size {fit[0]} {fit[1]}")
    recipe = recipe_for(config.family)
    check_min_size(*size, recipe.min_size, config.model, "size (--size or \"size\" in the --config file)",
                   "--size {height} {width}")
    return recipe.build_dataset(config, data)


# where a run on generated clips sets its epoch's length (the recipes' option)
_SAMPLES_PER_EPOCH = '"samples_per_epoch" under "{}" in the --config file'


def _generated(data) -> bool:
    return [str(d) for d in data] == [GENERATED]


def _torch_seed(value: int) -> int:
    """``value`` as a torch generator seed, which takes 64 bits: a --config seed from about 1.8e13 on
    (``seed * 1000003``) ended in "Overflow when unpacking long long"; smaller ones are unchanged."""
    return int(value) % 2**64


class EpochShardSampler(torch.utils.data.Sampler):
    """Indices of one epoch: a permutation fixed by (seed, epoch), cut into ``world`` interleaved shards,
    starting after ``skip`` of this rank's batches (to re-enter an interrupted epoch)."""

    def __init__(self, length: int, seed: int, epoch: int, rank: int, world: int, batch_size: int, skip: int = 0):
        generator = torch.Generator().manual_seed(_torch_seed(int(seed) * 1000003 + int(epoch)))
        order = torch.randperm(length, generator=generator).tolist()
        per_rank = (length // (world * batch_size)) * batch_size
        self.indices = order[rank:per_rank * world:world][skip * batch_size:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _batches(loader):
    """The batches of ``loader`` (a DataLoader or its iterator); a UserError raised in a worker process (a
    frame that cannot be read) comes out with its own one-line message, not the worker's traceback that
    DataLoader wraps it in."""
    try:
        yield from loader
    except UserError as err:
        raise UserError(_worker_message(err)) from None


def _worker_message(err: UserError) -> str:
    text = str(err)
    marker = f"\n{UserError.__module__}.{UserError.__qualname__}: "
    if text.startswith("Caught ") and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def _collate(samples: list[dict]) -> dict:
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


# ---------------------------------------------------------------------------------------------- distributed

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False


def _setup_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if world <= 1:
        return _Dist(device=device)
    if cuda:
        torch.cuda.set_device(local_rank)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        created = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device,
                 initialised_here=created)


# ---------------------------------------------------------------------------------------------- the loop

def _init_weights(model: nn.Module, path: str | Path, family: str) -> None:
    """Whole-model weights (vosrt checkpoint, published state_dict) or what the family's recipe reads
    itself (3dc-seg: ir-CSN backbone weights for the encoder alone)."""
    path = Path(path)
    if path.is_dir():   # it said "file not found" of a folder that is there: a package's, a run's
        inside = [path / name for name in (CHECKPOINT_NAME, "checkpoint.pth", "weights.pt") if (path / name).is_file()]
        hint = (f"give the checkpoint in it: --init {inside[0]}" if inside else
                "give a checkpoint file (a run's last.pth, a package's weights, a published .pth)")
        raise UserError(f"--init {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise UserError(f"--init: file not found: {path}")
    try:
        if recipe_for(family).init_weights(model, path):
            return
        if path.suffix == ".pkl":
            raise UserError(f"--init {path}: Caffe2 .pkl backbone weights are not read by {family} training")
        saved, state_dict = read_checkpoint(path)
    except UserError as err:  # the file's own errors name it, not the flag that gave it
        raise UserError(str(err) if str(err).startswith("--init") else f"--init: {err}") from None
    name = model.config["model"]
    if family_of(saved["model"]) != family:
        raise UserError(f"--init {path} holds a {family_of(saved['model'])} model ({saved['model']}), not a {family} "
                        f"one: start {name} from {family} weights, or train {saved['model']} from these")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError:
        def described(config):
            overrides = {k: v for k, v in config.items() if k != "model"}
            return f"{config['model']} with model_overrides {json.dumps(overrides)}" if overrides else \
                f"{config['model']} without model_overrides"

        # there is no flag for model_overrides: say where they go, in the words of a config file. Left out: what the
        # model's loading bridges itself (a published STEm-Seg file's plain heads go into this run's D²Conv3D layers;
        # given, "d2conv_heads": [] trained the plain network instead); added: the family's options of the same name
        # (the clip length the network is built for is also the sampler's, which refused a model of 16 with 8)
        import importlib
        module = importlib.import_module(families.get(family).model_module)
        bridged = getattr(module, "BRIDGED_ON_LOAD", ())
        overrides = {k: v for k, v in saved.items() if k != "model" and k not in bridged}
        options = {"model": saved["model"], "model_overrides": overrides}
        same = {k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(recipe_for(family).options)}}
        if same:
            options[family] = same
        raise UserError(f"--init {path}: its weights do not fit the {described(model.config)}: "
                        f"{state_dict_mismatch(model.state_dict(), state_dict)}; the file holds a {described(saved)}: "
                        f"give the run the file's model and model_overrides, in the --config file: "
                        f"{json.dumps(options)}") from None


def train(data: list[str | Path], out: str | Path, config: TrainConfig, resume: bool | dict = False,
          init: str | Path | None = None, val_data: str | Path | None = None, progress: bool = True) -> dict:
    """Train ``config.model`` on the dataset folders ``data``, writing the run folder ``out``.

    ``resume`` continues from ``out/last.pth`` (exactly: step, optimizer, RNG): True reads it, a dict is
    that checkpoint already read by :func:`read_resume_checkpoint` (emptied once loaded, so that its
    tensors are not held for the whole run); without it, ``out`` must not
    hold a run already (UserError: a new run would overwrite it). ``init`` starts from
    a checkpoint (vosrt or published state_dict) or, for 3dc-seg, Caffe2 ``.pkl`` backbone weights (not
    read when resuming: the run goes on from its own weights, so its first command can be repeated with
    ``--resume``).
    ``val_data``: a DAVIS-layout folder scored with J&F (``vosrt.sdk.metrics``) every ``val_every`` steps
    and at the end. Returns a summary: final step, last logged values, wall time, checkpoint path.
    """
    ctx = _setup_distributed()
    out = Path(out)
    family = config.family
    recipe = recipe_for(family)
    checkpoint_path = out / CHECKPOINT_NAME
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run (it is created if missing)")
    payload = resume if isinstance(resume, dict) else read_resume_checkpoint(out) if resume else None
    if payload is None and checkpoint_path.is_file():
        # a new run would write over the old one's last.pth, config.json and logs
        raise UserError(f"--out {out} already holds a training run ({checkpoint_path}); continue it with --resume, "
                        f"or give another --out folder to start a new run")
    if payload is None and (out / "config.json").exists() and not _is_run_config(out / "config.json"):
        # a new run writes its configuration to that name: a file of the user's was replaced without a word
        raise UserError(f"--out {out} holds a config.json that is not a vosrt train run's, and a run writes its "
                        f"configuration to that name; give another --out folder (created if missing), or move the "
                        f"file away (a --config file is read from wherever it is)")
    if payload is not None:
        check_resumed_data(payload, data, out)
        for old, new in moved_data(payload, data) if ctx.rank == 0 else ():
            print(f"--resume: {old} is not there any more; the run goes on with {new}, of the same name, as its data",
                  file=sys.stderr)
        config = resumed_config(config, payload, checkpoint_path)
    if config.freeze_stages is None:   # resolved once, and recorded: a resumed run trains the same weights
        pretrained = init is not None and payload is None
        config = apply_overrides(config, {"freeze_stages": recipe.pretrained_frozen_stages if pretrained else 0})
    torch.manual_seed(_torch_seed(config.seed))  # the same initial weights on every rank
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    model = build_model(config.model, **config.model_overrides)
    if val_data is not None:  # now, not after the steps before the first validation
        from vosrt.training.validate import check_validation
        check_validation(model, config, val_data)
    if init is not None and payload is None:
        _init_weights(model, init, family)
    if payload is not None:
        model.load_state_dict(payload["state_dict"], strict=True)
    model.to(ctx.device)
    model.train(not config.freeze_bn)  # frozen BatchNorm: running statistics stay as loaded, the affine too …
    if (not config.freeze_bn or config.bn_affine) and \
            not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # 3DC-Seg's BatchNorms are constants (FrozenBatchNorm3d), as published: the settings changed nothing, silently
        given = ", ".join(n for n, on in (("freeze_bn false", not config.freeze_bn), ("bn_affine true", config.bn_affine))
                          if on)
        print(f"note: {given}: {config.model} has no BatchNorm that trains (its normalisation layers are frozen "
              f"constants, as published), so this changes nothing", file=sys.stderr)
    if config.freeze_bn and not config.bn_affine:   # … unless bn_affine (STCN optimises it)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for param in module.parameters():
                    param.requires_grad_(False)
    stages = recipe.backbone_stages(model)
    if config.freeze_stages > len(stages):
        raise UserError(f"freeze_stages: {config.model} has {len(stages)} backbone stage(s) that can be frozen"
                        f"{' (stem, res2, …)' if stages else ''}, got {config.freeze_stages}")
    for stage in stages[:config.freeze_stages]:
        for param in stage.parameters():
            param.requires_grad_(False)

    step_module = recipe.step_module(model, config).to(ctx.device)
    if ctx.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            broadcast_buffers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.lr_steps), gamma=config.gamma)
    use_cuda_amp = config.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)
    step = 0
    if payload is None and _generated(data) and config.repeat != 1 and hasattr(config.options, "samples_per_epoch"):
        # a new run only: one started before this was refused goes on as it began
        raise UserError(f"repeat: --data generated draws a new clip for every sample, so repeat ({config.repeat}) "
                        f"would be ignored; set the epoch's length with {_SAMPLES_PER_EPOCH.format(family)} instead")
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if "scaler" in payload and use_cuda_amp:
            scaler.load_state_dict(payload["scaler"])
        step = int(payload["step"])
        set_rng_state(payload["rng"])
        payload.clear()  # its weights and states now live in the model and optimizer: not held twice for the run
        payload = None

    dataset = build_dataset(config, data)
    steps_per_epoch = len(dataset) // (config.batch_size * ctx.world)
    if steps_per_epoch < 1:
        more = (f"raise samples_per_epoch (clips generated per epoch: {_SAMPLES_PER_EPOCH.format(family)})"
                if _generated(data) else "raise repeat (samples per video per epoch: \"repeat\" in the --config file)")
        raise UserError(f"the dataset has {len(dataset)} samples, fewer than one batch of {config.batch_size} "
                        f"× {ctx.world} process(es): lower batch_size (--batch-size) or {more}")

    writer = None
    bar = None
    run_lock = None
    if ctx.rank == 0:
        run_lock = _lock_run(out, resume=bool(resume))   # released when the run ends (the file is closed)
        if step < config.iterations or not checkpoint_path.is_file():  # a finished run keeps its config.json
            _write_run_config(out, config)
        writer = _tensorboard(out / "tensorboard")
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=config.iterations, initial=step, desc=f"train {config.model}", dynamic_ncols=True)

    def save(path: Path, rng: dict | None = None) -> None:
        save_checkpoint(path, model, model.config, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), step=step,
                        rng=rng if rng is not None else rng_state(), train_config=config.to_dict(),
                        data=data_record(data))

    started = time.time()
    last_logs: dict = {}
    validation: dict = {}
    autocast_dtype = torch.float16 if ctx.device.type == "cuda" else torch.bfloat16
    saved_step = step       # the step last.pth holds
    step_rng = rng_state()  # the RNG states at the end of the last complete step
    guard = _UpdateGuard()
    complete = True         # whether weights, optimizer, schedule and step agree (not in the middle of an update)
    try:
        guard.install()
        while step < config.iterations:
            epoch, skip = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            recipe.start_epoch(dataset, config, epoch, steps_per_epoch)
            sampler = EpochShardSampler(len(dataset), config.seed, epoch, ctx.rank, ctx.world, config.batch_size, skip)
            loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                                 num_workers=config.num_workers, collate_fn=_collate, drop_last=True,
                                                 pin_memory=ctx.device.type == "cuda",
                                                 worker_init_fn=_leave_stop_signals_to_training,
                                                 # workers' seeds from (seed, epoch), not from the global RNG: a
                                                 # resumed run re-enters mid-epoch with the RNG states it saved
                                                 generator=torch.Generator().manual_seed(
                                                     _torch_seed(int(config.seed) * 1000003 + epoch + 1)))
            for batch in _batches(_start_workers(loader)):
                with torch.autocast(ctx.device.type, dtype=autocast_dtype, enabled=config.amp):
                    loss, logs, predicted = recipe.run_step(step_module, batch, step, ctx.device)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
                complete = False
                with guard.update():  # a stop signal waits until weights, optimizer, schedule and step agree
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    last_logs = {**logs, "lr": scheduler.get_last_lr()[0]}
                    if not math.isfinite(logs["loss"]):  # every rank stops, not rank 0 alone
                        saved = f"; {checkpoint_path} holds the last saved step" if checkpoint_path.is_file() else ""
                        raise UserError(f"loss became {logs['loss']} at step {step}: lower the learning rate (lr "
                                        f"{config.lr:g}) or clip gradients (grad_clip){saved}")
                    step_rng = rng_state()
                complete = True
                if ctx.rank == 0:
                    if bar is not None:
                        bar.update(1)
                        shown = {"loss": f"{logs['loss']:.4f}"}  # and what the family's step logs besides
                        shown.update({k: f"{logs[k]:.3f}" if isinstance(logs[k], float) else str(logs[k])
                                      for k in ("iou", "instances") if k in logs})
                        bar.set_postfix(shown)
                    if writer is not None and (step % config.log_every == 0 or step == 1):
                        for name, value in last_logs.items():
                            writer.add_scalar(f"train/{name}", value, step)
                    if writer is not None and config.image_every and step % config.image_every == 0:
                        writer.add_image("train/overlay", _overlay_grid(*recipe.overlay_rows(batch, predicted)), step,
                                         dataformats="HWC")
                    if step % config.save_every == 0 or step == config.iterations:
                        save(checkpoint_path, step_rng)
                        saved_step = step
                    # on its own schedule: inside save_every's, a keep_every it does not divide lost its steps
                    if config.keep_every and step % config.keep_every == 0:
                        save(out / "checkpoints" / f"step_{step:07d}.pth", step_rng)
                if val_data is not None and config.val_every and step % config.val_every == 0 \
                        and step < config.iterations:
                    validation = _validate_on_rank0(ctx, model, config, val_data, writer, step, progress)
                    model.train(not config.freeze_bn)
                if step >= config.iterations:
                    break
        if val_data is not None:
            validation = _validate_on_rank0(ctx, model, config, val_data, writer, step, progress)
        if ctx.initialised_here:
            dist.barrier()  # the others wait for rank 0's last checkpoint and validation
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP under `vosrt train`: keep the steps done so far
        if bar is not None:
            bar.close()
        if ctx.rank == 0 and step > saved_step:
            save(checkpoint_path, step_rng)
        if ctx.rank == 0 and step > 0:
            print(f"stopped at step {step} of {config.iterations}; {checkpoint_path} holds step {step}: continue "
                  f"with the same command and --resume", file=sys.stderr, flush=True)
        raise
    except Exception:
        # an error between steps (a frame that cannot be read, a failed validation) keeps the steps done since the
        # last save, as a stop signal does; not one inside an update (a loss that became NaN: its weights are)
        if ctx.rank == 0 and complete and step > saved_step:
            try:
                save(checkpoint_path, step_rng)
            except Exception:  # noqa: BLE001 - the error that stopped the run is the one to report
                pass
            else:
                print(f"{checkpoint_path} holds step {step}, the last complete one: once the error below is "
                      f"fixed, continue with the same command and --resume", file=sys.stderr, flush=True)
        raise
    finally:
        guard.restore()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if run_lock is not None:
            run_lock.close()
        if ctx.initialised_here:
            # no barrier after an error: a rank that failed alone (a frame of its shard unreadable) waited
            # there while the others waited for its gradients, until the collective timeout (30 min)
            dist.destroy_process_group()
    return {"step": step, "logs": last_logs, "validation": validation, "seconds": time.time() - started,
            "checkpoint": str(checkpoint_path), "world_size": ctx.world}


RUN_LOCK = ".vosrt-train.lock"


def _lock_run(out: Path, resume: bool):
    """Hold ``out``'s run lock (an flock on ``out/.vosrt-train.lock``, released by the kernel when the process ends,
    so a killed run leaves none behind); UserError when another training holds it. Two trainings into one --out
    both wrote last.pth, config.json and the logs: a second `vosrt train` into a running run's folder (before its
    first save, or with --resume) went on beside it. Returns the open lock file (None where flock is missing)."""
    try:
        import fcntl
    except ImportError:   # not POSIX: no lock, as before
        return None
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / RUN_LOCK, "a+")
    except OSError as err:
        raise _unwritable_run_folder(out, err) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        who = f" (process {holder})" if holder.isdigit() else ""
        then = ("stop that run (or wait for it to end), then resume" if resume else
                "wait for that run to end or stop it, or give another --out folder")
        raise UserError(f"--out {out} is in use by another training{who}: two runs in one folder would write over "
                        f"each other's last.pth; {then}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _unwritable_run_folder(out: Path, err: OSError) -> UserError:
    return UserError(f"--out {out}: cannot write the run folder ({err.strerror or err}: {err.filename}); give a "
                     f"folder you can write, on a disk with room for the checkpoints")


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a run's ``config.json`` as :func:`_write_run_config` writes it (an earlier run in the folder
    that stopped before its first checkpoint), not a file of the user's."""
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and {"model", "model_overrides", "iterations"} <= set(written)


def _write_run_config(out: Path, config: TrainConfig) -> None:
    """Create the run folder and write its ``config.json``; UserError saying why when it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(config.to_dict(), indent=2) + "\n"
        # renamed into place: a failed write (a full disk) keeps the earlier config.json of a resumed run whole,
        # and a link planted at config.json is replaced, not written through
        replace_file(out / "config.json", lambda tmp: tmp.write_text(text))
    except OSError as err:
        raise _unwritable_run_folder(out, err) from None


class _UpdateGuard:
    """Holds a stop signal (SIGINT, SIGTERM, SIGHUP) that arrives while a step updates the weights, the
    optimizer and scheduler states and the step count, and delivers it once they agree again; elsewhere
    (data loading, the forward and backward passes, validation) it takes effect at once. Only signals
    whose handler is Python code (Ctrl-C's KeyboardInterrupt, `vosrt train`'s stop handlers) are held;
    installed from the main thread only.

    Not :func:`vosrt.sdk.native_callbacks.hold`, which holds a signal for handlers that ask it (vosrt's own and an
    embedding application's): under :func:`train` called from Python, Ctrl-C's handler is Python's, which asks
    nothing, so the guard wraps whatever handlers are installed; and it delivers the first held signal once, to
    the handler it wrapped, where ``release()`` sends every held one again through the process's handlers."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self):
        self.updating = False
        self.held: list[int] = []
        self.previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            signum = getattr(signal, name, None)
            handler = signal.getsignal(signum) if signum is not None else None
            if callable(handler):
                self.previous[signum] = handler
                signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.updating:
            self.held.append(signum)
            return
        self.previous[signum](signum, frame)

    @contextlib.contextmanager
    def update(self):
        self.updating = True
        try:
            yield
        finally:
            self.updating = False
        if self.held:
            signum = self.held[0]
            self.held.clear()
            self.previous[signum](signum, None)


def _stop_signals() -> set:
    return {getattr(signal, name) for name in _UpdateGuard.SIGNALS if hasattr(signal, name)}


def _start_workers(loader):
    """``iter(loader)``, which starts its worker processes, with the stop signals blocked meanwhile: a
    worker starts with them blocked and takes them over in :func:`_leave_stop_signals_to_training`."""
    if not loader.num_workers or not hasattr(signal, "pthread_sigmask"):
        return iter(loader)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _leave_stop_signals_to_training(worker_id: int) -> None:
    """In a DataLoader worker: the stop signals are the training process's, which saves and then ends its
    workers. Systemd and Slurm send SIGTERM to every process of a job: a worker it killed made the training
    process fail with "DataLoader worker ... is killed by signal" instead of stopping cleanly. SIGINT and
    SIGHUP are ignored; SIGTERM stays blocked and a thread takes it, ending the worker only when the training
    process sent it (DataLoader's and multiprocessing's shutdown terminate their workers that way)."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    others = _stop_signals() - {signal.SIGTERM}
    for signum in others:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on block it too

    def take_sigterm():
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)  # as DataLoader's own worker handler does for its parent's SIGTERM

    threading.Thread(target=take_sigterm, name="vosrt-worker-sigterm", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, others)


def _validate_on_rank0(ctx: _Dist, model, config, val_data, writer, step, progress: bool) -> dict:
    """Rank 0 validates while the others wait; then every rank learns whether it failed, and each ends with its
    error. (A rank that fails elsewhere leaves the others to torchrun, which ends them when its process exits;
    here the others waited in a barrier for as long as rank 0's process lived on, up to the collective timeout.)"""
    result, failure = {}, None
    if ctx.rank == 0:
        from vosrt.training.validate import validate
        try:
            result = validate(model, config, val_data, max_videos=config.val_videos, progress=progress)
            if writer is not None:
                for name, value in result.items():
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f"val/{name}", value, step)
        except Exception as err:
            failure = err
    if ctx.world > 1:
        shared = [None if failure is None else (isinstance(failure, UserError), str(failure) or type(failure).__name__)]
        dist.broadcast_object_list(shared, src=0)  # the barrier, with rank 0's error
        if shared[0] is not None and ctx.rank != 0:
            user_error, message = shared[0]
            raise (UserError if user_error else RuntimeError)(f"validation failed on rank 0: {message}")
    if failure is not None:
        raise failure
    return result


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in the train extra; training still works without it
        return None
    return SummaryWriter(str(folder))


def _overlay_grid(images: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` (0..1) on top, ground truth below, prediction at the bottom."""
    from vosrt.sdk.masks import davis_palette

    palette = davis_palette().astype(np.float32)
    rows = []
    for labels in (None, truth, pred):
        tiles = []
        for t in range(images.shape[0]):
            tile = images[t] * 255
            if labels is not None:
                colour = palette[labels[t] % 256]
                alpha = (labels[t] > 0)[..., None] * 0.5
                tile = tile * (1 - alpha) + colour * alpha
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    return np.clip(np.concatenate(rows, axis=0), 0, 255).astype(np.uint8)
