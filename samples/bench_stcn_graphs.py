"""Per-graph time and peak memory of an STCN package with the memory bank full, per backend and form.

    python samples/bench_stcn_graphs.py PKG [PKG2 ...] [--objects 2] [--memory-frames 20] [--threads 2] [--ceiling]

For each package, every configuration (ONNX Runtime portable form, ONNX Runtime plugin form on vosrt's
CPU operators where the package has it, and the torch backend where the package carries its weights and torch is
installed, an INT8 package excepted: its weights are the fp32 ones) runs in its own process, so each peak RSS is that configuration's alone. Each graph is called on the
same inputs: one frame's key encoding, one value encoding of ``--objects`` masks, and one segment call
reading a memory of ``--memory-frames`` frames (the bank at capacity). Times are the median of
``--repeat`` calls after three warm-up calls, as wall and process CPU seconds; ratios are against the first
configuration of the first package, measured in this run. The machine's load average is printed, since
on a shared host it moves every figure. A configuration that fails is left out of the table with its error
printed, and the run ends with status 1.

``--ceiling`` also measures, in this run, what fp32 arithmetic allows: the floating-point operations of
one frame of each package's network (``torch.utils.flop_counter`` on the model its manifest names,
at its size; the affinity counted as 2·N·M·Ck) divided by the rate of a large fp32 MatMul in ONNX Runtime
on the same threads (measured before and after the configurations, the better kept). An fp32 backend that ran every operation at that rate would take that long for a
frame, so it estimates the best fp32 ratio against the torch backend (a row at about 100% of the rate
has nothing left to win in fp32); an INT8 package is not bound by it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


WARMUP = 3   # untimed calls per graph before the timed ones


def _inputs(backend, package, objects: int, memory_frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.random((1, 3, package.height, package.width), dtype=np.float32)
    key = {k: np.asarray(backend.download(v)) for k, v in backend.run("encode_key", {"image": image}).items()}
    masks = (rng.random((objects, 1, package.height, package.width)) > 0.5).astype(np.float32)
    value_feeds = {"image": image, "f16": key["f16"], "masks": masks}
    value = np.asarray(backend.download(backend.run("encode_value", value_feeds)["value"]))  # [O, Cv, (1,) h, w]
    h, w = key["key"].shape[-2:]
    n = memory_frames * h * w
    mem_key = np.repeat(key["key"].reshape(1, -1, h * w), memory_frames, axis=2)
    mem_key += 0.1 * rng.standard_normal(mem_key.shape, dtype=np.float32)
    mem_value = np.repeat(value.reshape(objects, -1, h * w), memory_frames, axis=2)
    segment_feeds = {"mem_key": mem_key.astype(np.float32), "mem_value": mem_value.astype(np.float32),
                     "query_key": key["key"], "f16_thin": key["f16_thin"], "f8": key["f8"], "f4": key["f4"]}
    assert mem_key.shape[2] == n
    return {"encode_key": {"image": image}, "encode_value": value_feeds, "segment": segment_feeds}


def _measure(path: str, backend_name: str, form: str, objects: int, memory_frames: int, threads: int,
             repeat: int, arena: bool = False) -> dict:
    from vosrt.sdk.backends import open_backend
    from vosrt.sdk.package import load_package

    package = load_package(path)
    options = {"threads": threads, "device": "cpu"}
    if backend_name == "onnxruntime":
        options["form"] = form
        options["memory_arena"] = arena
    backend = open_backend(package, backend_name, **options)
    feeds = _inputs(backend, package, objects, memory_frames)
    result = {"describe": backend.describe(), "graphs": {}, "mem_every": int(package.streaming["mem_every"]),
              "size": f"{package.height}x{package.width}", "precision": "INT8" if package.quantization else "fp32"}
    for graph, graph_feeds in feeds.items():
        for _ in range(WARMUP):   # torch's first calls set up its kernels: one warm-up left the third call ~8x slow
            backend.run(graph, graph_feeds)
        walls, cpus = [], []
        for _ in range(repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            backend.run(graph, graph_feeds)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        result["graphs"][graph] = {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _check_package(path: str) -> None:
    """UserError unless ``path`` is an STCN package, before anything is timed (a bad one was a traceback)."""
    from vosrt.sdk.errors import UserError
    from vosrt.sdk.package import load_package

    package = load_package(path)
    if package.family != "stcn":
        raise UserError(f"{path}: a {package.family} package; this benchmark times the graphs of an stcn package "
                        f"(vosrt bench {path} times any family)")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:   # a module set to None in sys.modules: imports of it fail
        return False


def _configurations(path: str) -> list[tuple[str, str]]:
    from vosrt.sdk.package import load_package

    package = load_package(path)
    configs = [("onnxruntime", "portable")]
    if "plugin" in package.graphs["segment"]:
        configs.append(("onnxruntime", "plugin"))
    # The torch backend rebuilds the model from the checkpoint the manifest records (weights.pt for
    # --random-weights packages, checkpoint.pth for the shipped stcn-lite, or the exported-from file).
    # Not for an INT8 package: its checkpoint is the fp32 one it was quantized from, so its torch row would time
    # the fp32 network again under the INT8 package's name.
    # Nor without torch (a base install): the row's child failed with a traceback, and the run ended with status 1.
    if (package.checkpoint is not None and package.checkpoint.is_file() and package.quantization is None
            and _importable("torch")):
        configs.append(("torch", "-"))
    return configs


def _frame_flops(path: str, objects: int, memory_frames: int) -> float:
    """Floating-point operations of one frame (key encoding + segment + a value encoding every
    ``streaming.mem_every`` frames of the package)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vosrt.sdk.package import load_package
    from vosrt.training.models import build_model

    package = load_package(path)
    config = json.loads((package.path / "manifest.json").read_text())["config"]
    model = build_model(config["model"], **{k: v for k, v in config.items() if k != "model"}).eval()
    height, width = package.height, package.width
    counts = {}
    with torch.no_grad():
        frame = torch.rand(1, 3, height, width)
        with FlopCounterMode(display=False) as counter:
            key, f16_thin, f16, f8, f4 = model.encode_key(frame)
        counts["encode_key"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.encode_value(frame, f16, torch.rand(objects, 1, height, width))
        counts["encode_value"] = counter.get_total_flops()
        readout = torch.rand(objects, model.dims["value_dim"], height // 16, width // 16)
        with FlopCounterMode(display=False) as counter:
            model.segment(readout, f16_thin, f8, f4)
        m = (height // 16) * (width // 16)
        counts["segment"] = counter.get_total_flops() + 2 * memory_frames * m * m * model.dims["key_dim"]
    return counts["encode_key"] + counts["segment"] + counts["encode_value"] / int(package.streaming["mem_every"])


def _matmul_rate(threads: int, size: int = 2048, repeat: int = 5) -> float:
    """fp32 FLOP/s of a size³ MatMul in ONNX Runtime on ``threads`` threads (the best of ``repeat``)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vosrt.sdk.backends.onnxruntime import session_options

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((size, size), dtype=np.float32) for n in "ab"}
    session.run(None, feeds)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def _per_frame(result: dict, clock: str) -> float:
    """Seconds of one frame: one key encoding and one memory read; a value encoding every mem_every frames
    (the package's streaming.mem_every; 5 by default)."""
    graphs = result["graphs"]
    return graphs["encode_key"][clock] + graphs["segment"][clock] + graphs["encode_value"][clock] / result["mem_every"]


def _percent(share: float) -> str:
    """``share`` as a percentage, with two significant digits below 1%: a row far off the rate (a small model's
    torch row, all overhead) printed "runs at 0% of that rate", as if it never finished a frame."""
    return f"{share:.0%}" if share >= 0.01 else f"{share * 100:.2g}%"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="+", metavar="PKG", help="STCN package folder or shipped package name")
    parser.add_argument("--objects", type=int, default=2, help="objects in memory (default 2)")
    parser.add_argument("--memory-frames", type=int, default=20,
                        help="memory frames the segment graph reads (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per configuration (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per graph, median (default 3)")
    parser.add_argument("--arena", action="store_true",
                        help="ONNX Runtime rows with its CPU memory arena on (vosrt turns it off), to compare RSS")
    parser.add_argument("--ceiling", action="store_true",
                        help="also measure the fp32 arithmetic ceiling of the first package: its FLOPs per frame "
                             "over the rate of a large fp32 MatMul in ONNX Runtime, measured in this run")
    parser.add_argument("--only", nargs=2, metavar=("BACKEND", "FORM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # checked here: a bad value failed in every configuration's child, and the run still ended with status 0
    for flag in ("objects", "memory_frames", "threads", "repeat"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a whole number >= 1, got {getattr(args, flag)}")
    if args.only:
        print(json.dumps(_measure(args.packages[0], *args.only, args.objects, args.memory_frames, args.threads,
                                  args.repeat, args.arena)))
        return 0
    missing = [name for name in ("torch", "onnx") if args.ceiling and not _importable(name)]
    if missing:   # was a ModuleNotFoundError traceback once every configuration had been timed
        from vosrt.sdk.errors import install_command

        parser.error(f"--ceiling counts a frame's FLOPs with torch and builds its MatMul with onnx, and this Python "
                     f"lacks {' and '.join(missing)}: {install_command('export')}, or leave --ceiling out")
    for path in args.packages:
        _check_package(path)
    rows, failed = [], []
    # the MatMul rate is measured before and after the configurations, and the better kept: one short measurement
    # at a busy moment (other jobs on the machine) put the ceiling at a quarter of the rate, and rows "above" it
    rates = [_matmul_rate(args.threads)] if args.ceiling else []
    runs = [(path, backend_name, form) for path in args.packages for backend_name, form in _configurations(path)]
    for number, (path, backend_name, form) in enumerate(runs, 1):
        # progress on stderr: at 480p a configuration takes tens of seconds, and nothing was printed until the table
        print(f"measuring {path} {backend_name} {form} ({number}/{len(runs)})", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, path, "--only", backend_name, form, "--objects", str(args.objects),
                   "--memory-frames", str(args.memory_frames), "--threads", str(args.threads),
                   "--repeat", str(args.repeat)] + (["--arena"] if args.arena else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{path} {backend_name} {form}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            failed.append(f"{path} {backend_name} {form}")
            continue
        rows.append((f"{os.path.basename(os.path.normpath(path))} {backend_name} {form}",
                     json.loads(done.stdout.strip().splitlines()[-1]), path))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.objects} objects, memory "
          f"{args.memory_frames} frames, {args.threads} threads; seconds per call (wall / CPU), median of {args.repeat}; "
          "a frame is a key encoding, a segment call and a value encoding every mem_every frames (the package's); "
          "vs first: the first row's frame wall time over this row's (above 1x: faster than the first row)")
    graphs = ["encode_key", "encode_value", "segment"]
    print(f"{'configuration':<40}" + "".join(f"{g:>22}" for g in graphs) + f"{'frame wall':>12}{'frame CPU':>11}"
          f"{'peak RSS':>10}{'vs first':>9}")
    base = None
    for name, result, _ in rows:
        g = result["graphs"]
        wall, cpu = _per_frame(result, "wall"), _per_frame(result, "cpu")
        base = base or wall
        cells = "".join(f"{g[x]['wall']:>11.3f} / {g[x]['cpu']:<8.3f}" for x in graphs)
        print(f"{name:<40}{cells}{wall:>12.3f}{cpu:>11.3f}{result['peak_rss_mb']:>8.0f}MB{base / wall:>8.2f}x")
    for name, result, _ in rows:   # a row's name is the package's folder: its resolution and precision said here
        print(f"  {name}: {result['size']} {result['precision']}, {result['describe']}")
    if args.ceiling:
        print("measuring the fp32 ceiling (FLOPs of a frame, an fp32 MatMul's rate)", file=sys.stderr, flush=True)
        rates.append(_matmul_rate(args.threads))
        rate = max(rates)
        print(f"fp32 MatMul rate: {rate / 1e9:.0f} GFLOP/s (ONNX Runtime, {args.threads} threads; the better of "
              f"{len(rates)} measurements, {', '.join(f'{r / 1e9:.0f}' for r in rates)})")
        floors, above = {}, []
        for path in dict.fromkeys(path for _, _, path in rows):   # each package's own FLOPs (another size, model)
            flops = _frame_flops(path, args.objects, args.memory_frames)
            floors[path] = flops / rate
            print(f"fp32 ceiling of {os.path.basename(os.path.normpath(path))}: {flops / 1e9:.3g} GFLOP per frame at "
                  f"{rate / 1e9:.0f} GFLOP/s -> about {floors[path]:.3f} s per frame in fp32")
        for name, result, path in rows:
            share = floors[path] / _per_frame(result, "wall")
            print(f"  {name}: runs at {_percent(share)} of that rate")
            if share > 1.1 and result["precision"] == "fp32":
                above.append(name)
        if above:   # no fp32 network runs faster than its MatMuls: the rate was measured low
            print(f"warning: {', '.join(above)} ran above the fp32 MatMul rate, which cannot be: the rate was measured "
                  "at a busy moment (see the load average above); the ceiling figures are not to be trusted, run "
                  "again on a quieter machine", file=sys.stderr)
        torch_rows = [(r, path) for n, r, path in rows if " torch " in n]
        if torch_rows:
            wall = _per_frame(torch_rows[0][0], "wall")
            print(f"  so an fp32 backend gains at most about {wall / floors[torch_rows[0][1]]:.2f}x over the first "
                  "torch row")
    if failed:   # the table lacks their rows (and "vs first" may not be against the first configuration)
        print(f"failed: {', '.join(failed)} (their errors are above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from vosrt.sdk.errors import UserError

    try:
        sys.exit(main())
    except UserError as err:   # a bad package: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:   # Ctrl-C: one line and status 130, not a traceback (subprocess.run ends the child)
        print("bench_stcn_graphs.py: interrupted", file=sys.stderr)
        sys.exit(130)
