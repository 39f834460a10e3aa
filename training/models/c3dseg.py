"""3DC-Seg with D²Conv3D: a 3D encoder–decoder for unsupervised video object segmentation.

Mirrors Fig. 2 of Mahadevan et al. (BMVC 2020) as configured by the public D²Conv3D code (Schmidt et
al., WACV 2022, run "xyz"):

    clip [N,3,8,H,W] ─ ir-CSN ─ e1 (1/4) ─ e2 (1/8) ─ e3 (1/16) ─ e4 (1/32)
    e4 → GC3d (global convolution, 7-tap separable (1,7,1)/(1,1,7) paths) → +residual 3×3×3 pair → m4
    m3 = rf3(e3, m4), m2 = rf2(e2, m3), m1 = rf1(e1, m2)      refinement modules, D²Conv3D in rf3 and rf2
    logits = ×4 trilinear upsampling of pred(relu(m1))        [N,1,T,H,W]

Refinement convolutions are Conv3d(3×3×3) → ReLU → GroupNorm(1); the modules at 1/16 (rf3) and 1/8 (rf2)
have every 3×3×3 convolution replaced by a modulated D²Conv3D. The network takes a clip already
normalised with ``input_mean`` / ``input_std`` (the Kinetics statistics of the public code, for RGB in
[0, 1]); the published checkpoints carry them as the ``mean`` / ``std`` buffers, kept here so they load
with ``strict=True``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vosrt.sdk.errors import UserError
from vosrt.training.models.csn import DEPTHS, IrCSN
from vosrt.training.models.d2conv import replace_conv3d

INPUT_MEAN = (0.43216, 0.394666, 0.37645)  # RGB, images in [0, 1]
INPUT_STD = (0.22803, 0.22145, 0.216989)
CLIP_LENGTH = 8
FAMILY = "3dc-seg"  # this module's row in vosrt.sdk.families


@dataclass
class C3DSegConfig:
    """Widths and depths of a 3DC-Seg network (the defaults are the published model)."""

    depths: tuple = DEPTHS[152]          # ir-CSN bottlenecks per stage
    planes: tuple = (64, 128, 256, 512)  # bottleneck widths; stage outputs are 4× these
    stem_width: int = 64
    mdim: int = 256                      # decoder width
    gc_width: int = 256                  # inner width of the global-convolution paths
    gc_kernel: int = 7
    norm_groups: int = 1                 # GroupNorm groups in the refinement modules
    d2conv_layers: tuple = ("rf3", "rf2")
    modulation: bool = True
    clip_length: int = CLIP_LENGTH


VARIANTS = {
    FAMILY: C3DSegConfig(),
    # ir-CSN-50 depth at a quarter of the widths, decoder at 64 channels: sized for CPU demos and tests.
    "3dc-seg-lite": C3DSegConfig(depths=DEPTHS[50], planes=(16, 32, 64, 128), stem_width=16, mdim=64,
                                 gc_width=64),
}


class GC3d(nn.Module):
    """Global convolution bridge: two separable large-kernel paths, (1,k,1)→(1,1,k) and (1,1,k)→(1,k,1), summed."""

    def __init__(self, in_channels: int, out_channels: int, width: int, kernel: int = 7):
        super().__init__()
        half = kernel // 2
        self.conv_l1 = nn.Conv3d(in_channels, width, (1, kernel, 1), padding=(0, half, 0))
        self.conv_l2 = nn.Conv3d(width, out_channels, (1, 1, kernel), padding=(0, 0, half))
        self.conv_r1 = nn.Conv3d(in_channels, width, (1, 1, kernel), padding=(0, 0, half))
        self.conv_r2 = nn.Conv3d(width, out_channels, (1, kernel, 1), padding=(0, half, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_l2(self.conv_l1(x)) + self.conv_r2(self.conv_r1(x))


def _conv_relu_norm(in_channels: int, out_channels: int, norm_groups: int) -> nn.Sequential:
    # Index names 0/1/2 are part of the checkpoint format (".0.weight", ".2.weight").
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.ReLU(),
                         nn.GroupNorm(norm_groups, out_channels))


class Refine3d(nn.Module):
    """Refinement module: fuse encoder features ``f`` with the coarser decoder state ``pm`` (upsampled)."""

    def __init__(self, in_channels: int, planes: int, norm_groups: int = 1):
        super().__init__()
        self.convFS1 = _conv_relu_norm(in_channels, planes, norm_groups)
        self.convFS2 = _conv_relu_norm(planes, planes, norm_groups)
        self.convFS3 = _conv_relu_norm(planes, planes, norm_groups)
        self.convMM1 = _conv_relu_norm(planes, planes, norm_groups)
        self.convMM2 = _conv_relu_norm(planes, planes, norm_groups)

    def forward(self, f: torch.Tensor, pm: torch.Tensor) -> torch.Tensor:
        """f ``[N, Cin, T, h, w]``, pm ``[N, planes, T', h', w']`` (coarser) → ``[N, planes, T, h, w]``."""
        s = self.convFS1(f)
        s = s + self.convFS3(self.convFS2(s))
        m = s + F.interpolate(pm, size=s.shape[-3:], mode="trilinear", align_corners=True)
        return m + self.convMM2(self.convMM1(m))


class Decoder(nn.Module):
    """GC3d bridge at 1/32, refinement modules at 1/16, 1/8, 1/4, prediction head and ×4 upsampling."""

    def __init__(self, layer_widths, cfg: C3DSegConfig):
        super().__init__()
        self.gc = GC3d(layer_widths[3], cfg.mdim, cfg.gc_width, cfg.gc_kernel)
        self.convG1 = nn.Conv3d(cfg.mdim, cfg.mdim, 3, padding=1)
        self.convG2 = nn.Conv3d(cfg.mdim, cfg.mdim, 3, padding=1)
        self.rf3 = Refine3d(layer_widths[2], cfg.mdim, cfg.norm_groups)
        self.rf2 = Refine3d(layer_widths[1], cfg.mdim, cfg.norm_groups)
        self.rf1 = Refine3d(layer_widths[0], cfg.mdim, cfg.norm_groups)
        self.pred = nn.Conv3d(cfg.mdim, 1, 3, padding=1)
        unknown = [name for name in cfg.d2conv_layers if name not in ("rf1", "rf2", "rf3")]
        if unknown:
            raise UserError(f"d2conv_layers: expected names among rf1, rf2, rf3, got {unknown}")
        replace_conv3d(self, cfg.d2conv_layers, modulation=cfg.modulation)

    def forward(self, e1, e2, e3, e4) -> torch.Tensor:
        x = self.gc(e4)
        m4 = x + self.convG2(F.relu(self.convG1(F.relu(x))))
        m3 = self.rf3(e3, m4)
        m2 = self.rf2(e2, m3)
        m1 = self.rf1(e1, m2)
        p1 = self.pred(F.relu(m1))  # [N, 1, T, H/4, W/4]
        return F.interpolate(p1, scale_factor=(1, 4, 4), mode="trilinear")


class C3DSeg(nn.Module):
    """3DC-Seg network: ``forward(clip [N,3,T,H,W], normalised) -> foreground logits [N,1,T,H,W]``.

    H and W should be multiples of 32 for the 1/32 stage to tile exactly (other sizes work; the
    refinement modules resample to the finer grid). ``clip_length`` (8) is the length it was trained on.
    """

    family = FAMILY

    def __init__(self, cfg: C3DSegConfig):
        super().__init__()
        self.cfg = cfg
        self.clip_length = cfg.clip_length
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(INPUT_STD).view(3, 1, 1, 1))
        self.encoder = IrCSN(cfg.depths, cfg.planes, cfg.stem_width)
        self.decoder = Decoder(self.encoder.layer_widths, cfg)

    @property
    def input_mean(self) -> tuple[float, float, float]:
        """Per-channel RGB mean subtracted from [0, 1] images before the network."""
        return tuple(float(v) for v in self.mean.flatten())

    @property
    def input_std(self) -> tuple[float, float, float]:
        """Per-channel RGB standard deviation dividing [0, 1] images before the network."""
        return tuple(float(v) for v in self.std.flatten())

    def normalize(self, clip: torch.Tensor) -> torch.Tensor:
        """RGB clip in [0, 1] ``[N, 3, T, H, W]`` → the network's input."""
        return (clip - self.mean) / self.std

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip ``[N, 3, T, H, W]`` (normalised) → foreground logits ``[N, 1, T, H, W]``."""
        return self.decoder(*self.encoder(clip))


def _make_config(name: str, overrides: dict) -> C3DSegConfig:
    from vosrt.training.models import variant_config
    return variant_config(C3DSegConfig, VARIANTS, name, overrides, "3DC-Seg")


def build(name: str = FAMILY, **overrides) -> C3DSeg:
    """Build ``3dc-seg`` or ``3dc-seg-lite`` with random weights; ``overrides`` change C3DSegConfig fields."""
    model = C3DSeg(_make_config(name, overrides))
    model.config = {"model": name, **overrides}
    return model


def matches_state_dict(state_dict: dict) -> bool:
    """True for state_dicts with the public D²Conv3D network's / this module's naming
    (``encoder.stem.conv1.weight``, ``decoder.gc.*``, ``decoder.rf3.*``); see :func:`adapt_state_dict` for the
    published files' wrapping."""
    return ("encoder.stem.conv1.weight" in state_dict
            and any(k.startswith("decoder.gc.") for k in state_dict)
            and any(k.startswith("decoder.rf3.") for k in state_dict))


# The public D²Conv3D trainer saves the experiment module (SaliencyModel, experiments/saliency.py), which holds
# the network as its ``model`` attribute, so every key of its checkpoints ("model" entry of trainer.py's
# save_checkpoint; "module." first under DistributedDataParallel, stripped before this) starts with "model.".
_D2CONV3D_PREFIX = "model."


def adapt_state_dict(state_dict: dict) -> dict:
    """A published state_dict in this module's names: the D²Conv3D trainer's ``model.``-prefixed keys lose the
    prefix; any other state_dict is returned unchanged."""
    if state_dict and f"{_D2CONV3D_PREFIX}encoder.stem.conv1.weight" in state_dict \
            and all(k.startswith(_D2CONV3D_PREFIX) for k in state_dict):
        return {k[len(_D2CONV3D_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


def config_from_state_dict(state_dict: dict) -> dict:
    """The config overrides a state_dict in this module's names needs, read off its weights (encoder depths and
    widths, decoder widths, which refinement modules hold D²Conv3D layers and whether they modulate); empty for
    the published configuration (run_scripts/xyz.sh of the public D²Conv3D code)."""
    def shape(key):
        return tuple(state_dict[key].shape)

    depths = tuple(len({k.split(".")[2] for k in state_dict if k.startswith(f"encoder.layer{stage}.")})
                   for stage in range(1, 5))
    d2 = tuple(rf for rf in ("rf3", "rf2", "rf1") if f"decoder.{rf}.convFS1.0.deform_params.weight" in state_dict)
    found = {"depths": depths, "planes": tuple(shape(f"encoder.layer{s}.0.conv1.weight")[0] for s in range(1, 5)),
             "stem_width": shape("encoder.stem.conv1.weight")[0], "mdim": shape("decoder.convG1.weight")[0],
             "gc_width": shape("decoder.gc.conv_l1.weight")[0], "gc_kernel": shape("decoder.gc.conv_l1.weight")[3],
             "d2conv_layers": d2}
    if d2:
        predicted = shape(f"decoder.{d2[0]}.convFS1.0.deform_params.weight")
        points = predicted[2] * predicted[3] * predicted[4]
        if predicted[0] not in (3, 3 + points):
            # the public code's Size/XY/XXZ-conditioned variants predict 1 or 2 scales; the operator here takes 3
            raise UserError(f"decoder.{d2[0]}: its D²Conv3D layers predict {predicted[0]} channels; vosrt's D²Conv3D "
                            f"takes 3 dilations (t, y, x), with or without {points} modulations ({3} or {3 + points})")
        found["modulation"] = predicted[0] == 3 + points
    defaults = asdict(VARIANTS[FAMILY])
    return {k: v for k, v in found.items() if defaults[k] != v}


def package_graphs(model: C3DSeg, top_k: int = 20) -> dict:
    """The graph of a 3DC-Seg package (``vosrt.training.graphs.graphs_for``): ``segment_clip``
    (``top_k`` is unused: the family has no memory read)."""
    from vosrt.training.graphs import GraphSpec, SegmentClipGraph

    clip_length = int(getattr(model, "clip_length", CLIP_LENGTH))

    def clip(height, width, clip_length=clip_length, generator=None, **_):
        return (torch.rand(1, 3, clip_length, height, width, generator=generator),)

    return {"segment_clip": GraphSpec.of(FAMILY, "segment_clip", SegmentClipGraph(model), clip)}
