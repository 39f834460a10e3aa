"""``vosrt build DIR``: build TensorRT engines for a model package (see :mod:`vosrt.export.trt_build`)."""
from __future__ import annotations

import argparse

from vosrt.export.trt_build import DEFAULT_MAX_OBJECTS, PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vosrt build``."""
    parser.add_argument("package", metavar="DIR",
                        help="model package folder (from vosrt export, with the plugin form) or a shipped "
                             "package's name (stcn-lite)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="engine precision; fp16 first writes float16 variants of the graphs (default fp32)")
    parser.add_argument("--workspace", type=int, metavar="MB", default=None,
                        help="TensorRT workspace limit in MiB (default: TensorRT's)")
    parser.add_argument("--max-memory-frames", type=int, metavar="N", default=None,
                        help="largest STCN memory bank in frames, >= 2 (default: the package's memory capacity); "
                             "sessions on these engines keep at most N frames in memory")
    parser.add_argument("--max-objects", type=int, metavar="K", default=None,
                        help=f"largest number of objects the STCN engines accept (default {DEFAULT_MAX_OBJECTS})")
    parser.add_argument("--plugin-lib", metavar="PATH", default=None,
                        help="libvosrt_plugins.so (default: $VOSRT_PLUGIN_LIB or plugins/build/trt/)")
    parser.add_argument("--embed-plugins", action="store_true",
                        help="serialise the plugin library into the engines (version-compatible engines)")


def run(args: argparse.Namespace) -> int:
    """Build the engines and record them in the package manifest."""
    from vosrt.export.trt_build import build_engines

    entry = build_engines(args.package, precision=args.precision, workspace_mb=args.workspace,
                          max_memory_frames=args.max_memory_frames, max_objects=args.max_objects,
                          plugin_lib=args.plugin_lib, embed_plugins=args.embed_plugins, progress=print)
    print(f"built {len(entry['files'])} {entry['precision']} engine(s) with TensorRT {entry['tensorrt']} for "
          f"{entry['gpu']['name']} (compute capability {entry['gpu']['compute_capability']})")
    return 0
