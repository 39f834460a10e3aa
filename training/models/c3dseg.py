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

The original 3DC-Seg network (its published bmvc_final.pth) loads too, mapped by :func:`from_3dc_seg` into
``decoder_style="3dc-seg"`` (no GroupNorm, ReLU before the refinement convolutions), no D²Conv3D layers,
``bn_eps=1e-5`` and its own input statistics (``mean`` = PIXEL_MEAN/255, ``std`` 1).
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
    # "d2conv3d": refinement convolutions Conv3d → ReLU → GroupNorm, upsampling with align_corners (the public
    # D²Conv3D code); "3dc-seg": the 3DC-Seg code's refinement modules, ReLU → Conv3d without norm (no ReLU
    # before convFS1), upsampling without align_corners, as its published bmvc_final.pth was trained
    decoder_style: str = "d2conv3d"
    bn_eps: float = 1e-3                 # encoder batch norms; 1e-5 in the 3DC-Seg code (nn.BatchNorm3d default)


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


DECODER_STYLES = ("d2conv3d", "3dc-seg")


class Refine3d(nn.Module):
    """Refinement module: fuse encoder features ``f`` with the coarser decoder state ``pm`` (upsampled).

    ``style`` "d2conv3d": each convolution is Conv3d → ReLU → GroupNorm; "3dc-seg": a bare Conv3d (kept as
    ``.0`` of a Sequential so both share names) with a ReLU before every one but convFS1, no norm.
    """

    def __init__(self, in_channels: int, planes: int, norm_groups: int = 1, style: str = "d2conv3d"):
        super().__init__()
        self.style = style
        if style == "3dc-seg":
            def conv(cin, cout):
                return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1))
        else:
            def conv(cin, cout):
                return _conv_relu_norm(cin, cout, norm_groups)
        self.convFS1 = conv(in_channels, planes)
        self.convFS2 = conv(planes, planes)
        self.convFS3 = conv(planes, planes)
        self.convMM1 = conv(planes, planes)
        self.convMM2 = conv(planes, planes)

    def forward(self, f: torch.Tensor, pm: torch.Tensor) -> torch.Tensor:
        """f ``[N, Cin, T, h, w]``, pm ``[N, planes, T', h', w']`` (coarser) → ``[N, planes, T, h, w]``."""
        if self.style == "3dc-seg":
            s = self.convFS1(f)
            s = s + self.convFS3(F.relu(self.convFS2(F.relu(s))))
            m = s + F.interpolate(pm, size=s.shape[-3:], mode="trilinear", align_corners=False)
            return m + self.convMM2(F.relu(self.convMM1(F.relu(m))))
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
        if cfg.decoder_style not in DECODER_STYLES:
            raise UserError(f"decoder_style: expected one of {', '.join(DECODER_STYLES)}, got {cfg.decoder_style!r}")
        self.rf3 = Refine3d(layer_widths[2], cfg.mdim, cfg.norm_groups, cfg.decoder_style)
        self.rf2 = Refine3d(layer_widths[1], cfg.mdim, cfg.norm_groups, cfg.decoder_style)
        self.rf1 = Refine3d(layer_widths[0], cfg.mdim, cfg.norm_groups, cfg.decoder_style)
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

    H and W are multiples of 32 (``size_multiple``), as the published code pads every input: other sizes run
    (the refinement modules resample to the finer grid) but compute another network than the published one on
    the padded frame (probabilities up to 0.22 apart at 64x80 against 64x96), so packages and validation sizes
    are refused at them. ``clip_length`` (8) is the length it was trained on.
    """

    family = FAMILY
    size_multiple = 32

    def __init__(self, cfg: C3DSegConfig):
        super().__init__()
        self.cfg = cfg
        self.clip_length = cfg.clip_length
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(INPUT_STD).view(3, 1, 1, 1))
        self.encoder = IrCSN(cfg.depths, cfg.planes, cfg.stem_width, cfg.bn_eps)
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
    prefix, the 3DC-Seg network's names are mapped (:func:`from_3dc_seg`); any other state_dict is returned
    unchanged."""
    if state_dict and f"{_D2CONV3D_PREFIX}encoder.stem.conv1.weight" in state_dict \
            and all(k.startswith(_D2CONV3D_PREFIX) for k in state_dict):
        return {k[len(_D2CONV3D_PREFIX):]: v for k, v in state_dict.items()}
    if "decoders.0.GC.conv_l1.weight" in state_dict and \
            ("encoder.conv1.weight" in state_dict or "encoder.resnet.conv1.weight" in state_dict):
        return from_3dc_seg(state_dict)
    return state_dict


# The 3DC-Seg network (github:sabarim/3DC-Seg network/models.py SaliencyNetwork, run_configs/bmvc_final.yaml):
# its refinement modules RF4 (1/16), RF3 (1/8), RF2 (1/4) are rf3, rf2, rf1 here.
_3DC_SEG_REFINE = {"RF4": "rf3", "RF3": "rf2", "RF2": "rf1"}


def from_3dc_seg(state_dict: dict) -> dict:
    """A state_dict of the 3DC-Seg network (its published bmvc_final.pth, "module." removed) in this module's names.

    - The encoder registers the ir-CSN twice (``encoder.resnet.*``, with the Kinetics classifier ``fc``, and
      ``encoder.conv1/bn1/layerN``, the same modules): ``encoder.conv1/bn1`` become ``encoder.stem.conv1/bn1``;
      the ``resnet`` copy (used where the other is absent), ``fc``, the unused mask-input ``conv1_p`` and the
      batch-norm counters are dropped.
    - ``encoder.mean/std`` [1,3,1,1,1] hold 0–255 values applied as ``(255·x − mean)/std/255``: they become the
      mean/255 and std of RGB in [0, 1] (std 1 in the published configuration).
    - ``decoders.0.GC`` → ``decoder.gc``; ``RFk.convX.weight`` → ``rfj.convX.0.weight``; the two-class head
      ``pred2`` (softmax over background/foreground) becomes the one foreground logit l₁ − l₀, whose sigmoid is
      that softmax's foreground probability (the ×4 trilinear upsampling after it is linear). The deep
      supervision heads ``pred3/4/5`` are never used by the forward pass and are dropped.
    Names of no known part are kept, so a strict load names them.
    """
    out = {}
    for prefix in ("encoder.resnet.", "encoder."):   # the second (the network's own path) wins where both exist
        for key, value in state_dict.items():
            if not key.startswith(prefix) or key.endswith("num_batches_tracked"):
                continue
            rest = key[len(prefix):]
            if rest.startswith(("conv1.", "bn1.")):
                out["encoder.stem." + rest] = value
            elif rest.startswith("layer"):
                out["encoder." + rest] = value
    for key, value in state_dict.items():
        if key.startswith(("encoder.", "decoders.0.pred")) or key.endswith("num_batches_tracked"):
            continue
        if key.startswith("decoders.0."):
            head, _, tail = key[len("decoders.0."):].partition(".")
            if head == "GC":
                out["decoder.gc." + tail] = value
                continue
            if head in ("convG1", "convG2"):
                out[f"decoder.{head}.{tail}"] = value
                continue
            if head in _3DC_SEG_REFINE and tail.count(".") == 1:
                conv, _, param = tail.partition(".")
                out[f"decoder.{_3DC_SEG_REFINE[head]}.{conv}.0.{param}"] = value
                continue
        out[key] = value
    for key, value in state_dict.items():
        if key.startswith("encoder.") and not key.startswith(("encoder.resnet.", "encoder.conv1", "encoder.bn1.",
                                                              "encoder.layer", "encoder.mean", "encoder.std")):
            out[key] = value   # an unknown encoder part: left for the strict load to name
    if "encoder.mean" in state_dict:
        out["mean"] = state_dict["encoder.mean"].reshape(3, 1, 1, 1) / 255.0
    if "encoder.std" in state_dict:
        out["std"] = state_dict["encoder.std"].reshape(3, 1, 1, 1).clone()
    for param in ("weight", "bias"):
        pred = state_dict.get(f"decoders.0.pred2.{param}")
        if pred is not None:
            out[f"decoder.pred.{param}"] = (pred[1:2] - pred[0:1]) if pred.shape[0] == 2 else pred
    return out


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
    if "decoder.rf3.convFS1.2.weight" not in state_dict and "decoder.rf3.convFS1.0.weight" in state_dict:
        # refinement convolutions without norms: the 3DC-Seg network, whose batch norms keep PyTorch's epsilon
        found.update(decoder_style="3dc-seg", bn_eps=1e-5)
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
