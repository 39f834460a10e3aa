"""The STCN training recipe (facts from the published code):

Adam (weight decay 1e-7), MultiStepLR ×0.1; main training lr 1e-5, batch 4, 150k iterations, decay at
125k, 384×384 crops, frame-gap curriculum; static pre-training lr 1e-5, batch 8, 300k iterations, decay
at 150k. Bootstrapped cross-entropy (20k → 70k, top 15 %). BatchNorm as STCN trains it: the network stays in
``eval()`` mode throughout (running statistics as loaded), and its weight and bias train with the rest
(``bn_affine``; model/model.py gives Adam every parameter). Main training on DAVIS beside YouTube-VOS takes
each DAVIS video 5 times per epoch (``davis_weight``; train.py ``ConcatDataset([davis_dataset]*5 + [yv_dataset])``); static pre-training takes the images under BIG_small/ and
HRSOD_small/ 5 times (``static_weights``; ``[big_dataset, hrsod_dataset]*5``). The published code trains in mixed precision unless told
``--no_amp`` (util/hyper_para.py); here ``--amp`` asks for it (float16 on CUDA), off by default. ``--data generated`` trains on clips generated on the fly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vosrt.sdk.errors import UserError
from vosrt.training.data import GeneratedTripletDataset, StaticSequenceDataset, VideoFolder, VOSTripletDataset, max_skip_at
from vosrt.training.data.folders import split_list
from vosrt.training.models.stcn import FAMILY
from vosrt.training.recipes import Recipe
from vosrt.training.steps import STCNTrainStep

GENERATED = "generated"  # --data value: STCN triplets from clips generated on the fly


def write_generated_hint() -> str:
    """For training that does not take ``--data generated``: the command that writes generated clips as a dataset
    folder (without distractors: 3DC-Seg takes every moving shape for foreground), and the --data that takes it."""
    import shlex

    code = ('from vosrt.sdk.synthetic import generate_dataset; '
            'generate_dataset("synthetic", 64, seed=1, num_distractors=0)')
    return f"write them as a dataset folder with `{shlex.join(['python', '-c', code])}` and give --data synthetic"


@dataclass
class STCNOptions:
    """STCN's training options (nested under ``"stcn"`` in a config file)."""

    skip_curriculum: list = field(default_factory=lambda: [[0.0, 5], [0.1, 10], [0.2, 15], [0.3, 20],
                                                           [0.4, 25], [0.9, 5]])
    start_warm: int = 20000
    end_warm: int = 70000
    top_p: float = 0.15
    generated_clip_size: list = field(default_factory=lambda: [240, 432])  # --data generated: clip H, W
    generated_frames: int = 12           # --data generated: frames per clip
    samples_per_epoch: int = 1000        # --data generated: samples per epoch
    davis_weight: int = 5                # main training on DAVIS beside other folders: samples of each DAVIS video
                                         # per sample of another's (train.py: ConcatDataset([davis] * 5 + [youtube]))
    # static pre-training: samples of each image under a folder of that name per image elsewhere (train.py: "BIG and
    # HRSOD have higher quality, use them more", [big_dataset, hrsod_dataset] * 5)
    static_weights: dict = field(default_factory=lambda: {"BIG_small": 5, "HRSOD_small": 5})
    mem_every: int = 5                   # validation session
    top_k: int = 20                      # validation session


def _folders(paths, task: str = "semi-supervised") -> list[VideoFolder]:
    """The dataset folders of ``--data`` (their train split where they list one); ``task`` ``"unsupervised"``
    (3DC-Seg, STEm-Seg) reads DAVIS's ``Annotations_unsupervised`` where a folder has them."""
    folders = []
    for path in paths:
        path = Path(path)
        split = "train" if split_list(path, "train") is not None or (path / "train" / "JPEGImages").is_dir() else None
        try:
            folders.append(VideoFolder(path, split=split, task=task))
        except UserError as err:   # the folder's faults, said of the flag that gave it
            raise UserError(f"--data {err}" if not str(err).startswith("--") else str(err)) from None
    return folders


def _is_dataset_folder(path) -> bool:
    """Whether ``path`` is a DAVIS / YouTube-VOS folder (else a folder of image/mask pairs)."""
    path = Path(path)
    return (path / "JPEGImages").is_dir() or (path / "train" / "JPEGImages").is_dir()


class STCNRecipe(Recipe):
    family = FAMILY
    options = STCNOptions
    stages = ("main", "static")
    session_options = ("mem_every", "top_k")

    def schedule(self, stage: str) -> dict:
        self.check_stage(stage)
        # eval() mode throughout, yet Adam takes every weight, BatchNorm's affine included (model/model.py)
        published = dict(bn_affine=True)
        return dict(published, batch_size=8, iterations=300000, lr_steps=[150000], lr=1e-5) if stage == "static" else published

    def check_options(self, options: STCNOptions, source: str) -> None:
        """UserError for a frame-gap curriculum that is not a non-empty list of [fraction, max_skip] pairs, a
        bootstrapping fraction outside (0, 1], generated clips of no frames or smaller than 16x16."""
        curriculum = options.skip_curriculum
        if not curriculum or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                     and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
                                     and 0 <= p[0] <= 1 and p[1] >= 1 for p in curriculum):
            raise UserError(f"{source}: stcn option skip_curriculum should be a non-empty list of [fraction of the "
                            f"iterations (0..1), max_skip ≥ 1] pairs, e.g. [[0.0, 5], [0.5, 10]], got {curriculum!r}")
        # a top_p of 0 or less bootstrapped on one pixel after end_warm, without a word
        if not 0 < options.top_p <= 1:
            raise UserError(f"{source}: stcn option top_p should be a fraction of the pixels in (0, 1], got "
                            f"{options.top_p}")
        # said of the options: the generator named its own arguments (num_frames, height), at the first sample
        size = options.generated_clip_size
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in size)):
            raise UserError(f"{source}: stcn option generated_clip_size should be [height, width], both ≥ 16, got "
                            f"{size!r}")
        if options.generated_frames < 1:
            raise UserError(f"{source}: stcn option generated_frames should be ≥ 1, got {options.generated_frames}")
        weights = options.static_weights
        if not isinstance(weights, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                    for v in weights.values()):
            raise UserError(f"{source}: stcn option static_weights should map folder names to whole numbers ≥ 1 "
                            f"(samples of each image under that folder per image elsewhere), got {weights!r}")
        if options.davis_weight < 1:   # 0 left DAVIS out of a mix without a word
            raise UserError(f"{source}: stcn option davis_weight should be ≥ 1 (samples of each DAVIS video per "
                            f"sample of another folder's), got {options.davis_weight}")

    def build_dataset(self, config, data):
        o = config.options
        if [str(d) for d in data] == [GENERATED]:
            if config.stage != "main":
                raise UserError(f"--data generated: clips generated on the fly feed stcn main training and stem-seg "
                                f"only; {write_generated_hint()}")
            return GeneratedTripletDataset(size=tuple(config.size), clip_size=tuple(o.generated_clip_size),
                                           num_frames=o.generated_frames, max_skip=o.skip_curriculum[0][1],
                                           samples_per_epoch=o.samples_per_epoch, seed=config.seed)
        size = tuple(int(s) for s in config.size)
        if config.stage == "static":
            # a dataset folder gives its training split's annotated frames, as main training takes its videos
            # (every video was taken: a DAVIS folder's val videos, which --val scores, were pre-trained on; a
            # YouTube-VOS folder with train/ was searched for image/mask pairs and refused)
            sources = [_folders([p])[0] if _is_dataset_folder(p) else Path(p) for p in data]
            return StaticSequenceDataset(sources, size=size, repeat=config.repeat, seed=config.seed,
                                         weights=o.static_weights)
        folders = _folders(data)
        mixed = len({folder.layout for folder in folders}) > 1
        weights = [o.davis_weight if mixed and folder.layout == "davis" else 1 for folder in folders]
        return VOSTripletDataset(folders, size=size, max_skip=o.skip_curriculum[0][1], repeat=config.repeat,
                                 seed=config.seed, weights=weights)

    def step_module(self, model, config):
        o = config.options
        return STCNTrainStep(model, o.start_warm, o.end_warm, o.top_p)

    def run_step(self, module, batch, step, device):
        return module(batch["images"].to(device), batch["masks"].to(device), batch["labels"].to(device),
                      batch["selector"].to(device), step)

    def start_epoch(self, dataset, config, epoch, steps_per_epoch):
        if config.stage == "main":
            # STCN changes the gap limit only between epochs
            dataset.set_max_skip(max_skip_at(epoch * steps_per_epoch / config.iterations,
                                             [tuple(v) for v in config.options.skip_curriculum]))

    def overlay_rows(self, batch, predicted):
        images = batch["images"][0].permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
        truth = batch["labels"][0].numpy()  # [T, H, W]
        return images, truth, np.concatenate([truth[:1], predicted[0].cpu().numpy()])

    def session_settings(self, config):
        return {"mem_every": config.options.mem_every, "top_k": config.options.top_k}


RECIPE = STCNRecipe()
