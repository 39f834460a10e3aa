"""The ``vosrt`` command: a thin router over the subcommands that live beside the code they drive.

Each subcommand is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``. The router
sits above ``sdk``/``training``/``export`` so that no layer imports a higher one; a subcommand whose
module needs an extra that is not installed is still listed, and says which extra to install.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading

from vosrt import __version__
from vosrt.sdk import native_callbacks
from vosrt.sdk.errors import UserError, install_command

# name -> (module, one-line help, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "demo": ("vosrt.sdk.cli_demo", "segment a generated clip with a shipped demo model (CPU)", None),
    "run": ("vosrt.sdk.cli_run", "stream a video / camera / folder through a model package", None),
    "live": ("vosrt.sdk.cli_live", "live camera / stream in the browser: pick objects with the mouse", None),
    "eval": ("vosrt.sdk.cli_eval", "score predictions against ground truth (J&F, VIS AP, MOTS HOTA)", None),
    "bench": ("vosrt.sdk.cli_bench", "time a model package per stage (optionally against torch)", None),
    "train": ("vosrt.training.cli_train", "train a stcn / 3dc-seg / stem-seg model", "train"),
    "export": ("vosrt.export.cli_export", "export a checkpoint to a model package (ONNX)", "export"),
    "check": ("vosrt.export.cli_check", "compare a package's graphs with the PyTorch model", "export"),
    "quantize": ("vosrt.export.cli_quantize", "INT8 copy of a package, calibrated on a video or folder", "export"),
    "build": ("vosrt.export.cli_build", "build TensorRT engines into a model package", "trt"),
}


def _extras_providing(module: str) -> list[str]:
    """The extras of vosrt's installed metadata whose requirements provide the import ``module``."""
    from importlib import metadata

    try:
        requirements = metadata.requires("vosrt") or []
    except metadata.PackageNotFoundError:
        return []
    extras = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        project = re.split(r"[<>=!~\[ ]", name.strip(), maxsplit=1)[0].lower()
        import_name = project.removesuffix("-python").replace("-", "_")
        found = re.search(r"extra\s*==\s*['\"]([\w-]+)['\"]", marker)
        if found and import_name == module and found.group(1) not in extras:
            extras.append(found.group(1))
    return extras


def install_hint(command: str, missing: str) -> str:
    """The error for a command that needs the package ``missing``: which extra installs it."""
    top = missing.split(".")[0]
    extras = _extras_providing(top)
    own = COMMANDS[command][2] if command in COMMANDS else None
    extra = own if own in extras else (extras[0] if extras else None)
    hint = install_command(extra) if extra else f"pip install {top}"
    return f"`vosrt {command}` needs the Python package '{top}', which is not installed: {hint}"


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
            modules[name] = (None, install_hint(name, module.name))
        else:
            module.add_arguments(p)
            modules[name] = (module, None)
    return parser, modules


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled like Ctrl-C (work stops, files are finished), exit code 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    if native_callbacks.hold(signum):  # inside a Python operator of ONNX Runtime: raised once its run returns
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped(signum)


def _quiet_opencv() -> None:
    """Silence OpenCV's own log lines in the command line: opening a camera that is not there printed about ten
    (each capture backend's probe, a multi-line exception) before vosrt's one-line error saying the same. Left as
    they are where ``OPENCV_LOG_LEVEL`` is set (``OPENCV_LOG_LEVEL=INFO vosrt ...`` shows them); FFmpeg's own
    messages, such as a video's decoding errors, are not OpenCV's and still show."""
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except (ImportError, AttributeError):   # an OpenCV without its logging module: its lines stay
        pass


def _handle_stop_signals() -> None:
    # What docker, systemd and Kubernetes send to stop a process (SIGHUP: a closed terminal), and Ctrl-C.
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop)


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
    _handle_stop_signals()
    _quiet_opencv()
    try:
        return int(module.run(args) or 0)
    except Stopped as stop:
        print(f"stopped by {signal.Signals(stop.signum).name}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        # A dependency imported only when the command runs (torch for export, check, train).
        if not err.name or err.name.startswith("vosrt"):
            raise
        print(f"error: {install_hint(args.command, err.name)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
