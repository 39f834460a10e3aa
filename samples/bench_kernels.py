"""Benchmark of vosrt's CUDA kernels against the PyTorch references, measured in the same run (GPU).

    python samples/bench_kernels.py                 # both operators, fp32 and fp16
    python samples/bench_kernels.py --only readout --frames 1 5 10 20 50

D2Conv3D: the layers 3DC-Seg runs as D²Conv3D (refinement modules rf3 at 1/16 and rf2 at 1/8, see
``vosrt.training.models.c3dseg``) on an 8×480×864 clip: the ir-CSN encoder halves time at each stage, so
1/16 is T=2, 30×54 and 1/8 is T=4, 60×108; each module has one convFS1 from the encoder width (1024 or
512 channels) to 256 and four 256→256 convolutions; 3×3×3 kernel, padding 1, modulation and bias.
The reference is ``vosrt.training.ops.d2conv3d.d2conv3d(..., backend="torch")``.
L2MemoryReadout: Ck=64, M=1620 (480p at 1/16), V=3×512, top_k=20, N = frames × 1620; the reference is the
dense form STCN uses (affinity, top-k, scatter of the softmax into an N×M matrix, matmul), and the
repository's gather-based reference is timed too.

Prints median milliseconds, the speed-up, TFLOP/s or effective bandwidth, and the peak device memory each
call allocates beyond its inputs. Targets (issue 6): readout >= 10× the dense reference from 20 frames on,
with no memory growth with N; D2Conv3D >= 3× the reference in fp32, and fp16 >= 1.5× fp32.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from vosrt.training.ops import cuda_kernels
from vosrt.training.ops.d2conv3d import d2conv3d
from vosrt.training.ops.l2_readout import l2_affinity, l2_memory_readout

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
DEVICE = "cuda"


def timed(fn, repeat: int, warmup: int = 2) -> tuple[float, int]:
    """(median ms, peak bytes allocated during one call beyond what was allocated before it)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() - base


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:9.1f}"


# name, input channels, output channels, time divisor, spatial size
D2CONV_LAYERS = [("rf3.convFS1 1/16", 1024, 256, 4, (30, 54)), ("rf3 256->256 1/16", 256, 256, 4, (30, 54)),
                 ("rf2.convFS1 1/8", 512, 256, 2, (60, 108)), ("rf2 256->256 1/8", 256, 256, 2, (60, 108))]


def bench_d2conv3d(repeat: int, clip_frames: int) -> None:
    print(f"\nD2Conv3D: 3DC-Seg refinement layers of a {clip_frames}x480x864 clip, kernel 3x3x3, padding 1, "
          f"modulation + bias")
    print(f"{'layer':>18} {'x shape':>22} {'dtype':>5} {'ref ms':>9} {'kernel ms':>10} {'speed-up':>8} "
          f"{'TFLOP/s':>8} {'ref MiB':>9} {'kern MiB':>9}")
    for layer, cin, cout, time_div, (h, w) in D2CONV_LAYERS:
        frames = max(1, clip_frames // time_div)
        kernel_ms = {}
        for name, dtype in DTYPES.items():
            g = torch.Generator(device=DEVICE).manual_seed(0)
            x = torch.randn(1, cin, frames, h, w, device=DEVICE, generator=g).to(dtype)
            dilation = (1 + torch.rand(1, 3, frames, h, w, device=DEVICE, generator=g)).to(dtype)
            modulation = torch.rand(1, 27, frames, h, w, device=DEVICE, generator=g).to(dtype)
            weight = (torch.randn(cout, cin, 3, 3, 3, device=DEVICE, generator=g) * 0.02).to(dtype)
            bias = torch.randn(cout, device=DEVICE, generator=g).to(dtype)
            args = (x, dilation, modulation, weight, bias)
            with torch.no_grad():
                ref_ms, ref_mem = timed(lambda: d2conv3d(*args, 1, 1, 1, 1, backend="torch"), repeat)
                ker_ms, ker_mem = timed(lambda: cuda_kernels.d2conv3d(*args, (1,) * 3, (1,) * 3, (1,) * 3, 1), repeat)
            kernel_ms[name] = ker_ms
            flops = 2.0 * cout * cin * 27 * frames * h * w
            shape = "x".join(str(v) for v in x.shape)
            print(f"{layer:>18} {shape:>22} {name:>5} {ref_ms:9.3f} {ker_ms:10.3f} {ref_ms / ker_ms:7.1f}x "
                  f"{flops / ker_ms / 1e9:8.2f} {mib(ref_mem)} {mib(ker_mem)}")
        print(f"{layer:>18} fp16 kernel vs fp32 kernel: {kernel_ms['fp32'] / kernel_ms['fp16']:.2f}x")


def dense_reference(mem_key, query_key, mem_value, top_k, scale):
    """STCN's dense read: the whole N×M affinity, top-k, softmax scattered back into N×M, one matmul."""
    affinity = l2_affinity(mem_key, query_key, scale)  # [B, N, M]
    values, index = torch.topk(affinity, top_k, dim=1)
    weights = torch.zeros_like(affinity).scatter_(1, index, torch.softmax(values, dim=1))
    return torch.bmm(mem_value, weights)  # [B, V, M]


def bench_readout(repeat: int, frames_list: list[int], top_k: int) -> None:
    ck, m, v, hw = 64, 1620, 3 * 512, 1620
    scale = ck ** -0.5
    print(f"\nL2MemoryReadout: Ck={ck}, M={m}, V={v}, top_k={top_k}, N = frames x {hw}")
    print(f"{'dtype':>5} {'frames':>6} {'dense ms':>9} {'gather ms':>9} {'kernel ms':>9} {'vs dense':>8} "
          f"{'vs gather':>9} {'GB/s':>7} {'aff TFLOP/s':>11} {'dense MiB':>9} {'kern MiB':>9}")
    for name, dtype in DTYPES.items():
        for frames in frames_list:
            n = frames * hw
            g = torch.Generator(device=DEVICE).manual_seed(frames)
            mem_key = torch.randn(1, ck, n, device=DEVICE, generator=g).to(dtype)
            query_key = torch.randn(1, ck, m, device=DEVICE, generator=g).to(dtype)
            mem_value = torch.randn(1, v, n, device=DEVICE, generator=g).to(dtype)
            args = (mem_key, query_key, mem_value, top_k, scale)
            with torch.no_grad():
                dense_ms, dense_mem = timed(lambda: dense_reference(*args), repeat)
                gather_ms, _ = timed(lambda: l2_memory_readout(*args, backend="torch"), repeat)
                ker_ms, ker_mem = timed(lambda: cuda_kernels.l2_memory_readout(*args), repeat)
            size = mem_key.element_size()
            # keys and queries once, k selected values per (channel, query), the output
            moved = size * (ck * n + ck * m + min(top_k or n, n) * v * m + v * m)
            print(f"{name:>5} {frames:6d} {dense_ms:9.3f} {gather_ms:9.3f} {ker_ms:9.3f} {dense_ms / ker_ms:7.1f}x "
                  f"{gather_ms / ker_ms:8.1f}x {moved / ker_ms / 1e6:7.0f} {2.0 * ck * n * m / ker_ms / 1e9:11.2f} "
                  f"{mib(dense_mem)} {mib(ker_mem)}")
            del mem_key, query_key, mem_value
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("d2conv3d", "readout"), help="benchmark one operator")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per measurement (median reported)")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 5, 10, 20, 50], help="readout memory frames")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--clip-frames", type=int, default=8, help="frames of the 3DC-Seg clip (D2Conv3D shapes)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA device", file=sys.stderr)
        return 2
    if not cuda_kernels.available():
        print("bench_kernels: libvosrt_kernels.so not found; build it with "
              "cmake -S plugins -B plugins/build && cmake --build plugins/build -j", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"kernel library: {cuda_kernels._kernels.find_library()}")
    if args.only in (None, "d2conv3d"):
        bench_d2conv3d(args.repeat, args.clip_frames)
    if args.only in (None, "readout"):
        bench_readout(args.repeat, args.frames, args.top_k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
