"""STCN (Cheng, Tai, Tang 2021, "Rethinking Space-Time Networks with Improved Memory Coverage"),
evaluation network.

The parameter names and shapes are those of the published checkpoints, so
``load_state_dict(..., strict=True)`` accepts them; the single-object checkpoints (value encoder with 4
input channels) get a zero "other objects" channel on load.

Data flow of one step (h, w = H/16, W/16; the frame is ImageNet-normalised and padded to ×16)::

    frame ──key_encoder (ResNet to res4)──► f16, f8, f4
        f16 ──key_proj──► key [B,Ck,h,w]          (matched against the memory keys)
        f16 ──key_comp──► f16_thin [B,512,h,w]    (query's own features for the decoder)
    frame + mask + others ──value_encoder (ResNet-18) ⊕ f16 ──CBAM fusion──► value [O,Cv,h,w]
    readout (memory values weighted by the L2 affinity, see ops.l2_readout) ⊕ f16_thin
        ──decoder 1/16→1/8→1/4, ×4 bilinear──► logits [O,1,H,W]

The steps are separate methods (``encode_key``, ``encode_value``, ``segment``): they become the
separately exported graphs, and the memory read between them is the ``L2MemoryReadout`` operator.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vosrt.sdk.errors import UserError
from vosrt.sdk.preprocess import IMAGENET_MEAN, IMAGENET_STD
from vosrt.training.models.resnet import BACKBONES

FAMILY = "stcn"  # this module's row in vosrt.sdk.families


@dataclass(frozen=True)
class STCNConfig:
    """Widths of an STCN. The defaults are the published network (``stcn``); see ``VARIANTS``."""

    key_backbone: str = "resnet50"                  # ResNet trunk of the key encoder, used to res4
    key_dim: int = 64                               # Ck, channels of a key
    value_widths: tuple = (64, 128, 256)            # ResNet-18 stage widths of the value encoder
    value_dim: int = 512                            # Cv, channels of a memory value
    f16_thin_dim: int = 512                         # key_comp output, the query's own decoder input
    decoder_dims: tuple = (512, 256, 256)           # decoder widths at 1/16, 1/8, 1/4
    cbam_reduction: int = 16                        # channel-gate bottleneck of the fusion block

    def __post_init__(self):
        # JSON round trips turn tuples into lists; normalise so configs compare equal.
        object.__setattr__(self, "value_widths", tuple(self.value_widths))
        object.__setattr__(self, "decoder_dims", tuple(self.decoder_dims))
        if self.key_backbone not in BACKBONES:
            raise UserError(f"key_backbone must be one of {sorted(BACKBONES)}, got {self.key_backbone!r}")
        if len(self.value_widths) != 3 or len(self.decoder_dims) != 3:
            raise UserError(f"value_widths and decoder_dims need 3 entries each, got "
                            f"{self.value_widths} and {self.decoder_dims}")


VARIANTS = {
    FAMILY: STCNConfig(),
    # CPU-sized: ResNet-18 key encoder (res4 = 256 channels), half-width value encoder, quarter-width
    # value and decoder features, and an eighth-width decoder at 1/4 scale, where most of the decoder's
    # work is. Same modules and data flow as the published network.
    "stcn-lite": STCNConfig(key_backbone="resnet18", value_widths=(32, 64, 128), value_dim=128,
                            f16_thin_dim=128, decoder_dims=(128, 64, 32)),
}


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3×3 convolutions; a 3×3 projection when widths differ."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.downsample = (None if in_channels == out_channels
                           else nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(F.relu(self.conv1(F.relu(x))))
        if self.downsample is not None:
            x = self.downsample(x)
        return x + residual


class ChannelGate(nn.Module):
    """CBAM channel attention: a shared MLP on the global average and max pools, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        # Indices 1 and 3 hold the weights, as in the published checkpoints (0: flatten, 2: ReLU).
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))  # [B, C]
        return x * torch.sigmoid(attention)[:, :, None, None]


class _SpatialConv(nn.Module):
    # Only a named holder: the published checkpoints store the conv as "SpatialGate.spatial.conv".
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention: 7×7 conv over the channel-wise max and mean maps, sigmoid."""

    def __init__(self):
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], 1)  # [B, 2, H, W]
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel gate, then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Fuses the value encoder's res4 with the key encoder's f16: ResBlock, CBAM residual, ResBlock."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int):
        super().__init__()
        self.block1 = ResBlock(in_channels, out_channels)
        self.attention = CBAM(out_channels, reduction)
        self.block2 = ResBlock(out_channels, out_channels)

    def forward(self, value_f16: torch.Tensor, key_f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([value_f16, key_f16], 1))
        return self.block2(x + self.attention(x))


class KeyEncoder(nn.Module):
    """ResNet trunk through res4, without conv biases (torchvision weights). Attribute names follow the
    published code: the first stage is ``res2``, the next two ``layer2`` and ``layer3``."""

    def __init__(self, backbone: str):
        super().__init__()
        trunk = BACKBONES[backbone](in_channels=3, stages=3)
        self.conv1, self.bn1 = trunk.conv1, trunk.bn1
        self.relu, self.maxpool = trunk.relu, trunk.maxpool
        self.res2, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.f4_dim, self.f8_dim, self.f16_dim = trunk.stage_channels

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` -> f16 ``[B, f16_dim, H/16, W/16]``, f8 ``[B, f8_dim, H/8, W/8]``, f4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(frame))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class ValueEncoder(nn.Module):
    """ResNet-18 through res4 on (frame, object mask, other objects' masks), with conv biases as in the
    published modified ResNet, fused with the key encoder's f16."""

    def __init__(self, widths: tuple, key_f16_dim: int, value_dim: int, reduction: int):
        super().__init__()
        trunk = BACKBONES["resnet18"](in_channels=5, stages=3, widths=widths, conv_bias=True)
        self.conv1, self.bn1 = trunk.conv1, trunk.bn1
        self.relu, self.maxpool = trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.fuser = FeatureFusionBlock(trunk.stage_channels[2] + key_f16_dim, value_dim, reduction)

    def forward(self, frame: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor,
                others: torch.Tensor) -> torch.Tensor:
        """frame ``[O, 3, H, W]``, key_f16 ``[O, f16_dim, h, w]``, mask and others ``[O, 1, H, W]`` ->
        ``[O, value_dim, h, w]``."""
        x = torch.cat([frame, mask, others], 1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Single-object checkpoints were trained without the "others" channel (input 4 of 5): an
        # all-zero kernel slice for it makes the network compute exactly what it was trained to.
        key = prefix + "conv1.weight"
        weight = state_dict.get(key)
        expected = self.conv1.in_channels
        if isinstance(weight, torch.Tensor) and weight.dim() == 4 and weight.shape[1] == expected - 1:
            state_dict[key] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])], 1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class KeyProjection(nn.Module):
    """3×3 conv from f16 to the key space (orthogonal init, as published)."""

    def __init__(self, in_channels: int, key_dim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(in_channels, key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def forward(self, f16: torch.Tensor) -> torch.Tensor:
        return self.key_proj(f16)


class UpsampleBlock(nn.Module):
    """Adds the ×2-upsampled coarse features to a 3×3 conv of the skip features, then a ResBlock."""

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, 3, padding=1)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        # skip may have batch 1 while up has one row per object: the sum broadcasts, so the skip
        # convolution runs once per frame rather than once per object.
        x = self.skip_conv(skip) + F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class Decoder(nn.Module):
    """1/16 -> 1/8 -> 1/4 refinement with the key encoder's skips, one-channel prediction, ×4 bilinear."""

    def __init__(self, in_channels: int, f8_dim: int, f4_dim: int, dims: tuple):
        super().__init__()
        d16, d8, d4 = dims
        self.compress = ResBlock(in_channels, d16)
        self.up_16_8 = UpsampleBlock(f8_dim, d16, d8)
        self.up_8_4 = UpsampleBlock(f4_dim, d8, d4)
        self.pred = nn.Conv2d(d4, 1, 3, padding=1)

    def forward(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        x = self.compress(f16)
        x = self.up_16_8(f8, x)
        x = self.up_8_4(f4, x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


class STCN(nn.Module):
    """The STCN evaluation network, split into the steps the streaming session runs.

    Inputs are ImageNet-normalised RGB frames padded to a multiple of 16 (``input_mean``/``input_std``;
    the exported graphs normalise inside). ``dims`` lists the feature widths the session and the
    exporter need; ``config`` is the JSON-able recipe ``build`` takes back.
    """

    family = FAMILY
    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD

    def __init__(self, cfg: STCNConfig = STCNConfig(), config: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.config = dict(config) if config is not None else {"model": FAMILY}
        self.key_encoder = KeyEncoder(cfg.key_backbone)
        f16_dim, f8_dim, f4_dim = self.key_encoder.f16_dim, self.key_encoder.f8_dim, self.key_encoder.f4_dim
        self.value_encoder = ValueEncoder(cfg.value_widths, f16_dim, cfg.value_dim, cfg.cbam_reduction)
        self.key_proj = KeyProjection(f16_dim, cfg.key_dim)
        self.key_comp = nn.Conv2d(f16_dim, cfg.f16_thin_dim, 3, padding=1)
        self.decoder = Decoder(cfg.value_dim + cfg.f16_thin_dim, f8_dim, f4_dim, cfg.decoder_dims)
        self.dims = {"key_dim": cfg.key_dim, "value_dim": cfg.value_dim, "f16_dim": f16_dim,
                     "f16_thin_dim": cfg.f16_thin_dim, "f8_dim": f8_dim, "f4_dim": f4_dim}

    def encode_key(self, frame: torch.Tensor):
        """frame ``[B, 3, H, W]`` (normalised, H and W multiples of 16) ->
        (key ``[B, Ck, h, w]``, f16_thin ``[B, 512, h, w]``, f16 ``[B, 1024, h, w]``,
        f8 ``[B, 512, H/8, W/8]``, f4 ``[B, 256, H/4, W/4]``) — widths of the published model."""
        f16, f8, f4 = self.key_encoder(frame)
        return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

    def encode_value(self, frame: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """frame ``[1, 3, H, W]``, the frame's f16 ``[1, 1024, h, w]`` and object probabilities
        ``masks [O, 1, H, W]`` -> memory values ``[O, Cv, h, w]``, one row per object.

        Each object also sees the sum of the other objects' masks (zeros when it is alone).
        """
        objects = masks.shape[0]
        # total − own equals the sum over the others and keeps O a free (exportable) dimension.
        others = masks.sum(dim=0, keepdim=True) - masks  # [O, 1, H, W]
        frame = frame.expand(objects, -1, -1, -1)
        f16 = f16.expand(objects, -1, -1, -1)
        return self.value_encoder(frame, f16, masks, others)

    def segment(self, readout: torch.Tensor, f16_thin: torch.Tensor, f8: torch.Tensor,
                f4: torch.Tensor) -> torch.Tensor:
        """Memory readout ``[O, Cv, h, w]`` and the query frame's f16_thin ``[1, 512, h, w]``, f8, f4 ->
        per-object logits ``[O, 1, H, W]`` at the padded input resolution (sigmoid gives the
        probabilities that ``ops.aggregate.soft_aggregate`` combines)."""
        f16_thin = f16_thin.expand(readout.shape[0], -1, -1, -1)
        return self.decoder(torch.cat([readout, f16_thin], 1), f8, f4)


def build(name: str = FAMILY, **overrides) -> STCN:
    """STCN ``"stcn"`` (published widths) or ``"stcn-lite"``, with ``overrides`` of ``STCNConfig`` fields."""
    if name not in VARIANTS:
        raise UserError(f"unknown STCN variant {name!r}: expected one of {', '.join(VARIANTS)}")
    fields = {f.name for f in dataclasses.fields(STCNConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown STCN config field(s) {unknown} for '{name}': expected some of {sorted(fields)}")
    cfg = dataclasses.replace(VARIANTS[name], **overrides)
    return STCN(cfg, config={"model": name, **overrides})


# One key from every part of the network: a state_dict holding all of them is an STCN's.
_SIGNATURE = ("key_encoder.conv1.weight", "key_encoder.res2.0.conv1.weight", "key_encoder.layer3.0.conv1.weight",
              "value_encoder.conv1.weight", "value_encoder.fuser.block1.conv1.weight",
              "key_proj.key_proj.weight", "key_comp.weight", "decoder.pred.weight")


def matches_state_dict(state_dict: dict) -> bool:
    """True when ``state_dict`` has the published STCN structure (bare or single-object checkpoint)."""
    return all(key in state_dict for key in _SIGNATURE)


def package_graphs(model: STCN, top_k: int = 20) -> dict:
    """The graphs of an STCN package (``vosrt.training.graphs.graphs_for``): ``encode_key``,
    ``encode_value`` and ``segment``, with random example inputs of the shapes the session feeds."""
    from vosrt.training.graphs import EncodeKeyGraph, EncodeValueGraph, GraphSpec, SegmentGraph

    dims = model.dims

    def rand(generator, *shape):
        return torch.randn(*shape, generator=generator)

    def encode_key(height, width, generator=None, **_):
        return (torch.rand(1, 3, height, width, generator=generator),)

    def encode_value(height, width, objects=2, generator=None, **_):
        h, w = height // 16, width // 16
        masks = torch.rand(objects, 1, height, width, generator=generator)
        masks = masks / masks.sum(dim=0, keepdim=True).clamp(min=1)  # probabilities of disjoint objects
        return (torch.rand(1, 3, height, width, generator=generator), rand(generator, 1, dims["f16_dim"], h, w),
                masks)

    def segment(height, width, objects=2, memory_frames=2, generator=None, **_):
        h, w = height // 16, width // 16
        n = memory_frames * h * w
        return (rand(generator, 1, dims["key_dim"], n), rand(generator, objects, dims["value_dim"], n),
                rand(generator, 1, dims["key_dim"], h, w), rand(generator, 1, dims["f16_thin_dim"], h, w),
                rand(generator, 1, dims["f8_dim"], height // 8, width // 8),
                rand(generator, 1, dims["f4_dim"], height // 4, width // 4))

    return {
        "encode_key": GraphSpec.of(FAMILY, "encode_key", EncodeKeyGraph(model), encode_key),
        "encode_value": GraphSpec.of(FAMILY, "encode_value", EncodeValueGraph(model), encode_value),
        "segment": GraphSpec.of(FAMILY, "segment", SegmentGraph(model, top_k=top_k), segment),
    }
