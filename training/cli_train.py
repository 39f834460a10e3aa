"""``vosrt train FAMILY --data DIR --out RUN [--config FILE] [--resume] [--amp]``.

Trains a family of the family table (e.g. ``stcn``, or its ``-lite`` variant with ``--model``) on DAVIS / YouTube-VOS
layout folders with the published schedule (see :mod:`vosrt.training.train`); ``--config`` is a JSON
object of training options overriding it, and the flags below override both. Multi-GPU / multi-node:
the same command under ``torchrun --nproc_per_node N -m vosrt.cli train ...``.
"""
from __future__ import annotations

import argparse
import json

from vosrt.sdk import families
from vosrt.sdk.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vosrt train``."""
    parser.add_argument("family", choices=[f.name for f in families.all_families() if f.recipe_module],
                        help="model family to train")
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR",
                        help="dataset folder(s): DAVIS 2016/2017 or YouTube-VOS layout (static stage: image/mask pairs); "
                             "'generated' trains stcn on clips generated on the fly")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, TensorBoard logs, config")
    parser.add_argument("--config", metavar="FILE", help="JSON object of training options (see vosrt.training.train.TrainConfig)")
    parser.add_argument("--model", help="model variant, e.g. stcn-lite (default: the family's published model)")
    parser.add_argument("--stage", choices=["main", "static"], default=None,
                        help="stcn: main training on videos (default) or static-image pre-training")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/last.pth (step, optimizer, RNG)")
    parser.add_argument("--init", metavar="CKPT", help="start from a checkpoint (published STCN weights, a vosrt "
                                                       "checkpoint) or, for 3dc-seg, ir-CSN Caffe2 .pkl backbone weights")
    parser.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    parser.add_argument("--iterations", type=int, help="number of optimizer steps")
    parser.add_argument("--batch-size", type=int, help="samples per step and process")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="training crop size (multiples of 16)")
    parser.add_argument("--workers", type=int, help="data-loading processes per training process")
    parser.add_argument("--val", metavar="DIR", help="DAVIS-layout folder to score J&F on during / after training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Build the configuration from the arguments and train."""
    from vosrt.training.models import family_of
    from vosrt.training.train import apply_overrides, default_config, load_config_file, train

    model = args.model or args.family
    if family_of(model) != args.family:
        raise UserError(f"--model {model} is a {family_of(model)} model, not {args.family}")
    file_options = {}
    if args.config:
        file_options = json.loads(open(args.config).read()) if _is_json(args.config) else {}
    stage = args.stage or file_options.get("stage", "main")
    config = default_config(model, stage)
    if args.config:
        config = load_config_file(args.config, config)
        config = apply_overrides(config, {"model": model} if args.model else {})
        if args.stage:
            config = apply_overrides(config, {"stage": args.stage})
    flags = {"iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr, "size": args.size,
             "num_workers": args.workers}
    config = apply_overrides(config, {k: v for k, v in flags.items() if v is not None})
    if args.amp:
        config = apply_overrides(config, {"amp": True})
    if family_of(config.model) != args.family:
        raise UserError(f"--config sets model {config.model}, which is not a {args.family} model")
    summary = train(args.data, args.out, config, resume=args.resume, init=args.init, val_data=args.val,
                    progress=not args.no_progress)
    logs = summary["logs"]
    if summary.get("world_size", 1) == 1 or _is_rank0():
        print(f"trained {config.model} to step {summary['step']} in {summary['seconds']:.0f} s "
              f"(loss {logs.get('loss', float('nan')):.4f}); checkpoint {summary['checkpoint']}")
        if summary["validation"]:
            print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["validation"].items()))
    return 0


def _is_json(path: str) -> bool:
    try:
        json.loads(open(path).read())
        return True
    except (OSError, ValueError):
        return False  # load_config_file reports the problem with the file's name


def _is_rank0() -> bool:
    import os
    return os.environ.get("RANK", "0") == "0"
