"""Training recipes: what a family adds to the generic training loop (:mod:`vosrt.training.train`).

A recipe says, for one family: its options (a dataclass, written nested under the family's name in a
config file: ``{"model": "stcn-lite", "iterations": 100, "stcn": {"top_p": 0.2}}``), the published
schedule, the dataset, the module that runs one training step and the batch arguments it takes, what
happens between epochs, and the overlay image logged to TensorBoard. The family table's
``recipe_module`` names the module; it defines ``RECIPE``.

Validation is not a recipe's business: every family validates through its shipped SDK session
(:func:`vosrt.training.validate.validate`), so training-time J&F is the SDK's.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from vosrt.sdk import families
from vosrt.sdk.errors import UserError


class Recipe:
    """Base of the per-family recipes (see the module docstring)."""

    family: str = ""
    options: type = None          # dataclass of the family's training options
    stages: tuple = ("main",)
    min_size: int = 16            # the smallest training crop height and width the family's network takes
    session_options: tuple = ()   # the options session_settings reads (named when the session refuses them)
    pretrained_frozen_stages: int = 0   # backbone stages the published training keeps frozen (from pretrained weights)

    def schedule(self, stage: str) -> dict:
        """Overrides of the generic defaults for the published schedule of ``stage``."""
        return {}

    def backbone_stages(self, model: nn.Module) -> list:
        """The backbone's stages in order (stem, res2, …), for the ``freeze_stages`` option; none by default."""
        return []

    def check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise UserError(f"stage (--stage or \"stage\" in the --config file): {self.family} has the stage(s) "
                            f"{', '.join(self.stages)}, got {stage!r}"
                            + ("; leave --stage out" if len(self.stages) == 1 else ""))

    def check_options(self, options, source: str) -> None:
        """UserError (naming ``source``) for option values the recipe cannot use; types are checked before."""

    def build_dataset(self, config, data: list[str | Path]):
        raise NotImplementedError

    def step_module(self, model: nn.Module, config) -> nn.Module:
        raise NotImplementedError

    def run_step(self, module: nn.Module, batch: dict, step: int, device: torch.device):
        """(loss, logs, predicted) of one batch."""
        raise NotImplementedError

    def start_epoch(self, dataset, config, epoch: int, steps_per_epoch: int) -> None:
        """Between epochs (e.g. a curriculum)."""

    def init_weights(self, model: nn.Module, path: Path) -> bool:
        """Load ``--init`` weights the family reads specially (backbone files); False: not handled."""
        return False

    def overlay_rows(self, batch: dict, predicted: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames ``[T, H, W, 3]`` in 0..1, truth ``[T, H, W]`` ids, prediction ``[T, H, W]`` ids) of
        the first sample of a batch, for the TensorBoard overlay."""
        raise NotImplementedError

    def session_settings(self, config) -> dict:
        """Settings of the validation session (the family's SDK session) from the training options."""
        return {}


def recipe_for(family: str) -> Recipe:
    """The recipe of ``family`` (its row's ``recipe_module``); UserError when it has none."""
    row = families.get(family)
    if row.recipe_module is None:
        raise UserError(f"the {row.name} family has no training recipe")
    return importlib.import_module(row.recipe_module).RECIPE
