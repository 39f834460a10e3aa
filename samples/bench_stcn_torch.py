"""CPU cost of one STCN step in PyTorch eager: encode_key + encode_value (O objects) + memory readout +
segment, at a given resolution and thread count. Prints parameters, wall time per frame (median and best of the timed
frames) and CPU time per frame (the mean: the process time of all of them over their number).

    python samples/bench_stcn_torch.py --model stcn-lite --height 240 --width 432 --objects 2 --threads 2

Wall time depends on what else the machine runs; the CPU time per frame is the steadier figure. The model
is ``--model``'s default configuration with random weights (stcn-lite: 6.4 M parameters); the shipped
``stcn-lite`` package is a smaller configuration, which ``vosrt bench stcn-lite --compare torch`` times.
"""
import argparse
import statistics
import sys
import time

from vosrt.sdk import families
from vosrt.sdk.errors import install_command

try:
    import torch
except ModuleNotFoundError:   # a base install: was a ModuleNotFoundError traceback
    print(f"bench_stcn_torch.py: error: this benchmark runs PyTorch, which is not installed: "
          f"{install_command('train')}", file=sys.stderr)
    sys.exit(2)

from vosrt.training.models import build_model
from vosrt.training.models.stcn import FAMILY
from vosrt.training.ops.l2_readout import l2_memory_readout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = list(families.get(FAMILY).models)
    parser.add_argument("--model", default=models[-1], choices=models)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=432)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=10, help="timed frames (after 2 warm-up frames)")
    args = parser.parse_args()
    # refused here: each was a traceback (ZeroDivisionError, set_num_threads, a size mismatch in the decoder)
    for flag in ("objects", "threads", "frames"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}: expected a whole number >= 1, got {getattr(args, flag)}")
    for flag in ("height", "width"):
        if getattr(args, flag) < 16 or getattr(args, flag) % 16:
            parser.error(f"--{flag}: expected a positive multiple of 16 (the network's stride), got "
                         f"{getattr(args, flag)}")

    torch.set_num_threads(args.threads)
    model = build_model(args.model).eval()
    height, width, objects = args.height, args.width, args.objects
    generator = torch.Generator().manual_seed(0)
    frame = torch.randn(1, 3, height, width, generator=generator)
    masks = torch.rand(objects, 1, height, width, generator=generator)

    def step():
        key, f16_thin, f16, f8, f4 = model.encode_key(frame)
        value = model.encode_value(frame, f16, masks)  # [O, Cv, h, w]
        mem_key = key.flatten(2)  # [1, Ck, N], a one-frame memory
        mem_value = value.flatten(2).reshape(1, -1, mem_key.shape[2])  # [1, O·Cv, N]
        readout = l2_memory_readout(mem_key, key.flatten(2), mem_value, top_k=20)
        return model.segment(readout.view(objects, -1, *key.shape[-2:]), f16_thin, f8, f4)

    with torch.inference_mode():
        for _ in range(2):
            step()
        walls, cpu_start = [], time.process_time()
        for _ in range(args.frames):
            start = time.perf_counter()
            step()
            walls.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu_start) / args.frames
    params = sum(p.numel() for p in model.parameters())
    walls.sort()
    print(f"{args.model}: {params / 1e6:.2f} M parameters; {height}x{width}, {objects} objects, "
          f"{args.threads} threads: wall median {statistics.median(walls) * 1e3:.0f} ms, best {walls[0] * 1e3:.0f} ms, "
          f"CPU time mean {cpu * 1e3:.0f} ms per frame (all {args.frames} frames' process time)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:   # Ctrl-C: one line and status 130, not a traceback
        print("bench_stcn_torch.py: interrupted", file=sys.stderr)
        sys.exit(130)
