"""2D ResNet-18 / ResNet-50 trunks with torchvision parameter names.

The parameter names (``conv1``, ``bn1``, ``layer1`` … ``layer4``, blocks with ``conv1/bn1/conv2/bn2``
[``conv3/bn3``] and ``downsample.0/.1``) match torchvision, so ImageNet weights and the STCN checkpoints
(which embed torchvision trunks) load by name. Three knobs go beyond torchvision, all needed by STCN:

- ``in_channels``: the value encoder sees the frame plus two mask channels;
- ``conv_bias``: STCN's value encoder comes from a modified ResNet whose convolutions carry a bias;
- ``stages``: STCN stops at res4 (``layer3``), so ``layer4`` is not built (and not in the state_dict);
- ``widths``: narrower trunks for the CPU-sized ``-lite`` models.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, conv_bias: bool = False):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, conv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as torchvision's "v1.5"), 1×1 expand ×4 (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, conv_bias: bool = False):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=conv_bias)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, conv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _projection(in_channels: int, out_channels: int, stride: int, conv_bias: bool) -> nn.Module | None:
    # The shortcut needs a 1×1 projection whenever the block changes resolution or width.
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=conv_bias),
                         nn.BatchNorm2d(out_channels))


class ResNet(nn.Module):
    """Stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) followed by ``len(layers)`` residual stages.

    Stage ``i`` (``layer{i+1}``) has ``layers[i]`` blocks of width ``widths[i]`` and stride 2 except the
    first. ``stage_channels[i]`` is its output width; stage outputs are at strides 4, 8, 16, 32.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512), conv_bias: bool = False):
        super().__init__()
        if len(widths) < len(layers):
            raise ValueError(f"ResNet needs one width per stage: {len(layers)} stages, widths {tuple(widths)}")
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stage_channels = []
        channels = stem
        for i, (blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(block(channels, width, stride if j == 0 else 1, conv_bias))
                channels = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.stage_channels.append(channels)
        _init_weights(self)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The residual stages in order (``layer1``, ``layer2``, …)."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.stage_channels))]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``[B, C, H, W]`` -> ``[B, widths[0], H/4, W/4]``."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Input ``[B, C, H, W]`` -> the output of every stage, strides 4, 8, 16(, 32)."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _init_weights(model: nn.Module) -> None:
    # torchvision's initialisation: He-normal (fan-out) convolutions, identity batch norms.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def resnet18(in_channels: int = 3, stages: int = 4, widths: Sequence[int] = (64, 128, 256, 512),
             conv_bias: bool = False) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2) truncated to its first ``stages`` stages."""
    return ResNet(BasicBlock, (2, 2, 2, 2)[:stages], in_channels, widths, conv_bias)


def resnet50(in_channels: int = 3, stages: int = 4, widths: Sequence[int] = (64, 128, 256, 512),
             conv_bias: bool = False) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3) truncated to its first ``stages`` stages."""
    return ResNet(Bottleneck, (3, 4, 6, 3)[:stages], in_channels, widths, conv_bias)


BACKBONES = {"resnet18": resnet18, "resnet50": resnet50}
