"""Benchmark of vosrt's CUDA kernels against the PyTorch references, measured in the same run (GPU).

    python samples/bench_kernels.py                 # both operators, fp32 and fp16
    python samples/bench_kernels.py --only readout --frames 1 5 10 20 50 --objects 1 3
    python samples/bench_kernels.py --dry-run       # the references on the CPU at tiny shapes (no GPU)
    python samples/bench_kernels.py --dry-run --frames 3 --objects 1   # the counts apply to the tiny shapes

The measurements are those of ``samples/gpu_check.py`` (same shapes, references, timing and tables); this
script runs only them, without the build and the tests, with shapes chosen on the command line.

D2Conv3D: the layers 3DC-Seg runs as D²Conv3D (refinement modules rf3 at 1/16 and rf2 at 1/8, see
``vosrt.training.models.c3dseg``) on a clip of 480×864 frames: the ir-CSN encoder halves time at each
stage, so an 8-frame clip is T=2, 30×54 at 1/16 and T=4, 60×108 at 1/8; each module has one convFS1 from
the encoder width (1024 or 512 channels) to 256 and four 256→256 convolutions; 3×3×3 kernel, padding 1,
modulation and bias. The reference is ``vosrt.training.ops.d2conv3d.d2conv3d(..., backend="torch")``.
L2MemoryReadout: Ck=64, M=1620 (480p at 1/16), V = objects × 512, N = frames × 1620; against the dense
form STCN uses (affinity, top-k, scatter of the softmax into an N×M matrix, matmul) and against the
repository's reference (cuBLAS GEMM + torch.topk + gather).

Prints milliseconds per call, the ratios and the peak device memory each call allocates beyond its inputs. On
the GPU a call's time is the mean of ``--repeat`` calls back to back between one pair of CUDA events (the median
of single calls is kept only in ``samples/gpu_check.py``'s JSON); with ``--dry-run``, the median of ``--repeat``
single calls on the CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check as check  # noqa: E402  (samples/gpu_check.py: the benchmarks themselves)

sys.path.append(str(check.ROOT))  # vosrt from this checkout where it is not installed (vosrt/__init__.py)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("d2conv3d", "readout"), help="benchmark one operator")
    parser.add_argument("--repeat", type=int, default=10,
                        help="timed calls per measurement (GPU: their mean, back to back; --dry-run: their median)")
    full, tiny = check.READOUT_FULL, check.READOUT_TINY
    parser.add_argument("--frames", type=int, nargs="+",
                        help=f"readout memory frames (default {' '.join(map(str, full['frames']))}; "
                        f"--dry-run: {' '.join(map(str, tiny['frames']))})")
    parser.add_argument("--objects", type=int, nargs="+",
                        help=f"readout objects, V = objects x 512 (default {' '.join(map(str, full['objects']))}; "
                        f"--dry-run: {' '.join(map(str, tiny['objects']))}, V = objects x {tiny['value_dim']})")
    parser.add_argument("--top-k", type=int, default=full["top_k"])
    parser.add_argument("--clip-frames", type=int, default=8, help="frames of the 3DC-Seg clip (D2Conv3D shapes)")
    parser.add_argument("--dry-run", action="store_true", help="the references on the CPU at tiny shapes (no GPU)")
    args = parser.parse_args(argv)
    for name in ("repeat", "top_k", "clip_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("frames", "objects"):   # one message named both flags and neither value, whichever was wrong
        if min(getattr(args, name) or [1]) < 1:
            parser.error(f"--{name}: expected numbers >= 1, got {' '.join(map(str, getattr(args, name)))}")
    shapes = tiny if args.dry_run else full
    memory = min(args.frames or shapes["frames"]) * shapes["hw"]
    readout_timed = args.only in (None, "readout")
    if readout_timed and args.top_k > memory:   # was torch.topk's "selected index k out of range" traceback
        parser.error(f"--top-k {args.top_k}: more than the memory of {min(args.frames or shapes['frames'])} frame(s) "
                     f"holds (N = {memory} entries); give --top-k {memory} or less, or more --frames")
    from vosrt.sdk.cpu_ops import MAX_TOP_K   # the kernels' VOSRT_L2_READOUT_MAX_TOP_K

    if readout_timed and not args.dry_run and args.top_k > MAX_TOP_K:
        # l2_memory_readout hands such a top-k to the PyTorch reference: the "fused" column would have timed the
        # reference against itself (ratios about 1x, printed as the kernel's)
        parser.error(f"--top-k {args.top_k}: the fused kernel reads at most {MAX_TOP_K} entries per query (beyond "
                     f"that the reference runs in its place, so there is no kernel to time); give --top-k "
                     f"{MAX_TOP_K} or less")
    try:
        import torch
    except ModuleNotFoundError:   # was a ModuleNotFoundError traceback (--dry-run included: it times PyTorch too)
        from vosrt.sdk.errors import install_command

        print(f"bench_kernels: needs PyTorch (the references, and the kernels' bindings), which is not installed: "
              f"{install_command('train')}", file=sys.stderr)
        return 2

    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run:
        if not torch.cuda.is_available():
            print("bench_kernels: needs a CUDA device (python samples/bench_kernels.py --dry-run runs the CPU "
                  "references at tiny shapes)", file=sys.stderr)
            return 2
        if not check.kernels_usable(device):
            print("bench_kernels: libvosrt_kernels.so not found; build it with "
                  "cmake -S plugins -B plugins/build && cmake --build plugins/build -j", file=sys.stderr)
            return 2
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:   # the tables name no device: say what a dry run timed
        print(f"device: cpu (--dry-run: the PyTorch references at tiny shapes, no kernel timed; each figure the "
              f"median of {args.repeat} single calls), torch {torch.__version__}")
    # --frames, --objects and --clip-frames apply to the tiny shapes of --dry-run too (they were ignored there)
    readout = dict(tiny if args.dry_run else full, top_k=args.top_k)
    readout.update({name: tuple(getattr(args, name)) for name in ("frames", "objects") if getattr(args, name)})
    # D2CONV_FULL holds an 8-frame clip's T at each scale; the tiny layer is scaled alike
    layers = [(name, cin, cout, max(1, t * args.clip_frames // 8), size)
              for name, cin, cout, t, size in (check.D2CONV_TINY if args.dry_run else check.D2CONV_FULL)]
    results = {}
    if args.only in (None, "readout"):
        results["readout"] = check.bench_readout(device, readout, args.repeat)
    if args.only in (None, "d2conv3d"):
        results["d2conv3d"] = check.bench_d2conv3d(device, layers, args.repeat)
    # the headers said "ms per call, back to back" (the GPU's figures) above the CPU medians of a dry run
    timing = {"timing": f"ms per call on the CPU, median of {args.repeat} single calls"} if args.dry_run else {}
    print(check.benchmark_tables(results, **timing))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:   # Ctrl-C: one line and status 130, not a traceback
        print("bench_kernels.py: interrupted", file=sys.stderr)
        sys.exit(130)
