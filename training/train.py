"""The training loop of both families: schedule, checkpoints that resume exactly, logging, DDP.

    from vosrt.training.train import default_config, train
    config = default_config("stcn-lite", iterations=2000, size=(128, 224), lr=1e-4)
    train(["data/davis"], "runs/a", config)                 # or: vosrt train stcn --data ... --out ...

Schedules (facts from the published code, see ``default_config``):

- ``stcn``: Adam (weight decay 1e-7), MultiStepLR ×0.1; main training lr 1e-5, batch 4, 150k
  iterations, decay at 125k, 384×384 crops, frame-gap curriculum; static pre-training lr 1e-5, batch 8,
  300k iterations, decay at 150k. Bootstrapped cross-entropy (20k → 70k, top 15 %). BatchNorm frozen:
  the network stays in ``eval()`` mode throughout, as STCN trains.
- ``3dc-seg``: Adam lr 1e-5, batch 2, 8-frame clips from 12-frame windows, gradient clipping at
  norm 10, Lovász hinge, BatchNorm frozen (the decoder uses GroupNorm).

Run folder: ``config.json`` (the resolved configuration), ``last.pth`` (written every ``save_every``
steps and at the end), ``checkpoints/step_NNNNNNN.pth``, ``tensorboard/`` (scalars: losses, lr, IoU,
validation J&F; images: input / truth / prediction overlays every ``image_every`` steps).

Exact resumption: a sample is a pure function of (seed, epoch, index) and the batch order of
(seed, epoch), so a resumed run re-enters the epoch at the batch it stopped at; the checkpoint holds the
step, the optimizer, scheduler and gradient-scaler states and the torch / numpy / python RNG states.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the step module is wrapped in
DistributedDataParallel (nccl on GPUs, gloo on CPU); each rank takes its shard of every epoch's
permutation, ``batch_size`` is per process, and rank 0 alone logs and writes checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from vosrt.sdk.errors import UserError
from vosrt.training.data import (ForegroundClipDataset, GeneratedTripletDataset, StaticSequenceDataset, VideoFolder,
                                 VOSTripletDataset, max_skip_at)
from vosrt.training.models import build_model, family_of, load_payload, read_checkpoint, save_checkpoint
from vosrt.training.steps import ClipTrainStep, STCNTrainStep

CHECKPOINT_NAME = "last.pth"
GENERATED = "generated"  # --data value: STCN triplets from clips generated on the fly


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON files given with ``--config`` override fields."""

    model: str = "stcn"
    model_overrides: dict = field(default_factory=dict)
    stage: str = "main"                  # stcn: "main" (videos) or "static" (image pre-training)
    iterations: int = 150000
    batch_size: int = 4                  # per process
    lr: float = 1e-5
    weight_decay: float = 1e-7
    lr_steps: list = field(default_factory=lambda: [125000])
    gamma: float = 0.1
    size: list = field(default_factory=lambda: [384, 384])  # crop height, width (multiples of 16)
    skip_curriculum: list = field(default_factory=lambda: [[0.0, 5], [0.1, 10], [0.2, 15], [0.3, 20],
                                                           [0.4, 25], [0.9, 5]])
    start_warm: int = 20000
    end_warm: int = 70000
    top_p: float = 0.15
    freeze_bn: bool = True
    clip_length: int = 8
    max_window: int = 12
    grad_clip: float | None = None
    bce_weight: float = 0.0
    repeat: int = 1                      # samples per video (or image) per epoch
    generated_clip_size: list = field(default_factory=lambda: [240, 432])  # --data generated: clip H, W
    generated_frames: int = 12           # --data generated: frames per clip
    samples_per_epoch: int = 1000        # --data generated: samples per epoch
    num_workers: int = 2
    seed: int = 14159265
    amp: bool = False
    log_every: int = 10
    image_every: int = 500
    save_every: int = 1000
    keep_every: int = 0                  # also keep checkpoints/step_N.pth every this many steps (0: never)
    val_every: int = 0                   # 0: validate only at the end (when a validation folder is given)
    val_videos: int = 8
    mem_every: int = 5
    top_k: int = 20
    clip_overlap: int = 3

    @property
    def family(self) -> str:
        """``"stcn"`` or ``"3dc-seg"``."""
        return family_of(self.model)


def default_config(model: str = "stcn", stage: str = "main", **overrides) -> TrainConfig:
    """The published schedule of ``model``'s family (and ``stage`` for STCN), with ``overrides``."""
    family = family_of(model)
    if family == "stcn":
        if stage == "static":
            base = dict(batch_size=8, iterations=300000, lr_steps=[150000], lr=1e-5)
        elif stage == "main":
            base = {}
        else:
            raise UserError(f"stage: expected 'main' or 'static' for stcn, got {stage!r}")
    else:
        if stage != "main":
            raise UserError(f"stage: 3dc-seg has only the 'main' stage, got {stage!r}")
        base = dict(batch_size=2, iterations=100000, lr=1e-5, weight_decay=0.0, lr_steps=[], size=[480, 854],
                    grad_clip=10.0)
    config = TrainConfig(model=model, stage=stage, **base)
    return apply_overrides(config, overrides)


def apply_overrides(config: TrainConfig, overrides: dict, source: str = "overrides") -> TrainConfig:
    """A copy of ``config`` with ``overrides`` applied; unknown names raise ``UserError``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"{source}: unknown training option(s) {unknown}; known: {sorted(names)}")
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}
    return dataclasses.replace(config, **values)


def load_config_file(path: str | Path, config: TrainConfig) -> TrainConfig:
    """Apply the JSON object in ``path`` to ``config``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config: file not found: {path}")
    try:
        overrides = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"--config {path}: not valid JSON ({err})") from None
    if not isinstance(overrides, dict):
        raise UserError(f"--config {path}: expected a JSON object of training options")
    return apply_overrides(config, overrides, source=f"--config {path}")


# ---------------------------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """torch / numpy / python RNG states as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- data

def _folders(paths: list[str | Path]) -> list[VideoFolder]:
    folders = []
    for path in paths:
        path = Path(path)
        split = "train" if any((path / "ImageSets" / d / "train.txt").is_file() for d in ("2017", "480p")) or \
            (path / "train" / "JPEGImages").is_dir() else None
        folders.append(VideoFolder(path, split=split))
    return folders


def build_dataset(config: TrainConfig, data: list[str | Path]):
    """The training sampler of ``config``'s family and stage over the folders ``data`` (or, for STCN
    main training, ``["generated"]``: clips generated on the fly, see ``GeneratedTripletDataset``)."""
    if not data:
        raise UserError("--data: give at least one dataset folder")
    if [str(d) for d in data] == [GENERATED]:
        if config.family != "stcn" or config.stage != "main":
            raise UserError("--data generated: clips generated on the fly feed stcn main training only; "
                            "write a dataset with vosrt.sdk.synthetic.generate_dataset for the others")
        return GeneratedTripletDataset(size=tuple(config.size), clip_size=tuple(config.generated_clip_size),
                                       num_frames=config.generated_frames,
                                       max_skip=config.skip_curriculum[0][1],
                                       samples_per_epoch=config.samples_per_epoch, seed=config.seed)
    size = tuple(int(s) for s in config.size)
    if len(size) != 2 or any(s % 16 for s in size):
        raise UserError(f"size: expected [height, width], both multiples of 16, got {config.size}")
    if config.family == "stcn" and config.stage == "static":
        sources = [VideoFolder(p) if (Path(p) / "JPEGImages").is_dir() else Path(p) for p in data]
        return StaticSequenceDataset(sources, size=size, seed=config.seed)
    folders = _folders(data)
    if config.family == "stcn":
        return VOSTripletDataset(folders, size=size, max_skip=config.skip_curriculum[0][1],
                                 repeat=config.repeat, seed=config.seed)
    return ForegroundClipDataset(folders, size=size, clip_length=config.clip_length,
                                 max_window=config.max_window, repeat=config.repeat, seed=config.seed)


class EpochShardSampler(torch.utils.data.Sampler):
    """Indices of one epoch: a permutation fixed by (seed, epoch), cut into ``world`` interleaved shards,
    starting after ``skip`` of this rank's batches (to re-enter an interrupted epoch)."""

    def __init__(self, length: int, seed: int, epoch: int, rank: int, world: int, batch_size: int, skip: int = 0):
        generator = torch.Generator().manual_seed(int(seed) * 1000003 + int(epoch))
        order = torch.randperm(length, generator=generator).tolist()
        per_rank = (length // (world * batch_size)) * batch_size
        self.indices = order[rank:per_rank * world:world][skip * batch_size:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _collate(samples: list[dict]) -> dict:
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


# ---------------------------------------------------------------------------------------------- distributed

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False


def _setup_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if world <= 1:
        return _Dist(device=device)
    if cuda:
        torch.cuda.set_device(local_rank)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        created = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device,
                 initialised_here=created)


# ---------------------------------------------------------------------------------------------- the loop

def _init_weights(model: nn.Module, path: str | Path, family: str) -> None:
    """Whole-model weights (vosrt checkpoint, published state_dict) or, for 3dc-seg, ir-CSN backbone
    weights (VMZ Caffe2 ``.pkl`` or its PyTorch conversion) for the encoder alone."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--init: file not found: {path}")
    if family == "3dc-seg":
        from vosrt.training.models.caffe2_convert import load_backbone_weights
        if path.suffix == ".pkl":
            load_backbone_weights(model, path)
            return
        try:
            _, state_dict = read_checkpoint(path)
        except UserError:  # not a whole model: an ir-CSN backbone state_dict
            load_backbone_weights(model, path)
            return
    elif path.suffix == ".pkl":
        raise UserError(f"--init {path}: Caffe2 .pkl backbone weights are for 3dc-seg, not {family}")
    else:
        _, state_dict = read_checkpoint(path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise UserError(f"--init {path}: weights do not fit model '{model.config['model']}': {err}") from None


def _make_step_module(model: nn.Module, config: TrainConfig) -> nn.Module:
    if config.family == "stcn":
        return STCNTrainStep(model, config.start_warm, config.end_warm, config.top_p)
    return ClipTrainStep(model, config.bce_weight)


def _run_step(module: nn.Module, batch: dict, family: str, step: int, device: torch.device):
    if family == "stcn":
        return module(batch["images"].to(device), batch["masks"].to(device), batch["labels"].to(device),
                      batch["selector"].to(device), step)
    return module(batch["images"].to(device), batch["foreground"].to(device), step)


def train(data: list[str | Path], out: str | Path, config: TrainConfig, resume: bool = False,
          init: str | Path | None = None, val_data: str | Path | None = None, progress: bool = True) -> dict:
    """Train ``config.model`` on the dataset folders ``data``, writing the run folder ``out``.

    ``resume`` continues from ``out/last.pth`` (exactly: step, optimizer, RNG); ``init`` starts from
    a checkpoint (vosrt or published state_dict) or, for 3dc-seg, Caffe2 ``.pkl`` backbone weights.
    ``val_data``: a DAVIS-layout folder scored with J&F (``vosrt.sdk.metrics``) every ``val_every`` steps
    and at the end. Returns a summary: final step, last logged values, wall time, checkpoint path.
    """
    ctx = _setup_distributed()
    out = Path(out)
    family = config.family
    checkpoint_path = out / CHECKPOINT_NAME
    payload = None
    if resume:
        if not checkpoint_path.is_file():
            raise UserError(f"--resume: no checkpoint to resume at {checkpoint_path}")
        payload = load_payload(checkpoint_path)
        if not isinstance(payload, dict) or not {"state_dict", "optimizer", "step", "rng"} <= set(payload):
            raise UserError(f"--resume: {checkpoint_path} is not a training checkpoint of `vosrt train` (no optimizer "
                            f"state or step); start a new run folder, or pass the file with --init instead")
        config = apply_overrides(config, {k: v for k, v in payload.get("train_config", {}).items()
                                          if k not in ("iterations", "num_workers", "log_every", "image_every",
                                                       "save_every", "val_every", "keep_every")})
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    model = build_model(config.model, **config.model_overrides)
    if init is not None and payload is None:
        _init_weights(model, init, family)
    if payload is not None:
        model.load_state_dict(payload["state_dict"], strict=True)
    model.to(ctx.device)
    model.train(not config.freeze_bn)  # frozen BatchNorm: running statistics and affine stay as loaded
    if config.freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for param in module.parameters():
                    param.requires_grad_(False)

    step_module = _make_step_module(model, config).to(ctx.device)
    if ctx.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            broadcast_buffers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.lr_steps), gamma=config.gamma)
    use_cuda_amp = config.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)
    step = 0
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if "scaler" in payload and use_cuda_amp:
            scaler.load_state_dict(payload["scaler"])
        step = int(payload["step"])
        set_rng_state(payload["rng"])

    dataset = build_dataset(config, data)
    steps_per_epoch = len(dataset) // (config.batch_size * ctx.world)
    if steps_per_epoch < 1:
        raise UserError(f"the dataset has {len(dataset)} samples, fewer than one batch of {config.batch_size} "
                        f"× {ctx.world} process(es): lower batch_size or raise repeat")

    writer = None
    bar = None
    if ctx.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        writer = _tensorboard(out / "tensorboard")
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=config.iterations, initial=step, desc=f"train {config.model}", dynamic_ncols=True)

    def save(path: Path) -> None:
        save_checkpoint(path, model, model.config, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), step=step, rng=rng_state(),
                        train_config=dataclasses.asdict(config))

    started = time.time()
    last_logs: dict = {}
    validation: dict = {}
    autocast_dtype = torch.float16 if ctx.device.type == "cuda" else torch.bfloat16
    try:
        while step < config.iterations:
            epoch, skip = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            if family == "stcn" and config.stage == "main":
                # STCN changes the gap limit only between epochs
                dataset.set_max_skip(max_skip_at(epoch * steps_per_epoch / config.iterations,
                                                 [tuple(v) for v in config.skip_curriculum]))
            sampler = EpochShardSampler(len(dataset), config.seed, epoch, ctx.rank, ctx.world, config.batch_size, skip)
            loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                                 num_workers=config.num_workers, collate_fn=_collate, drop_last=True,
                                                 pin_memory=ctx.device.type == "cuda")
            for batch in loader:
                with torch.autocast(ctx.device.type, dtype=autocast_dtype, enabled=config.amp):
                    loss, logs, predicted = _run_step(step_module, batch, family, step, ctx.device)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                last_logs = {**logs, "lr": scheduler.get_last_lr()[0]}
                if ctx.rank == 0:
                    if not math.isfinite(logs["loss"]):
                        raise RuntimeError(f"loss became {logs['loss']} at step {step}; lower the learning rate")
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logs['loss']:.4f}", iou=f"{logs['iou']:.3f}")
                    if writer is not None and (step % config.log_every == 0 or step == 1):
                        for name, value in last_logs.items():
                            writer.add_scalar(f"train/{name}", value, step)
                    if writer is not None and config.image_every and step % config.image_every == 0:
                        writer.add_image("train/overlay", _overlay_grid(batch, predicted, family), step,
                                         dataformats="HWC")
                    if step % config.save_every == 0 or step == config.iterations:
                        save(checkpoint_path)
                        if config.keep_every and step % config.keep_every == 0:
                            save(out / "checkpoints" / f"step_{step:07d}.pth")
                if val_data is not None and config.val_every and step % config.val_every == 0 \
                        and step < config.iterations:
                    validation = _validate_on_rank0(ctx, model, config, val_data, writer, step)
                    model.train(not config.freeze_bn)
                if step >= config.iterations:
                    break
        if val_data is not None:
            validation = _validate_on_rank0(ctx, model, config, val_data, writer, step)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if ctx.initialised_here:
            dist.barrier()
            dist.destroy_process_group()
    return {"step": step, "logs": last_logs, "validation": validation, "seconds": time.time() - started,
            "checkpoint": str(checkpoint_path), "world_size": ctx.world}


def _validate_on_rank0(ctx: _Dist, model, config, val_data, writer, step) -> dict:
    result = {}
    if ctx.rank == 0:
        from vosrt.training.evaluate import evaluate_folder
        result = evaluate_folder(model, config, val_data, max_videos=config.val_videos)
        if writer is not None:
            for name, value in result.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"val/{name}", value, step)
    if ctx.world > 1:
        dist.barrier()
    return result


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in the train extra; training still works without it
        return None
    return SummaryWriter(str(folder))


def _overlay_grid(batch: dict, predicted: torch.Tensor, family: str) -> np.ndarray:
    """First sample of the batch: frames on top, ground truth below, prediction at the bottom."""
    from vosrt.sdk.masks import davis_palette

    palette = davis_palette().astype(np.float32)
    if family == "stcn":
        images = batch["images"][0].permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
        truth = batch["labels"][0].numpy()  # [T, H, W]
        pred = np.concatenate([truth[:1], predicted[0].cpu().numpy()])
    else:
        images = batch["images"][0].permute(1, 2, 3, 0).numpy()  # [L, H, W, 3]
        truth = batch["foreground"][0, 0].numpy().astype(np.int64)
        pred = predicted[0].cpu().numpy()
    rows = []
    for labels in (None, truth, pred):
        tiles = []
        for t in range(images.shape[0]):
            tile = images[t] * 255
            if labels is not None:
                colour = palette[labels[t]]
                alpha = (labels[t] > 0)[..., None] * 0.5
                tile = tile * (1 - alpha) + colour * alpha
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    return np.clip(np.concatenate(rows, axis=0), 0, 255).astype(np.uint8)
