"""``vosrt train FAMILY --data DIR --out RUN [--config FILE] [--resume] [--amp]``.

Trains a family of the family table (e.g. ``stcn``, or its ``-lite`` variant with ``--model``) on DAVIS / YouTube-VOS
layout folders with the published schedule (see :mod:`vosrt.training.train`); ``--config`` is a JSON
object of training options overriding it, and the flags below override both. Multi-GPU / multi-node:
the same command under ``torchrun --nproc_per_node N -m vosrt.cli train ...``.

Ctrl-C, SIGTERM or SIGHUP stop a run after saving its last complete step to ``RUN/last.pth`` (exit code
128 + signal); the same command with ``--resume`` continues it exactly.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vosrt.sdk import families
from vosrt.sdk.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vosrt train``."""
    trainable = [f for f in families.all_families() if f.recipe_module]
    models = [m for f in trainable for m in f.models]
    parser.add_argument("family", metavar="MODEL", choices=[f.name for f in trainable] + models,
                        help=f"model to train: one of {', '.join(models)} (a family name is its published model)")
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR",
                        help="dataset folder(s): DAVIS 2016/2017 or YouTube-VOS layout, their train split where they list one "
                             "(static stage: also folders of NAME.jpg + NAME.png image/mask pairs; "
                             "stem-seg also a YouTube-VIS/OVIS JSON or a KITTI-MOTS folder); 'generated' "
                             "trains stcn (main stage) or stem-seg on clips generated on the fly")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, TensorBoard logs, config")
    parser.add_argument("--config", metavar="FILE", help="JSON object of training options (see vosrt.training.train.TrainConfig)")
    parser.add_argument("--model", help="model variant when MODEL is a family name (older spelling: "
                                        "`train stcn --model stcn-lite` is `train stcn-lite`)")
    parser.add_argument("--stage", choices=["main", "static"], default=None,
                        help="stcn: main training on videos (default) or static-image pre-training")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/last.pth (step, optimizer, RNG) on "
                                                               "the run's --data, up to the run's own iterations unless "
                                                               "--iterations is given: written every save_every steps, at "
                                                               "the end, and when Ctrl-C, SIGTERM or SIGHUP stop the run")
    parser.add_argument("--init", metavar="CKPT", help="start from a checkpoint (published STCN, 3DC-Seg, D²Conv3D or "
                                                       "STEm-Seg weights, a vosrt checkpoint) or, for 3dc-seg, ir-CSN "
                                                       "Caffe2 .pkl backbone weights; "
                                                       "with --resume it is not read (the run goes on from RUN/last.pth)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    parser.add_argument("--iterations", type=int, help="number of optimizer steps")
    parser.add_argument("--batch-size", type=int, help="samples per step and process")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="training crop size (multiples of 16)")
    parser.add_argument("--workers", type=int, help="data-loading processes per training process")
    parser.add_argument("--val", metavar="DIR", help="DAVIS-layout folder to score J&F on during / after training "
                                                     "(its 'val' split where it lists one: ImageSets/2017/val.txt)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _command_with_model(args: argparse.Namespace, model: str) -> str:
    """This command line with MODEL ``model`` and no --model, quoted to paste."""
    import shlex

    words = ["vosrt", "train", model, "--data", *map(str, args.data), "--out", str(args.out)]
    for flag, value in (("--config", args.config), ("--stage", args.stage), ("--init", args.init),
                        ("--iterations", args.iterations), ("--batch-size", args.batch_size), ("--lr", args.lr),
                        ("--size", args.size), ("--workers", args.workers), ("--val", args.val)):
        if value is not None:
            words += [flag, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(words + [flag for flag, on in (("--resume", args.resume), ("--amp", args.amp),
                                                     ("--no-progress", args.no_progress)) if on])


def run(args: argparse.Namespace) -> int:
    """Build the configuration from the arguments and train."""
    from vosrt.training.models import family_of
    from vosrt.training.train import apply_overrides, default_config, load_config_file, read_resume_checkpoint, train

    named = args.family                       # a model name, or a family name (its published model)
    args.family = family_of(named)
    if args.model and named != args.family and args.model != named:
        raise UserError(f"--model {args.model} disagrees with {named}; give the model once: "
                        f"`{_command_with_model(args, args.model)}`")
    explicit = args.model or (named if named != args.family else None)   # a model named on the command line
    model = explicit or named
    if family_of(model) != args.family:
        raise UserError(f"--model {model} is a {family_of(model)} model, not {args.family}")
    file_options = {}
    if args.config:
        file_options = json.loads(open(args.config).read()) if _is_json(args.config) else {}
        if not isinstance(file_options, dict):
            file_options = {}  # load_config_file reports that the file holds no JSON object
    stage = args.stage or file_options.get("stage", "main")
    config = default_config(model, stage)
    if args.config:
        config = load_config_file(args.config, config)
        config = apply_overrides(config, {"model": explicit} if explicit else {})
        if args.stage:
            config = apply_overrides(config, {"stage": args.stage})
    flags = {"iterations": ("--iterations", args.iterations), "batch_size": ("--batch-size", args.batch_size),
             "lr": ("--lr", args.lr), "size": ("--size", args.size), "num_workers": ("--workers", args.workers)}
    for name, (flag, value) in flags.items():
        if value is not None:
            config = apply_overrides(config, {name: value}, source=flag)
    if args.amp:
        config = apply_overrides(config, {"amp": True})
    if family_of(config.model) != args.family:
        raise UserError(f"--config sets model {config.model}, which is not a {args.family} model")
    resume = False
    if args.resume:
        resume = read_resume_checkpoint(args.out)  # read once, here: train() continues from it
        _check_resume(config, args, file_options, flags, resume)
        config = _run_settings(config, resume, file_options, flags)
    if not args.config and not args.resume:  # a resumed run keeps its own schedule
        warn_cpu_time(config, args)
    summary = train(args.data, args.out, config, resume=resume, init=args.init, val_data=args.val,
                    progress=not args.no_progress)
    logs = summary["logs"]
    if summary.get("world_size", 1) > 1 and not _is_rank0():
        return 0
    if not logs and args.resume:
        print(f"nothing to train: the run in {args.out} is already at step {summary['step']} "
              f"(raise --iterations to train further); checkpoint {summary['checkpoint']}")
    else:
        print(f"trained {config.model} to step {summary['step']} in {summary['seconds']:.0f} s "
              f"(loss {logs.get('loss', float('nan')):.4f}); checkpoint {summary['checkpoint']}")
    if summary["validation"]:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["validation"].items()))
    return 0


def _check_resume(config, args, file_options: dict, flags: dict, payload: dict) -> None:
    """--resume continues a run on its data with the options it started with: data or an option given on this
    command line (MODEL, a flag, or --config) that differs from the run's would be ignored, so it is an error
    instead, which gives the command that continues the run."""
    import shlex

    from vosrt.training.models import family_of
    from vosrt.training.train import (CHECKPOINT_NAME, RESUME_SETTABLE, gone_data_hint, resume_conflicts,
                                      resumed_data_conflict)

    labels = {}
    for key, value in file_options.items():
        if key == config.family and isinstance(value, dict):
            labels.update({name: f"{name} (--config)" for name in value})
        elif key not in families.names():
            labels[key] = f"{key} (--config)"
    labels.update({name: flag for name, (flag, value) in flags.items() if value is not None})
    if args.amp:
        labels["amp"] = "--amp"
    if args.stage:
        labels["stage"] = "--stage"
    labels["model"] = "MODEL"
    run = payload.get("train_config", {})
    data = resumed_data_conflict(payload, args.data)

    def command() -> list[str]:
        # MODEL and --data cannot be left out: the command names the run's; the other options come from the run,
        # but for the ones a resumed run takes from its command (the published schedule's where it gives none)
        iterations = config.iterations if "iterations" in labels else run.get("iterations", config.iterations)
        words = ["vosrt", "train", run.get("model", config.model), "--data", *(data or args.data), "--out",
                 str(args.out), "--resume", "--iterations", str(iterations)]
        return words + (["--workers", str(config.num_workers)] if "num_workers" in labels else [])

    if "model" in run and family_of(run["model"]) != config.family:
        # said here, with the whole command: resumed_config's own refusal ends in "--resume ..."
        raise UserError(f"--resume: {Path(args.out) / CHECKPOINT_NAME} is a run of {run['model']}, not of a "
                        f"{config.family} model; continue it with `{shlex.join(command())}`")
    conflicts = resume_conflicts(config, payload, labels, Path(args.out) / CHECKPOINT_NAME)
    given = [f"{labels[name]} {_show(value)} (the run has {_show(kept)})" for name, value, kept in conflicts]
    if data is not None:
        given.insert(0, f"--data {' '.join(map(str, args.data))} (the run has {' '.join(data)}){gone_data_hint(data)}")
    if given:
        raise UserError(f"--resume continues the run in {args.out} on its data with the options it started with, but "
                        f"this command gives others: {', '.join(given)}. Continue it with `{shlex.join(command())}` (on "
                        f"resume only {', '.join(RESUME_SETTABLE)} may change; the other options are the run's), or "
                        f"start a new run from its weights: --out NEW_RUN --init {Path(args.out) / 'last.pth'}")


def _run_settings(config, payload: dict, file_options: dict, flags: dict):
    """``config`` with the run's own value (from its checkpoint ``payload``) of each option that a resumed run
    takes from its command (``RESUME_SETTABLE``: iterations, num_workers, ...) where this command gives none, by
    flag or --config: a bare ``--resume`` continues the run to its own last step, not to the published
    schedule's (150,000 steps for a run of 1,200)."""
    from vosrt.training.train import RESUME_SETTABLE, apply_overrides

    stored = payload.get("train_config", {})
    given = set(file_options) | {name for name, (flag, value) in flags.items() if value is not None}
    kept = {name: stored[name] for name in RESUME_SETTABLE if name in stored and name not in given}
    return apply_overrides(config, kept, source="--resume (the run's own options)") if kept else config


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict, bool)) or value is None else str(value)


def _is_json(path: str) -> bool:
    try:
        json.loads(open(path).read())
        return True
    except (OSError, ValueError):
        return False  # load_config_file reports the problem with the file's name


def _is_rank0() -> bool:
    import os
    return os.environ.get("RANK", "0") == "0"


CONFIGS = Path(__file__).resolve().parent / "configs"


def estimate_cpu_seconds(config) -> tuple[float, Path] | None:
    """Rough CPU wall time of ``config`` and the CPU-sized config it is scaled from: that config's
    measured seconds per step (the family table's ``cpu_reference``) times the ratios of batch size,
    crop pixels and parameter count, times the steps. None where the family has no reference."""
    import torch

    from vosrt.sdk import families
    from vosrt.training.models import build_model
    from vosrt.training.train import default_config, load_config_file

    reference = families.of_model(config.model).cpu_reference
    if reference is None or not (CONFIGS / reference[0]).is_file():
        return None
    path, seconds_per_step = CONFIGS / reference[0], reference[1]
    base = load_config_file(path, default_config(config.model, config.stage))

    def parameters(cfg) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(cfg.model, **cfg.model_overrides).parameters())

    scale = (config.batch_size / base.batch_size) * (config.size[0] * config.size[1]) / (base.size[0] * base.size[1])
    scale *= parameters(config) / parameters(base)
    return seconds_per_step * scale * config.iterations, path


def _reference_seconds(config, reference: Path) -> float:
    """The measured CPU wall time of the CPU-sized config ``reference`` (the family table's ``cpu_reference``)."""
    from vosrt.sdk import families
    from vosrt.training.train import default_config, load_config_file

    base = load_config_file(reference, default_config(config.model, config.stage))
    return families.of_model(config.model).cpu_reference[1] * base.iterations


def warn_cpu_time(config, args) -> None:
    """Without a GPU and without --config (the published, GPU-sized schedule): say how long it would take, where
    that is longer than the CPU-sized run it suggests."""
    import torch

    if torch.cuda.is_available():
        return
    if [str(d) for d in args.data] == ["generated"]:   # a family that takes no generated clips refuses the run next:
        from vosrt.sdk.errors import UserError         # its CPU-sized command, with --data generated, was refused too
        from vosrt.training.recipes import recipe_for
        try:
            recipe_for(args.family).build_dataset(config, args.data)
        except UserError:
            return
    estimate = estimate_cpu_seconds(config)
    if estimate is None:  # no CPU-sized config measured for this family: the schedule, without a time
        from vosrt.training.train import default_config

        published = default_config(config.model, config.stage)
        if (config.iterations, list(config.size), config.batch_size) != \
                (published.iterations, list(published.size), published.batch_size):
            return   # the user sized the run with --iterations, --size or --batch-size
        print(f"warning: no GPU: {config.model} without --config runs its published GPU-sized schedule "
              f"({config.iterations} steps of batch {config.batch_size} at {config.size[0]}x{config.size[1]}), far "
              f"too long for a CPU; give a smaller one with --config FILE (a JSON of options, as in "
              f"{CONFIGS}) or --iterations, --size and --batch-size", file=sys.stderr, flush=True)
        return
    seconds, reference = estimate
    if seconds <= _reference_seconds(config, reference):
        return  # no longer than the CPU-sized run it would suggest (a run sized with the flags: "roughly 0 min")
    hours = seconds / 3600
    took = f"{hours / 24:.0f} days" if hours >= 48 else f"{hours:.0f} hours" if hours >= 2 else f"{seconds / 60:.0f} min"
    # a command to paste: quoted (a --data folder with a space in its name was split into two), and in the stage
    # the estimate is for (the CPU-sized config is scaled in config.stage; without --stage it would train "main")
    import shlex

    command = ["vosrt", "train", args.family, "--data", *map(str, args.data), "--out", f"{str(args.out).rstrip('/')}-cpu",
               "--config", str(reference)] + (["--stage", config.stage] if config.stage != "main" else [])
    print(f"warning: no GPU: {config.model} without --config ({config.iterations} steps of batch "
          f"{config.batch_size} at {config.size[0]}x{config.size[1]}) would take roughly {took} on this CPU "
          f"(scaled from {reference.name}, measured on 2 cores). A CPU-sized run (in a folder of its own: this "
          f"run's saves its first step in {args.out}):\n  {shlex.join(command)}",
          file=sys.stderr, flush=True)
