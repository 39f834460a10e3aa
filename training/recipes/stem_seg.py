"""The STEm-Seg training recipe.

Published schedule (facts from the public STEm-Seg code, DAVIS configuration stemseg/config/davis_1.yaml
over defaults.yaml): batch 2, 8-frame clips, 50k iterations, weight decay 1e-4; losses weighted Lovász 1,
variance smoothness 10, seediness 1 (:mod:`vosrt.training.stem_seg_step`). The public code optimises
with SGD (lr 1e-3, Nesterov momentum 0.9); the generic loop here uses Adam, so the default learning rate
is Adam's usual 1e-4 instead. Its learning rate decays exponentially from iteration 40k, by ×0.1 over
10k iterations (LR_DECAY_TYPE "exponential", LR_EXP_DECAY_START 40000, LR_EXP_DECAY_STEPS 10000,
stemseg/training/exponential_lr.py); the generic loop's step schedule approximates that by one ×0.1 step
at 40k. The ResNet's batch norm is frozen (its statistics are buffers), the decoders use GroupNorm. A run that starts
from weights (``--init``) keeps the ResNet's stem and res2 as they are (``freeze_stages`` 2: MODEL.BACKBONE.
FREEZE_AT_STAGE 2, stemseg/modeling/backbone/resnet.py ``_freeze_backbone``); one from scratch trains them.

Deviations in the data (documented, not the published sampler): the public DAVIS sampler
(stemseg/data/davis_data_loader.py) takes 8 frames evenly spaced (rounded ``linspace``) over a span of
16 frames (DATA.DAVIS.FRAME_GAP_LOWER/UPPER 16), flips horizontally and reverses the clip each with
probability 0.5 and resizes the frames to a short side of 736 (long side at most 1248); here a clip is 8
frames drawn at random from a window of ``max_window`` (16), one resize-crop-flip to ``size``
(480×864 by default), and no reversal. The validation ``clip_overlap`` (4) is the public YouTube-VIS /
KITTI-MOTS inference overlap; its DAVIS one is 6, for 16-frame clips.

Data: ``--data generated`` trains on multi-instance clips generated on the fly; ``--data FILE.json`` on a
YouTube-VIS 2019/2021 or OVIS annotation file (images beside it); ``--data ROOT`` on KITTI-MOTS when ROOT
holds ``instances/`` or ``instances_txt/`` (its train split of 12 sequences by default: option
``kitti_split``); otherwise DAVIS-layout folders whose annotations hold
instance ids (DAVIS 2017/2019 unsupervised). Category models (``num_classes`` in ``model_overrides``)
learn the datasets' category ids. Validation streams the
videos through the InstanceSegmenter and scores them by the DAVIS unsupervised protocol.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vosrt.training.data.instance_clips import FolderInstanceClips, GeneratedInstanceClips, KittiMOTSClips, VISJsonClips
from vosrt.sdk.errors import UserError
from vosrt.training.models.stem_seg import CLIP_LENGTHS, FAMILY, MIN_SIZE, VARIANTS
from vosrt.training.recipes import Recipe
from vosrt.training.recipes.stcn import GENERATED, _folders
from vosrt.training.stem_seg_step import WEIGHTS, StemSegTrainStep


@dataclass
class StemSegOptions:
    """STEm-Seg's training options (nested under ``"stem-seg"`` in a config file)."""

    clip_length: int = 8
    max_window: int = 16                  # folders: frames a clip is drawn from
    max_instances: int = 10               # instance slots per sample (--data generated: clips of 1-3 objects)
    weights: dict = field(default_factory=lambda: dict(WEIGHTS))
    samples_per_epoch: int = 1000         # --data generated: samples per epoch
    clip_overlap: int = 4                 # validation session
    min_seediness: float = 0.8            # validation session
    kitti_split: str = "train"            # KITTI-MOTS --data: train (its 12 training sequences and 0050), val or all


class StemSegRecipe(Recipe):
    family = FAMILY
    pretrained_frozen_stages = 2   # the public code's FREEZE_AT_STAGE: stem and res2
    options = StemSegOptions
    min_size = MIN_SIZE
    session_options = ("clip_overlap", "min_seediness")

    def schedule(self, stage):
        self.check_stage(stage)
        return dict(batch_size=2, iterations=50000, lr=1e-4, weight_decay=1e-4, lr_steps=[40000], size=[480, 864])

    def backbone_stages(self, model):
        body = model.backbone.body
        return [body.stem, body.layer1, body.layer2, body.layer3, body.layer4]

    def build_dataset(self, config, data):
        o = config.options
        size = tuple(int(s) for s in config.size)
        if [str(d) for d in data] == [GENERATED]:
            return GeneratedInstanceClips(clip_length=o.clip_length, size=size, max_instances=min(o.max_instances, 3),
                                          samples_per_epoch=o.samples_per_epoch, seed=config.seed)
        common = dict(size=size, clip_length=o.clip_length, max_window=o.max_window, max_instances=o.max_instances,
                      repeat=config.repeat, seed=config.seed)
        sources = [Path(d) for d in data]
        # (generated clips beside folders are refused before, by train.build_dataset, for every family)
        alone = [str(d) for d in data if Path(d).suffix == ".json" or _is_kitti_mots(Path(d))]
        if len(sources) > 1 and alone:
            # only DAVIS-layout folders combine; these fell through to the folder reader ("dataset folder not
            # found: valid.json" for a file that is there)
            raise UserError(f"--data: {alone[0]} trains alone (generated clips, a YouTube-VIS / OVIS JSON and a "
                            f"KITTI-MOTS folder each make a dataset of their own; DAVIS-layout folders can be "
                            f"combined); give --data {alone[0]} only")
        if len(sources) == 1 and sources[0].suffix == ".json":
            dataset = VISJsonClips(sources[0], **common)                    # YouTube-VIS 2019/2021, OVIS
            _check_categories(config, sources[0], max(dataset.categories))
            return dataset
        if len(sources) == 1 and _is_kitti_mots(sources[0]):
            _check_categories(config, sources[0], 2)                        # 1 car, 2 pedestrian
            return KittiMOTSClips(sources[0], split=o.kitti_split, **common)
        return FolderInstanceClips(_folders(data, task="unsupervised"), **common)

    def check_options(self, options: StemSegOptions, source: str) -> None:
        """UserError for a sample of no instance slots (it failed in the sampler or the loss, with a traceback), and
        for loss weights of unknown names (ignored, without a word) or that are not numbers ≥ 0 (a TypeError at
        the first step)."""
        if options.max_instances < 1:
            raise UserError(f"{source}: stem-seg option max_instances should be ≥ 1, got {options.max_instances}")
        weights = options.weights
        unknown = sorted(set(weights) - set(WEIGHTS))
        wrong = [name for name, value in weights.items() if name in WEIGHTS and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0)]
        if unknown or wrong:
            raise UserError(f"{source}: stem-seg option weights should map some of {', '.join(WEIGHTS)} to numbers ≥ "
                            f"0, got {json.dumps(weights, default=repr)}")

    def step_module(self, model, config):
        # the decoder pools time for the model's clip length (the public code's table), and the session streams
        # clips of that length: training clips of another failed deep in the decoder (4 frames for a model of 8)
        # or trained what the session does not run (16)
        wanted, built = config.options.clip_length, model.clip_length
        if wanted != built:
            other = (f', or a model for {wanted} frames: "model_overrides": {{"clip_length": {wanted}}}'
                     if wanted in CLIP_LENGTHS else "")
            raise UserError(f"stem-seg option clip_length: {config.model}'s decoder is built for clips of {built} "
                            f"frames, got {wanted}; give \"{FAMILY}\": {{\"clip_length\": {built}}} in the --config "
                            f"file{other} (the lengths a model is built for: "
                            f"{', '.join(map(str, CLIP_LENGTHS))})")
        return StemSegTrainStep(model, config.options.weights)

    def run_step(self, module, batch, step, device):
        return module(batch["images"].to(device), batch["masks"].to(device), batch["categories"].to(device),
                      batch["ignore"].to(device), step=step)

    def overlay_rows(self, batch, predicted):
        images = batch["images"][0].permute(1, 2, 3, 0).numpy()          # [L, H, W, 3]
        masks = batch["masks"][0]                                         # [I, L, H, W]
        truth = (masks * (1 + torch.arange(masks.shape[0]).view(-1, 1, 1, 1))).amax(0)          # [L, H, W] slot ids
        prediction = predicted[0].cpu()[:, None].float()                  # [L, 1, h, w]
        prediction = F.interpolate(prediction, size=truth.shape[-2:], mode="nearest")
        return images, truth.numpy().astype("int64"), prediction[:, 0].numpy().astype("int64")

    def session_settings(self, config):
        return {"overlap": config.options.clip_overlap, "min_seediness": config.options.min_seediness}


def _check_categories(config, data: Path, highest: int) -> None:
    """UserError, before the first step, when the model has a category head too small for the category ids of the
    dataset ``data`` (up to ``highest``): the cross-entropy failed at the first sample carrying a larger one
    ("IndexError: Target 7 is out of bounds"), which may come late in a run."""
    classes = config.model_overrides.get("num_classes", VARIANTS[config.model].num_classes)
    if classes and highest >= classes:
        raise UserError(f"--data {data}: its category ids go up to {highest}, more than {config.model}'s category head "
                        f"scores (num_classes {classes}, background 0 included); give \"model_overrides\": "
                        f"{{\"num_classes\": {highest + 1}}} in the --config file")


def _is_kitti_mots(path: Path) -> bool:
    return (path / "instances").is_dir() or (path / "instances_txt").is_dir()


RECIPE = StemSegRecipe()
