"""ir-CSN: the interaction-reduced channel-separated 3D ResNet (Tran et al. 2019) used as 3DC-Seg's encoder.

Each bottleneck is a 1×1×1 conv (channel interaction), a depthwise 3×3×3 conv (space-time, one group per
channel, carrying the stage's stride) and a 1×1×1 conv expanding ×4, each followed by batch norm, with a
residual connection. The stem is a 3×7×7 conv with spatial stride 2 and a 1×3×3 spatial max pool, so the
four stages give features at 1/4, 1/8, 1/16 and 1/32 of the image; stages 2–4 also halve time.

Module names follow the public D²Conv3D code (``stem.conv1``, ``stem.bn1``, ``layerN.i.conv1/bn1/conv2/bn2/
conv3/bn3/downsample.0/downsample.1``) so its checkpoints load unchanged. Batch norms are frozen (running
statistics and affine terms are buffers) with ε = 1e-3, as that code trains the Kinetics-pretrained backbone.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

# Blocks per stage of the published networks.
DEPTHS = {50: (3, 4, 6, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4
BN_EPS = 1e-3  # the Caffe2 channel-separated models were trained with this epsilon


class FrozenBatchNorm3d(nn.Module):
    """Batch norm with fixed statistics and affine terms: y = (x − mean)/sqrt(var + eps)·weight + bias.

    All four tensors are buffers (as in the public code), so optimisers leave them alone and state_dicts
    carry ``weight``, ``bias``, ``running_mean``, ``running_var``. A ``num_batches_tracked`` entry from an
    ordinary BatchNorm3d checkpoint is accepted and dropped.
    """

    def __init__(self, num_features: int, eps: float = BN_EPS):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class IrCSNBottleneck(nn.Module):
    """1×1×1 reduce → depthwise 3×3×3 (stride) → 1×1×1 expand (×4), frozen BN after each, residual add."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 bn_eps: float = BN_EPS):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm3d(planes, bn_eps)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = FrozenBatchNorm3d(planes, bn_eps)
        self.conv3 = nn.Conv3d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = FrozenBatchNorm3d(planes * EXPANSION, bn_eps)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class IrCSN(nn.Module):
    """ir-CSN encoder returning the four stage outputs ``(e1, e2, e3, e4)`` at 1/4, 1/8, 1/16, 1/32.

    Args:
        depths: bottlenecks per stage; (3, 8, 36, 3) is ir-CSN-152, (3, 4, 6, 3) ir-CSN-50.
        planes: bottleneck widths per stage (outputs are 4× these); published (64, 128, 256, 512).
        stem_width: channels of the stem conv; published 64.
        bn_eps: the batch norms' epsilon: 1e-3 as the Caffe2 models and the D²Conv3D code, 1e-5 in the
            3DC-Seg code (its nn.BatchNorm3d default).
    """

    def __init__(self, depths: Sequence[int] = DEPTHS[152], planes: Sequence[int] = (64, 128, 256, 512),
                 stem_width: int = 64, bn_eps: float = BN_EPS):
        super().__init__()
        if len(depths) != 4 or len(planes) != 4:
            raise ValueError(f"ir-CSN has 4 stages: got depths {list(depths)} and planes {list(planes)}")
        self.depths = tuple(int(d) for d in depths)
        self.stem = nn.Sequential(OrderedDict(
            conv1=nn.Conv3d(3, stem_width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            bn1=FrozenBatchNorm3d(stem_width, bn_eps),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        ))
        in_channels = stem_width
        for index, (depth, width, stride) in enumerate(zip(self.depths, planes, (1, 2, 2, 2)), start=1):
            blocks = []
            for b in range(depth):
                downsample = None
                if b == 0 and (stride != 1 or in_channels != width * EXPANSION):
                    downsample = nn.Sequential(
                        nn.Conv3d(in_channels, width * EXPANSION, 1, stride=stride, bias=False),
                        FrozenBatchNorm3d(width * EXPANSION, bn_eps))
                blocks.append(IrCSNBottleneck(in_channels, width, stride if b == 0 else 1, downsample, bn_eps))
                in_channels = width * EXPANSION
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.layer_widths = tuple(p * EXPANSION for p in planes)

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """clip ``[N, 3, T, H, W]`` (normalised) → e1 ``[N, 4p1, T, H/4, W/4]`` … e4 ``[N, 4p4, T/8, H/32, W/32]``
        (time and space of stages 2–4 rounded up, as strided 3×3×3 convolutions with padding 1 do)."""
        e1 = self.layer1(self.stem(clip))
        e2 = self.layer2(e1)
        e3 = self.layer3(e2)
        e4 = self.layer4(e3)
        return e1, e2, e3, e4
