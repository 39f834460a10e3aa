"""STEm-Seg with D²Conv3D: bottom-up video instance segmentation from spatio-temporal embeddings.

Mirrors Fig. 2 of Athar et al. (ECCV 2020) in the configuration of the D²Conv3D paper (Schmidt et al.,
WACV 2022): a ResNet-50 FPN runs on every frame of a clip; per scale the frames' features are stacked
along time and 3D-convolution decoders turn them into per-pixel outputs at 1/4 resolution:

    clip [N,3,T,H,W] ─ per frame: ResNet-50 (res2..res5) ─ FPN ─ p4, p8, p16, p32    (C = 256 each)
    stacked over T ─┬─ embedding_head: block_32x ─↑─ block_16x ─↑─ block_8x ─↑─ block_4x
                    │       → conv_embedding (E dims, tanh(x/4) + the pixel's (y, x[, t]) coordinates)
                    │       → conv_variance (E − free dims, log bandwidths)
                    ├─ seediness_head (same decoder) → sigmoid seediness
                    └─ semseg_head (optional, same decoder) → class logits + a foreground logit

Each decoder's block_32x (three 3×3×3 convolutions) and block_16x (two) average-pool time by 2 after
their first convolutions (how many depends on the clip length), so the deep blocks see a temporally
condensed clip; ↑ is trilinear upsampling to the next scale (×2 in time where the pooling took it away)
followed by concatenation and a 1×1×1 fusion convolution. In ``stem-seg`` the 3×3×3 convolutions of
block_32x and block_16x of every head are D²Conv3D layers (``deform_params`` + ``deform_conv``).

Parameter names follow the public STEm-Seg code (``backbone.body.*`` for the maskrcnn-benchmark style
ResNet with frozen batch norm and the stride in the 1×1 convolution, ``backbone.fpn.fpn_inner{i}`` /
``fpn_layer{i}``, ``embedding_head.block_32x.0`` …, and the embedding loss's ``free_dim_bandwidths``
buffer), so the published checkpoints load with ``strict=True``; a published checkpoint's plain
``…block_32x.0.weight`` is taken as ``…block_32x.0.deform_conv.weight`` of the D²Conv3D layer, whose
parameter predictor then starts at zero (D = 1), exactly as :func:`vosrt.training.models.d2conv.d2conv_from_conv3d`.

Embeddings (``embedding_mode``): ``"xyff"`` (the DAVIS / YouTube-VIS models) has E = 4 dimensions, two
offset by the pixel's y and x coordinates and two "free" dimensions with a fixed bandwidth 1 / std²;
``"xyt"`` (KITTI-MOTS) has three, offset by t, y, x. Coordinates run over [−a, a] along each axis with
a = max(1, that side / the other side), time over [−time_scale, time_scale]. The predicted bandwidths are
``exp(variance) · 10``.

The network takes BGR images on the 0..255 scale minus the Caffe2 means (as the published weights were
trained); :attr:`StemSeg.input_mean` / :attr:`StemSeg.input_std` express that for RGB in [0, 1], and
:meth:`StemSeg.forward` reorders the channels to BGR itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vosrt.sdk.errors import UserError
from vosrt.training.models.d2conv import replace_conv3d

FAMILY = "stem-seg"  # this module's row in vosrt.sdk.families
BRIDGED_ON_LOAD = ("d2conv_heads",)   # config the loading bridges: plain head convolutions into D²Conv3D layers
CLIP_LENGTH = 8
BGR_MEAN_255 = (102.9801, 115.9465, 122.7717)   # Caffe2 ImageNet means, BGR, 0..255 scale
BANDWIDTH_SCALE = 10.0                          # bandwidth = exp(predicted log variance) · 10
HEADS = ("embedding_head", "seediness_head", "semseg_head")

# How many of the (up to three) pooling slots of a deep block pool time, and the temporal factor of the
# three upsampling steps (32→16, 16→8, 8→4), per clip length: the public code's table.
_TEMPORAL = {2: (0, (1, 1, 1)), 4: (1, (1, 1, 2)), 8: (2, (1, 2, 2)), 16: (3, (2, 2, 2)),
             24: (3, (2, 2, 2)), 32: (3, (2, 2, 2))}
CLIP_LENGTHS = tuple(_TEMPORAL)   # the clip lengths a decoder can be built for
_EMBEDDING_MODES = {"xy": (2, 0), "xyt": (3, 0), "xyf": (3, 1), "xytf": (4, 1), "xyff": (4, 2),
                    "xytff": (5, 2), "xyfff": (5, 3), "ff": (2, 2)}  # (embedding dims, free dims)


@dataclass
class StemSegConfig:
    """Widths and depths of a STEm-Seg network (the defaults are the DAVIS model with a ResNet-50, the
    D²Conv3D paper's STEm-Seg setting). The public STEm-Seg configurations build "R-101-FPN" unless told
    otherwise (stemseg/config/defaults.yaml MODEL.BACKBONE.TYPE; its pre-trained backbone is
    mask_rcnn_R_101_FPN_backbone.pth), whose res4 has 23 bottlenecks: ``depths=(3, 4, 23, 3)``."""

    depths: tuple = (3, 4, 6, 3)              # bottlenecks per ResNet stage (ResNet-50)
    stem_width: int = 64
    bottleneck_width: int = 64                # res2 bottleneck width; doubles per stage
    res2_channels: int = 256                  # res2 output width; doubles per stage
    fpn_channels: int = 256
    head_channels: tuple = (256, 256, 128, 128)    # embedding and seediness decoders (1/32 … 1/4)
    semseg_channels: tuple = (256, 256, 128, 128)  # category decoder
    norm_groups: int = 32                     # GroupNorm groups in the decoders
    embedding_mode: str = "xyff"
    free_dim_stds: tuple = (0.3, 0.3)
    num_classes: int = 0                      # categories incl. background; 0 = no category head
    seediness_head: bool = True               # False: the embedding head predicts seediness itself
    d2conv_heads: tuple = HEADS               # heads whose block_32x / block_16x use D²Conv3D
    modulation: bool = True
    clip_length: int = CLIP_LENGTH


VARIANTS = {
    FAMILY: StemSegConfig(),
    # One bottleneck per stage at a quarter of the backbone widths, 32-channel FPN and narrow decoders:
    # sized for CPU demos and tests.
    "stem-seg-lite": StemSegConfig(depths=(1, 1, 1, 1), stem_width=16, bottleneck_width=16, res2_channels=64,
                                   fpn_channels=32, head_channels=(32, 32, 32, 16),
                                   semseg_channels=(32, 32, 32, 16), norm_groups=4),
}


# ------------------------------------------------------------------------------------------ backbone


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms (buffers, as maskrcnn-benchmark: no
    ``num_batches_tracked``, epsilon 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class Stem(nn.Module):
    """7×7/2 convolution, frozen BN, ReLU, 3×3/2 max-pool: 1/4 resolution."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1×1 (carrying the stride, as the MSRA/Caffe2 ResNets), 3×3, 1×1 with frozen BN and a residual."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int):
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            FrozenBatchNorm2d(out_channels))
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class ResNetBody(nn.Module):
    """``stem`` and ``layer1`` … ``layer4``; returns the four stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self, cfg: StemSegConfig):
        super().__init__()
        self.stem = Stem(cfg.stem_width)
        in_channels = cfg.stem_width
        self.stage_channels = []
        for index, depth in enumerate(cfg.depths):
            width, out_channels = cfg.bottleneck_width << index, cfg.res2_channels << index
            blocks = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(Bottleneck(in_channels, width, out_channels, stride))
                in_channels = out_channels
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self.stage_channels.append(out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for index in range(len(self.stage_channels)):
            x = getattr(self, f"layer{index + 1}")(x)
            outputs.append(x)
        return outputs


class FPN(nn.Module):
    """Feature pyramid: 1×1 lateral ``fpn_inner{i}`` and 3×3 output ``fpn_layer{i}`` per stage (with bias),
    top-down by ×2 bilinear upsampling (to the lateral's size, so any input size works)."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.levels = len(in_channels)
        for index, c in enumerate(in_channels, 1):
            self.add_module(f"fpn_inner{index}", nn.Conv2d(c, channels, 1))
            self.add_module(f"fpn_layer{index}", nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        top = getattr(self, f"fpn_inner{self.levels}")(stages[-1])
        outputs = [getattr(self, f"fpn_layer{self.levels}")(top)]
        for index in range(self.levels - 1, 0, -1):
            lateral = getattr(self, f"fpn_inner{index}")(stages[index - 1])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outputs.insert(0, getattr(self, f"fpn_layer{index}")(top))
        return outputs  # strides 4, 8, 16, 32


class Backbone(nn.Module):
    """``body`` (ResNet) and ``fpn``, the public code's ``nn.Sequential(body, fpn)`` names."""

    def __init__(self, cfg: StemSegConfig):
        super().__init__()
        self.body = ResNetBody(cfg)
        self.fpn = FPN(self.body.stage_channels, cfg.fpn_channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(self.body(images))


# ------------------------------------------------------------------------------------------ decoders


class TemporalUpsample(nn.Module):
    """Trilinear resampling of ``x`` onto ``like``'s (T, h, w) grid (×2 in time and space in the
    published configuration, to the finer map's exact size here); parameter-free."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-3:], mode="trilinear", align_corners=False)


# The smallest input height and width: the decoder's 3×3×3 average pools need a 1/32-scale map of at least 3
# (ceil(H / 32) ≥ 3), which a multiple of 16 first gives at 80.
MIN_SIZE = 80


def _conv_block(in_channels: int, channels: int, convs: int, pools: int, groups: int) -> nn.Sequential:
    # Conv3d(3×3×3) → GroupNorm → ReLU → [temporal avg-pool or identity], repeated; the indices
    # (0, 4, 8 for the convolutions) are the checkpoint format.
    layers = []
    for index in range(convs):
        layers += [nn.Conv3d(in_channels if index == 0 else channels, channels, 3, padding=1),
                   nn.GroupNorm(groups, channels), nn.ReLU(inplace=True),
                   nn.AvgPool3d(3, stride=(2, 1, 1), padding=1) if index < pools else nn.Identity()]
    return nn.Sequential(*layers)


class SqueezeExpandDecoder(nn.Module):
    """The multi-scale 3D decoder shared by the three heads (its ``forward`` returns the 1/4-scale
    features; each head adds its own output convolutions)."""

    def __init__(self, in_channels: int, widths: tuple, clip_length: int, groups: int):
        super().__init__()
        if clip_length not in _TEMPORAL:
            raise UserError(f"clip_length: expected one of {', '.join(map(str, _TEMPORAL))}, got {clip_length}")
        pools, _ = _TEMPORAL[clip_length]
        self.block_32x = _conv_block(in_channels, widths[0], 3, pools, groups)
        self.block_16x = _conv_block(in_channels, widths[1], 2, min(pools, 2), groups)
        self.block_8x = _conv_block(in_channels, widths[2], 1, min(pools, 1), groups)
        self.block_4x = nn.Sequential(nn.Conv3d(in_channels, widths[3], 3, padding=1),
                                      nn.GroupNorm(groups, widths[3]), nn.ReLU(inplace=True))
        self.upsample = TemporalUpsample()
        self.conv_16 = nn.Conv3d(widths[0] + widths[1], widths[1], 1, bias=False)
        self.conv_8 = nn.Conv3d(widths[1] + widths[2], widths[2], 1, bias=False)
        self.conv_4 = nn.Conv3d(widths[2] + widths[3], widths[3], 1, bias=False)

    def features(self, p32, p16, p8, p4) -> torch.Tensor:
        """FPN maps stacked over time ``[N, C, T, h_s, w_s]`` → ``[N, widths[3], T, h/4, w/4]``."""
        x = self.block_32x(p32)
        for block, fuse, fine in ((self.block_16x, self.conv_16, p16), (self.block_8x, self.conv_8, p8),
                                  (self.block_4x, self.conv_4, p4)):
            fine = block(fine)
            x = fuse(torch.cat([self.upsample(x, fine), fine], 1))
        return x


class EmbeddingHead(SqueezeExpandDecoder):
    """Embeddings (with the pixel coordinates added), log variances, and seediness when no separate
    seediness head exists."""

    def __init__(self, in_channels: int, cfg: StemSegConfig):
        super().__init__(in_channels, cfg.head_channels, cfg.clip_length, cfg.norm_groups)
        dims, free = _EMBEDDING_MODES[cfg.embedding_mode]
        self.mode, self.embedding_size, self.variance_channels = cfg.embedding_mode, dims, dims - free
        self.conv_embedding = nn.Conv3d(cfg.head_channels[3], dims, 1, bias=False)
        self.conv_variance = nn.Conv3d(cfg.head_channels[3], dims - free, 1)
        self.conv_seediness = None if cfg.seediness_head else nn.Conv3d(cfg.head_channels[3], 1, 1, bias=False)
        self.register_buffer("time_scale", torch.tensor(1.0))

    def coordinates(self, like: torch.Tensor) -> torch.Tensor:
        """The per-pixel offsets ``[1, E, T, h, w]`` added to the embeddings (zeros on free dimensions)."""
        _, _, frames, height, width = like.shape
        y_abs, x_abs = max(1.0, height / width), max(1.0, width / height)
        y = torch.linspace(-y_abs, y_abs, height, dtype=like.dtype, device=like.device).view(1, height, 1)
        x = torch.linspace(-x_abs, x_abs, width, dtype=like.dtype, device=like.device).view(1, 1, width)
        t = torch.linspace(-1.0, 1.0, frames, dtype=like.dtype, device=like.device).view(frames, 1, 1)
        t = t * self.time_scale.to(like.dtype)
        shape = (frames, height, width)
        axes = {"t": t.expand(shape), "y": y.expand(shape), "x": x.expand(shape)}
        zero = torch.zeros(shape, dtype=like.dtype, device=like.device)
        order = [c for c in "tyx" if c in self.mode]  # the public order: t, then y, then x
        grid = [axes[c] for c in order] + [zero] * (self.embedding_size - len(order))
        return torch.stack(grid, 0)[None]

    def forward(self, p32, p16, p8, p4):
        x = self.features(p32, p16, p8, p4)
        embeddings = torch.tanh(self.conv_embedding(x) * 0.25)
        embeddings = embeddings + self.coordinates(embeddings)       # [N, E, T, h, w]
        log_variances = self.conv_variance(x)                         # [N, E − free, T, h, w]
        seediness = None if self.conv_seediness is None else torch.sigmoid(self.conv_seediness(x))
        return embeddings, log_variances, seediness


class SeedinessHead(SqueezeExpandDecoder):
    """Seediness: the probability that a pixel is a good instance centre ``[N, 1, T, h, w]``."""

    def __init__(self, in_channels: int, cfg: StemSegConfig):
        super().__init__(in_channels, cfg.head_channels, cfg.clip_length, cfg.norm_groups)
        self.conv_out = nn.Conv3d(cfg.head_channels[3], 1, 1, bias=False)

    def forward(self, p32, p16, p8, p4):
        return torch.sigmoid(self.conv_out(self.features(p32, p16, p8, p4)))


class SemsegHead(SqueezeExpandDecoder):
    """Category logits ``[N, num_classes, T, h, w]`` (background first) and a foreground logit."""

    def __init__(self, in_channels: int, cfg: StemSegConfig):
        super().__init__(in_channels, cfg.semseg_channels, cfg.clip_length, cfg.norm_groups)
        self.conv_out = nn.Conv3d(cfg.semseg_channels[3], cfg.num_classes + 1, 1, bias=False)

    def forward(self, p32, p16, p8, p4):
        logits = self.conv_out(self.features(p32, p16, p8, p4))
        return logits[:, :-1], logits[:, -1:]


class EmbeddingLossBuffers(nn.Module):
    """Holds ``free_dim_bandwidths`` ``[1, free dims]`` (1 / std²), where the public code keeps it (its
    embedding loss module), so checkpoints load strictly; the clustering reads it from here too."""

    def __init__(self, free_dim_stds: tuple):
        super().__init__()
        if free_dim_stds:
            stds = torch.tensor([float(s) for s in free_dim_stds])
            self.register_buffer("free_dim_bandwidths", (1.0 / stds ** 2)[None])
        else:
            self.free_dim_bandwidths = None


# ------------------------------------------------------------------------------------------ model


class StemSeg(nn.Module):
    """STEm-Seg: ``forward(clip [N,3,T,H,W] normalised RGB)`` → dict of 1/4-scale maps:

    - ``embeddings`` ``[N, E, T, h, w]``
    - ``bandwidths`` ``[N, E, T, h, w]`` (1 / variance per dimension; free dimensions carry their fixed value)
    - ``log_variances`` ``[N, E − free, T, h, w]`` (before the exp, for the smoothness loss)
    - ``seediness`` ``[N, 1, T, h, w]``
    - with a category head: ``class_logits`` ``[N, num_classes, T, h, w]`` and ``foreground_logits`` ``[N, 1, T, h, w]``
    """

    family = FAMILY
    size_multiple = 16
    min_size = MIN_SIZE

    def __init__(self, cfg: StemSegConfig):
        super().__init__()
        dims, free = _EMBEDDING_MODES.get(cfg.embedding_mode, (None, None))
        if dims is None:
            raise UserError(f"embedding_mode: expected one of {', '.join(_EMBEDDING_MODES)}, got {cfg.embedding_mode!r}")
        if len(cfg.free_dim_stds) != free:
            raise UserError(f"free_dim_stds: embedding mode {cfg.embedding_mode} has {free} free dimension(s), "
                            f"got {len(cfg.free_dim_stds)} std(s)")
        unknown = [h for h in cfg.d2conv_heads if h not in HEADS]
        if unknown:
            raise UserError(f"d2conv_heads: expected names among {', '.join(HEADS)}, got {unknown}")
        self.cfg = cfg
        self.clip_length = cfg.clip_length
        self.backbone = Backbone(cfg)
        self.embedding_head = EmbeddingHead(cfg.fpn_channels, cfg)
        self.embedding_loss_criterion = EmbeddingLossBuffers(cfg.free_dim_stds)
        self.seediness_head = SeedinessHead(cfg.fpn_channels, cfg) if cfg.seediness_head else None
        self.semseg_head = SemsegHead(cfg.fpn_channels, cfg) if cfg.num_classes else None
        layers = [f"{head}.{block}" for head in cfg.d2conv_heads if getattr(self, head) is not None
                  for block in ("block_32x", "block_16x")]
        self.d2conv_layers = replace_conv3d(self, layers, modulation=cfg.modulation) if layers else 0
        self.register_load_state_dict_pre_hook(_adopt_plain_conv_weights)

    @property
    def embedding_size(self) -> int:
        return self.embedding_head.embedding_size

    @property
    def num_categories(self) -> int:
        """Categories the model scores, background included (2 = class-agnostic: background and object)."""
        return self.cfg.num_classes or 2

    def streaming_defaults(self) -> dict:
        """Package streaming settings this model needs other than the family's (``vosrt.sdk.families``): with a
        category head the clustered pixels are those whose foreground probability is above 0.5, as the public
        code's ``TrackGenerator.do_inference`` (stemseg/inference/main.py: ``fg_masks > 0.5``); the family's 0.25 is
        its threshold of the seediness (``--seediness_thresh``), the foreground of models without that head. A
        16-frame model (the public DAVIS one) overlaps its clips by 6, and an xyt-embedding model (the public
        KITTI-MOTS one) seeds clusters above 0.95, as the public configurations run them."""
        own = {"foreground_threshold": 0.5} if self.semseg_head is not None else {}
        if self.clip_length == 16:
            own["overlap"] = 6   # the public DAVIS inference: 16-frame clips overlapping by 6 (DATA.DAVIS in defaults.yaml)
        if self.cfg.embedding_mode == "xyt":
            own["min_seediness"] = 0.95   # the public KITTI-MOTS configurations (xyt embeddings): MIN_SEEDINESS_PROB
        return own

    @property
    def input_mean(self) -> tuple[float, float, float]:
        """RGB mean subtracted from [0, 1] images (the published BGR 0..255 means, reordered and scaled)."""
        return tuple(m / 255.0 for m in reversed(BGR_MEAN_255))

    @property
    def input_std(self) -> tuple[float, float, float]:
        """RGB std dividing [0, 1] images: 1/255, i.e. the network sees the 0..255 scale."""
        return (1 / 255.0,) * 3

    def forward(self, clip: torch.Tensor) -> dict:
        n, _, frames, height, width = clip.shape
        images = clip[:, [2, 1, 0]].transpose(1, 2).reshape(n * frames, 3, height, width)  # BGR, [N·T, 3, H, W]
        pyramid = self.backbone(images)                                                  # strides 4 … 32
        p4, p8, p16, p32 = [p.reshape(n, frames, *p.shape[1:]).transpose(1, 2) for p in pyramid]  # [N, C, T, h, w]
        embeddings, log_variances, seediness = self.embedding_head(p32, p16, p8, p4)
        bandwidths = torch.exp(log_variances) * BANDWIDTH_SCALE
        free = self.embedding_loss_criterion.free_dim_bandwidths
        if free is not None:
            shape = (n, free.shape[1], *bandwidths.shape[2:])
            bandwidths = torch.cat([bandwidths, free.to(bandwidths.dtype).view(1, -1, 1, 1, 1).expand(shape)], 1)
        if self.seediness_head is not None:
            seediness = self.seediness_head(p32, p16, p8, p4)
        out = {"embeddings": embeddings, "bandwidths": bandwidths, "log_variances": log_variances,
               "seediness": seediness}
        if self.semseg_head is not None:
            out["class_logits"], out["foreground_logits"] = self.semseg_head(p32, p16, p8, p4)
        return out


def _adopt_plain_conv_weights(module, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
    # A published STEm-Seg checkpoint given to a D²Conv3D model (`vosrt train --init davis.pth`) has plain Conv3d
    # weights where the model has D²Conv3D layers: take them as the layer's convolution, with the parameter predictor
    # at zero (D = 1, M = 1/2), the layer's own initial state, which training moves on from. (Loaded to run or
    # export, such a file builds plain heads instead: config_from_state_dict.)
    for name, layer in module.named_modules():
        if not (hasattr(layer, "deform_params") and hasattr(layer, "deform_conv")):
            continue
        base = f"{prefix}{name}."
        if base + "weight" not in state_dict or base + "deform_conv.weight" in state_dict:
            continue
        for param in ("weight", "bias"):
            if base + param in state_dict:
                state_dict[base + "deform_conv." + param] = state_dict.pop(base + param)
        for param, value in layer.deform_params.named_parameters():
            state_dict[base + "deform_params." + param] = torch.zeros_like(value)


def _make_config(name: str, overrides: dict) -> StemSegConfig:
    from vosrt.training.models import variant_config
    return variant_config(StemSegConfig, VARIANTS, name, overrides, "STEm-Seg")


def build(name: str = FAMILY, **overrides) -> StemSeg:
    """Build ``stem-seg`` or ``stem-seg-lite`` with random weights; ``overrides`` change StemSegConfig
    fields (``d2conv_heads=()`` gives the plain STEm-Seg of the public code)."""
    model = StemSeg(_make_config(name, overrides))
    model.config = {"model": name, **overrides}
    return model


def matches_state_dict(state_dict: dict) -> bool:
    """True for STEm-Seg state_dicts (public code or this module): ``backbone.body.stem.conv1.weight``,
    ``backbone.fpn.*`` and an ``embedding_head.conv_embedding``."""
    return ("backbone.body.stem.conv1.weight" in state_dict
            and "backbone.fpn.fpn_inner1.weight" in state_dict
            and "embedding_head.conv_embedding.weight" in state_dict)


def config_from_state_dict(state_dict: dict) -> dict:
    """The config overrides a published STEm-Seg state_dict needs (its backbone depth, heads, widths and embedding
    mode differ between the DAVIS, YouTube-VIS and KITTI-MOTS models and the ResNet-50 default; its heads are plain
    Conv3d; the DAVIS model runs 16-frame clips); empty for the default configuration."""
    def width(head, block):
        key = next((k for k in (f"{head}.{block}.0.weight", f"{head}.{block}.0.deform_conv.weight") if k in state_dict))
        return int(state_dict[key].shape[0])

    blocks = ("block_32x", "block_16x", "block_8x", "block_4x")
    dims = int(state_dict["embedding_head.conv_embedding.weight"].shape[0])
    free = dims - int(state_dict["embedding_head.conv_variance.weight"].shape[0])
    mode = next(m for m, (d, f) in _EMBEDDING_MODES.items() if (d, f) == (dims, free) and m.startswith("xy"))
    bandwidths = state_dict.get("embedding_loss_criterion.free_dim_bandwidths")
    # bottlenecks per backbone stage: the public STEm-Seg checkpoints are ResNet-101 (res4: 23), the default here
    # ResNet-50 (6); counted off the names so both load
    depths = tuple(len({k.split(".")[3] for k in state_dict if k.startswith(f"backbone.body.layer{stage}.")})
                   for stage in range(1, 5))
    found = {"depths": depths, "head_channels": tuple(width("embedding_head", b) for b in blocks), "embedding_mode": mode,
             "free_dim_stds": tuple(round(float(b) ** -0.5, 6) for b in bandwidths.flatten()) if free else (),
             "seediness_head": any(k.startswith("seediness_head.") for k in state_dict), "num_classes": 0}
    if "semseg_head.conv_out.weight" in state_dict:
        found["num_classes"] = int(state_dict["semseg_head.conv_out.weight"].shape[0]) - 1
        found["semseg_channels"] = tuple(width("semseg_head", b) for b in blocks)
    # D²Conv3D only in the heads whose deep blocks hold its weights: the public STEm-Seg files hold plain Conv3d
    # there, and taken into D²Conv3D layers (modulation 1/2 at a zero predictor) they halved every one of them
    present = [h for h in HEADS if any(k.startswith(f"{h}.") for k in state_dict)]
    d2conv = [h for h in present if any(k.startswith(f"{h}.block_") and ".deform_conv." in k for k in state_dict)]
    if d2conv != present:
        found["d2conv_heads"] = tuple(d2conv)
    predictor = next((state_dict[k] for k in state_dict if k.endswith(".deform_params.weight")), None)
    if predictor is not None:
        found["modulation"] = int(predictor.shape[0]) > 3   # 3 dilations, then one modulation per kernel point
    elif found["embedding_mode"] == "xyff" and found["seediness_head"] and not found["num_classes"]:
        # the public DAVIS model (davis.pth): its inference runs the davis_2.yaml configuration, 16-frame clips (3
        # temporal poolings, decoders fine-tuned at that length; README "clips of length 16 frames")
        found["clip_length"] = 16
    defaults = asdict(VARIANTS[FAMILY])
    return {k: v for k, v in found.items() if defaults[k] != v}


def package_graphs(model: StemSeg, top_k: int = 20) -> dict:
    """The graph of a STEm-Seg package (``vosrt.training.graphs.graphs_for``): ``embed_clip``
    (``top_k`` is unused: the family has no memory read)."""
    from vosrt.training.graphs import GraphSpec

    clip_length = int(getattr(model, "clip_length", CLIP_LENGTH))

    def clip(height, width, clip_length=clip_length, generator=None, **_):
        return (torch.rand(1, 3, clip_length, height, width, generator=generator),)

    return {"embed_clip": GraphSpec.of(FAMILY, "embed_clip", EmbedClipGraph(model), clip)}


class EmbedClipGraph(nn.Module):
    """STEm-Seg ``embed_clip``: clip ``[1, 3, L, H, W]`` RGB in [0, 1] → the maps the host clusters, at
    1/4 resolution (h = H/4, w = W/4):

    - ``embeddings`` ``[1, E, L, h, w]``, ``bandwidths`` ``[1, E, L, h, w]``, ``seediness`` ``[1, 1, L, h, w]``
    - ``foreground`` ``[1, 1, L, h, w]``: where to cluster (the category head's foreground probability;
      without a category head, the seediness, which the host thresholds lower)
    - ``categories`` ``[1, C, L, h, w]``: per-pixel category probabilities, background first; a model
      without a category head has C = 2 (background, object) with object = seediness.
    """

    def __init__(self, model: StemSeg):
        super().__init__()
        self.model = model
        shape = (1, 3, 1, 1, 1)
        self.register_buffer("mean", torch.tensor(model.input_mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(model.input_std).view(shape), persistent=False)

    def forward(self, clip: torch.Tensor):
        out = self.model((clip - self.mean) / self.std)
        seediness = out["seediness"]
        if "class_logits" in out:
            foreground = torch.sigmoid(out["foreground_logits"])
            categories = torch.softmax(out["class_logits"], dim=1)
        else:
            foreground = seediness
            categories = torch.cat([1 - seediness, seediness], 1)
        return out["embeddings"], out["bandwidths"], seediness, foreground, categories


def parameter_count(model: nn.Module) -> int:
    """Trainable and frozen parameters (not buffers)."""
    return sum(p.numel() for p in model.parameters())

