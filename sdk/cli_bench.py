"""``vosrt bench PKG``: milliseconds per stage and frames per second of a package's streaming session.

The session runs on generated frames (``vosrt.sdk.synthetic``) at the package resolution, exactly as
``vosrt run`` would: every graph call is timed (with a device synchronisation, so GPU work is counted
where it happens) and the rest of each frame is reported as host work (letterboxing, transfers, memory
bookkeeping). ``--compare torch`` runs the same frames through the torch backend in the same process
and prints the speed-up of each stage. Both backends' options are checked before either is timed, as far as
they can be without opening them: ``--device`` applies to both, ``--threads`` to those that run on CPU threads
(ONNX Runtime, torch; not TensorRT), ``--checkpoint`` to torch. The table of an INT8 package (``vosrt quantize``)
says so, and its torch column says that it runs the fp32 checkpoint the package was quantized from.
"""
from __future__ import annotations

import shlex
import time
from collections import defaultdict
from pathlib import Path

from vosrt.sdk import families
from vosrt.sdk.backends.base import Backend, DelegatingBackend
from vosrt.sdk.errors import UserError
from vosrt.sdk.tracker import MAX_OBJECT_ID


DEFAULT_OBJECTS = 2


def add_arguments(parser) -> None:
    """Arguments of ``vosrt bench``."""
    parser.add_argument("package", help="model package folder or a shipped package's name (stcn-lite)")
    parser.add_argument("--frames", type=int, default=50, help="frames to time (default 50; for clip families a multiple of the clip hop, clip length "
                        "minus overlap, times whole clips)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed frames first (default 5, and at least one clip for clip families: their first "
                        "clip runs only once a clip's frames are in)")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, torch or tensorrt")
    parser.add_argument("--compare", default=None, help="also time this backend (e.g. torch) and print ratios")
    parser.add_argument("--checkpoint", default=None, help="checkpoint for the torch backend")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (both backends)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of each onnxruntime / torch backend, >= 1 (default: the runtime's own)")
    parser.add_argument("--objects", type=int, default=None,
                        help=f"objects a tracker (stcn) follows, 1..{MAX_OBJECT_ID}: its cost grows with them (default "
                        f"{DEFAULT_OBJECTS}); clip families find their objects themselves")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class TimedBackend(DelegatingBackend):
    """Wraps a backend and accumulates the wall time of each graph (synchronised) by graph name."""

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.times: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def run(self, graph, inputs, outputs=None):
        start = time.perf_counter()
        result = self.inner.run(graph, inputs, outputs)
        self.inner.synchronize()
        self.times[graph] += time.perf_counter() - start
        self.calls[graph] += 1
        return result


def bench(package, backend_name: str, frames: int, warmup: int | None, options: dict,
          show_progress: bool = True, label: str | None = None, objects: int = DEFAULT_OBJECTS) -> dict:
    """Stream ``warmup + frames`` generated frames (``warmup`` None: 5, or one clip's frames where the session has
    a latency, so that a clip has run before the timing starts); returns ``{"stages": {name: ms per frame},
    "fps": .., "describe": .., "warmup": frames streamed untimed}``, and for a tracker ``"objects"``: how many of
    the ``objects`` generated it was given on the first frame. ``label``: the progress bars' name (default
    ``backend_name``; the CLI passes the backend that runs, as its table's column does, not "auto")."""
    import numpy as np

    from vosrt.sdk import open_session
    from vosrt.sdk.backends import open_backend
    from vosrt.sdk.progress import Progress
    from vosrt.sdk.streaming import stream
    from vosrt.sdk.synthetic import generate_sequence

    timed = TimedBackend(open_backend(package, backend_name, **options))
    settings = {"color": "rgb"}
    if families.get(package.family).takes_mask and objects > package.streaming.get("max_objects", objects):
        # more objects than the package's default cap (32): a session that takes them, as --max-objects gives run
        settings["max_objects"] = objects
    session = open_session(timed, package, **settings)  # checks the package's resolution against its graphs
    if warmup is None:
        warmup = max(5, session.latency + 1)
    sequence = generate_sequence(0, num_frames=min(frames + warmup, 40), height=package.height,
                                 width=package.width, num_objects=objects)

    def feed(first: int, count: int, flush: bool, desc: str):
        # frames cycle through the clip; sessions that take masks get the objects on the very first frame
        frames = (sequence.frames[t % len(sequence)] for t in range(first, first + count))
        masks = {0: sequence.labels[0]} if session.takes_mask and first == 0 else None
        return stream(session, frames, masks=masks, flush=flush, close=False,
                      progress=Progress(count, "frame", desc=desc, enabled=show_progress))

    label = label or backend_name
    if warmup:
        feed(0, warmup, flush=False, desc=f"{label} warm-up")
    timed.times.clear()
    timed.calls.clear()
    stats = feed(warmup, frames, flush=True, desc=label)
    elapsed = stats.seconds
    stages = {graph: 1000 * seconds / frames for graph, seconds in timed.times.items()}
    stages["host"] = 1000 * elapsed / frames - sum(stages.values())
    stages["total"] = 1000 * elapsed / frames
    result = {"stages": stages, "fps": frames / elapsed, "describe": timed.describe(), "warmup": warmup}
    if session.takes_mask:   # a tracker's cost grows with the objects it tracks: the table says how many
        result["objects"] = len([i for i in np.unique(sequence.labels[0]) if i])
    if getattr(session, "hop", None):   # clip families: each clip calls each of their graphs once
        result["clips"], result["hop"] = max(timed.calls.values(), default=0), session.hop
    timed.close()
    return result


def _backend_options(args, package, resolved: dict) -> dict:
    """The options of each backend (``{flag: options}``), checked as far as they can be without opening either
    backend, so that a bad --device or --threads for --compare is refused before the first backend is timed
    rather than after. --device applies to both backends; --threads to those that run on CPU threads (a
    TensorRT side takes none); --checkpoint to torch."""
    import inspect

    from vosrt.sdk.backends import backend_class

    if args.device and args.device not in Backend.devices:
        # was refused as "--backend onnxruntime: device: expected ...", naming a flag that was not the wrong one
        names = ", ".join(repr(d) for d in Backend.devices[:-1]) + f" or {Backend.devices[-1]!r}"
        raise UserError(f"--device: expected {names}, got {args.device!r}")
    options = {}
    for flag, name in resolved.items():
        try:
            cls = backend_class(name)
        except UserError as err:
            raise UserError(f"{flag} {name}: {err}") from None
        if args.device and args.device in Backend.devices and args.device not in cls.devices:
            runs_on = " or ".join(d for d in cls.devices if d != "auto")
            both = ", and --device applies to both backends" if len(resolved) > 1 else ""
            raise UserError(f"--device {args.device}: {flag} {name} runs on {runs_on} only{both}; leave --device "
                            f"out: `{_command_without(args, '--device')}`")
        chosen = {"device": args.device} if args.device else {}
        if args.threads and "threads" in inspect.signature(cls.check_options).parameters:
            chosen["threads"] = args.threads
        if args.checkpoint and name == "torch":
            chosen["checkpoint"] = args.checkpoint
        try:
            cls.check_options(package, **chosen)
        except UserError as err:
            raise UserError(f"{flag} {name}: {err}") from None
        options[flag] = chosen
    if args.threads and not any("threads" in chosen for chosen in options.values()):
        names = " and ".join(sorted(set(resolved.values())))
        raise UserError(f"--threads {args.threads}: {names} runs on the GPU and takes no CPU thread count; leave "
                        f"--threads out: `{_command_without(args, '--threads')}`")
    return options


def _command_without(args, flag: str) -> str:
    """This ``vosrt bench`` command line without ``flag`` (``--device``, ``--threads`` or ``--objects``); the other
    flags kept."""
    kept = {"--device": args.device, "--threads": args.threads, "--objects": args.objects}
    kept.pop(flag)
    return shlex.join(["vosrt", "bench", str(args.package), "--backend", args.backend,
                       *(["--compare", args.compare] if args.compare else []),
                       *(["--checkpoint", str(args.checkpoint)] if args.checkpoint else []),
                       *[part for name, value in kept.items() if value for part in (name, str(value))],
                       "--frames", str(args.frames), *(["--warmup", str(args.warmup)] if args.warmup is not None else [])])


def run(args) -> int:
    """Entry point of ``vosrt bench``."""
    from vosrt.sdk.package import load_package

    from vosrt.sdk.backends import resolve_backend_name

    # one message per flag: both were named, with 'None' for a --warmup left out, whichever was wrong
    if args.frames < 1:
        raise UserError(f"--frames: expected timed frames >= 1, got {args.frames}")
    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup: expected untimed frames >= 0, got {args.warmup} (leave it out for the default)")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads: expected a number of threads >= 1, got {args.threads} (leave it out for the "
                        f"runtime's default)")
    if args.objects is not None and not 1 <= args.objects <= MAX_OBJECT_ID:
        raise UserError(f"--objects: expected a number of objects to track in 1..{MAX_OBJECT_ID}, got {args.objects}")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint: {args.checkpoint} is not a file")
    package = load_package(args.package)
    if args.objects is not None and not families.get(package.family).takes_mask:
        raise UserError(f"--objects: {args.package} is a {package.family} package, which finds the objects itself "
                        f"(no mask is given); leave --objects out: `{_command_without(args, '--objects')}`")
    # names checked before anything is timed: a bad --compare used to fail only after the first backend's run
    resolved = {}
    for flag, name in (("--backend", args.backend), ("--compare", args.compare)):
        if name is not None:
            try:
                resolved[flag] = resolve_backend_name(package, name)
            except UserError as err:
                raise UserError(f"{flag}: {str(err).removeprefix('backend: ')}") from None
    if args.checkpoint and "torch" not in resolved.values():
        # it was silently ignored: the numbers printed were not the checkpoint's
        hint = shlex.join(["vosrt", "bench", str(args.package), "--backend", resolved["--backend"], "--compare",
                           "torch", "--checkpoint", str(args.checkpoint)])
        given = (f"--backend {args.backend}" + (f", which is {resolved['--backend']} here"
                                                  if resolved["--backend"] != args.backend else ""))
        raise UserError(f"--checkpoint: only the torch backend loads a checkpoint, but this bench uses {given}, "
                        f"and --compare {resolved.get('--compare', 'is not given')}; time the "
                        f"checkpoint on torch beside {resolved['--backend']}: `{hint}`, or drop --checkpoint")
    options = _backend_options(args, package, resolved)
    # columns are named by the backend that ran (`auto` read "speed-up: auto over torch")
    first = resolved["--backend"]
    objects = args.objects or DEFAULT_OBJECTS
    shown = not args.no_progress
    results = {first: bench(package, args.backend, args.frames, args.warmup, options["--backend"], label=first,
                            objects=objects, show_progress=shown)}
    if args.compare:
        # the same backend twice (a run-to-run check) keeps both columns: keyed by name, the second replaced the first
        second = resolved["--compare"]
        label = second if second != first else f"{second} (2nd)"
        results[label] = bench(package, args.compare, args.frames, args.warmup, options["--compare"], label=label,
                               objects=objects, show_progress=shown)

    warmups = sorted({result["warmup"] for result in results.values()})
    # an INT8 package's table read as fp32's, and its torch column runs the fp32 checkpoint it was quantized from
    int8 = package.quantization is not None
    # the package and the threads said too: two packages of one variant and size printed the same header, and a
    # table of --threads 1 read like one of the runtime's default
    threads = f"{args.threads} thread(s)" if args.threads else "the runtime's default threads"
    tracked = sorted({result["objects"] for result in results.values() if "objects" in result})
    threads += f", {' / '.join(map(str, tracked))} object(s) tracked" if tracked else ""
    precision = " INT8 (vosrt quantize)" if int8 else ""
    print(f"{args.package}: {package.variant} {package.height}x{package.width}{precision}, {args.frames} frames after "
          f"{' / '.join(map(str, warmups))} warm-up, {threads}")
    if tracked and max(tracked) < objects:
        # many objects on a small frame cover each other: the table would have been taken for the count asked for
        print(f"note: --objects {objects}: {max(tracked)} of the generated objects are visible on the first frame at "
              f"{package.height}x{package.width} (the others hide behind them), so {max(tracked)} are tracked")
    for name, result in results.items():
        fp32 = "; fp32: the checkpoint the INT8 package was quantized from" if int8 and name.startswith("torch") else ""
        print(f"  {name}: {result['describe']}{fp32}")
    names = list(results)
    stages = list(results[names[0]]["stages"])
    width = max(14, *(len(n) + 2 for n in names))
    header = f"{'stage (ms/frame)':<18}" + "".join(f"{n:>{width}}" for n in names)
    if len(names) == 2:
        header += f"{'speed-up':>10}"
    print(header)
    for stage in stages + ["FPS"]:
        values = [r["fps"] if stage == "FPS" else r["stages"].get(stage, float("nan")) for r in results.values()]
        line = f"{stage:<18}" + "".join(f"{v:{width}.2f}" for v in values)
        if len(names) == 2:
            ratio = values[0] / values[1] if stage == "FPS" else values[1] / values[0]
            line += f"{ratio:9.2f}x" if values[0] > 0 and values[1] > 0 else f"{'-':>10}"
        print(line)
    clipped = [r for r in results.values() if "clips" in r and r["clips"] * r["hop"] != args.frames]
    if clipped:
        # --frames 2 of an 8-frame clip with overlap 3 timed the end-of-stream clip for 2 frames: 2.5x the per-frame
        # cost of a long stream, without a word
        clips, hop = clipped[0]["clips"], clipped[0]["hop"]
        print(f"note: {clips} clip(s) ran in the {args.frames} timed frames, and a long stream runs one every {hop} "
              f"frames (the end of the stream runs one for the frames left), so the clip graph's ms per frame are "
              f"{clips * hop / args.frames:.2f}x a long stream's; give --frames a multiple of {hop}")
    if len(names) == 2:
        # which way the ratio goes: with --backend torch --compare onnxruntime it reads 0.4x, torch over onnxruntime
        print(f"speed-up: {names[0]} over {names[1]} ({names[1]} ms / {names[0]} ms per stage, FPS {names[0]} / "
              f"FPS {names[1]}), both measured in this run")
    return 0
