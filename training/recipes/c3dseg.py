"""The 3DC-Seg training recipe: Adam lr 1e-5, batch 2, 8-frame clips from 12-frame windows, gradient
clipping at norm 10, Lovász hinge, BatchNorm frozen (the decoder uses GroupNorm). ``--init`` also takes
ir-CSN backbone weights (VMZ Caffe2 ``.pkl`` or its PyTorch conversion) for the encoder alone.

Sources: Adam at lr 1e-5 without weight decay, batch 2, the Lovász hinge (``lovasz_ce``) and gradient
clipping at norm 10 are the public D²Conv3D run (run_scripts/xyz.sh; AdamConfig in config/defaults.py);
it trains 20 epochs with the learning rate ×0.1 after epoch 10 (SchedulerConfig step_size 10, stepped per
epoch in trainer.py), which the 100k iterations here without decay do not follow (the iteration count
is this recipe's own). The 12-frame window is 3DC-Seg's (run_configs/bmvc_final.yaml MAX_TEMPORAL_GAP 12:
8 frames without replacement from 12 consecutive ones, datasets/davis/Davis.py); D²Conv3D's DAVIS
sampler draws 8 with replacement from a centred window of 8. 3DC-Seg's own final run uses Adam lr 5e-5
and binary cross-entropy (bmvc_final.yaml, loss/loss_utils.py). See
:mod:`vosrt.training.data.clips` for the augmentation, which is not the published one."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from vosrt.sdk.errors import UserError
from vosrt.training.data import ForegroundClipDataset
from vosrt.training.models.c3dseg import FAMILY
from vosrt.training.models import read_checkpoint
from vosrt.training.recipes import Recipe
from vosrt.training.recipes.stcn import GENERATED, _folders, write_generated_hint
from vosrt.training.steps import ClipTrainStep


@dataclass
class C3DSegOptions:
    """3DC-Seg's training options (nested under ``"3dc-seg"`` in a config file)."""

    clip_length: int = 8
    max_window: int = 12
    bce_weight: float = 0.0
    clip_overlap: int = 3                # validation session


class C3DSegRecipe(Recipe):
    family = FAMILY
    options = C3DSegOptions
    session_options = ("clip_overlap",)

    def schedule(self, stage):
        self.check_stage(stage)
        return dict(batch_size=2, iterations=100000, lr=1e-5, weight_decay=0.0, lr_steps=[], size=[480, 864],
                    grad_clip=10.0)

    def check_options(self, options: C3DSegOptions, source: str) -> None:
        """UserError for a clip of no frames (it failed in the sampler, with a traceback) and a negative
        bce_weight (no cross-entropy was added, without a word)."""
        if options.clip_length < 1:
            raise UserError(f"{source}: 3dc-seg option clip_length should be a number of frames ≥ 1, got "
                            f"{options.clip_length}")
        if options.bce_weight < 0:
            raise UserError(f"{source}: 3dc-seg option bce_weight should be ≥ 0 (0: the Lovász hinge alone), got "
                            f"{options.bce_weight}")

    def build_dataset(self, config, data):
        if [str(d) for d in data] == [GENERATED]:
            raise UserError(f"--data generated: clips generated on the fly feed stcn main training and stem-seg only; "
                            f"{write_generated_hint()}")
        o = config.options
        return ForegroundClipDataset(_folders(data, task="unsupervised"), size=tuple(int(s) for s in config.size),
                                     clip_length=o.clip_length, max_window=o.max_window, repeat=config.repeat,
                                     seed=config.seed)

    def step_module(self, model, config):
        # the model's clip_length is what its checkpoint, exports and sessions run: training clips of another
        # length trained what they never run, without a word (4-frame clips for an 8-frame model)
        wanted, built = config.options.clip_length, model.clip_length
        if wanted != built:
            raise UserError(f"3dc-seg option clip_length: {config.model} runs clips of {built} frames (its checkpoint, "
                            f"exports and sessions), got {wanted}; give \"3dc-seg\": {{\"clip_length\": {built}}} in the "
                            f"--config file, or a model for {wanted} frames: \"model_overrides\": "
                            f"{{\"clip_length\": {wanted}}}")
        return ClipTrainStep(model, config.options.bce_weight)

    def run_step(self, module, batch, step, device):
        return module(batch["images"].to(device), batch["foreground"].to(device), step)

    def init_weights(self, model, path: Path) -> bool:
        from vosrt.training.models.caffe2_convert import load_backbone_weights
        if path.suffix == ".pkl":
            unused = load_backbone_weights(model, path)
            if unused:   # the classifier and solver state: said, as the public converter insists on knowing
                from vosrt.sdk.errors import first_few

                print(f"note: --init {path}: {len(unused)} blob(s) not used by the encoder ({first_few(unused)})",
                      file=sys.stderr)
            return True
        try:
            read_checkpoint(path)
        except UserError:  # not a whole model: an ir-CSN backbone state_dict
            load_backbone_weights(model, path)
            return True
        return False

    def overlay_rows(self, batch, predicted):
        images = batch["images"][0].permute(1, 2, 3, 0).numpy()  # [L, H, W, 3]
        truth = batch["foreground"][0, 0].numpy().astype("int64")
        return images, truth, predicted[0].cpu().numpy()

    def session_settings(self, config):
        return {"overlap": config.options.clip_overlap}


RECIPE = C3DSegRecipe()
