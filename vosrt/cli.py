"""The ``vosrt`` command: a thin router over the subcommands that live beside the code they drive.

Each subcommand is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``. The router
sits above ``sdk``/``training``/``export`` so that no layer imports a higher one; a subcommand whose
module needs an extra that is not installed is still listed, and says which extra to install.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from vosrt import __version__
from vosrt.sdk.errors import UserError

# name -> (module, one-line help, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "demo": ("vosrt.sdk.cli_demo", "segment a generated clip with a shipped demo model (CPU)", None),
    "run": ("vosrt.sdk.cli_run", "stream a video / camera / folder through a model package", None),
    "live": ("vosrt.sdk.cli_live", "live camera / stream in the browser: pick objects with the mouse", None),
    "eval": ("vosrt.sdk.cli_eval", "J&F of predicted masks against ground truth (DAVIS protocol)", None),
    "bench": ("vosrt.sdk.cli_bench", "time a model package per stage (optionally against torch)", None),
    "train": ("vosrt.training.cli_train", "train stcn / 3dc-seg on DAVIS-layout data", "train"),
    "export": ("vosrt.export.cli_export", "export a checkpoint to a model package (ONNX)", "export"),
    "check": ("vosrt.export.cli_check", "compare a package's graphs with the PyTorch model", "export"),
    "build": ("vosrt.export.cli_build", "build TensorRT engines into a model package", "trt"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only a missing third-party dependency is reported as such; a missing vosrt module means
        # the command is not part of this build.
        if err.name and not err.name.startswith("vosrt"):
            return err
        if err.name == module_name:
            return None
        raise


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="vosrt",
        description="Video object segmentation deployment: export, build engines, stream video.",
    )
    parser.add_argument("--version", action="version", version=f"vosrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text, extra) in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        if isinstance(module, ModuleNotFoundError):
            hint = f"pip install 'vosrt[{extra}]'" if extra else "reinstall vosrt"
            modules[name] = (None, f"`vosrt {name}` needs the Python package "
                                   f"'{module.name}', which is not installed: {hint}")
        else:
            module.add_arguments(p)
            modules[name] = (module, None)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    module, problem = modules[args.command]
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
