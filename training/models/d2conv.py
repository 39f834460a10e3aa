"""The D²Conv3D layer: a Conv3d whose kernel grid is scaled per output location by predicted dilations.

``D2Conv3d`` has two parts, named as in the public D²Conv3D code so its trained checkpoints load:

- ``deform_params``: a Conv3d with the same geometry as the convolution, predicting 3 + K channels (K =
  kernel points): D = 1 + elu(·) (dilation scale along t, y, x) and M = sigmoid(·) (modulation per kernel
  point). The variant without modulation predicts only the 3 dilation channels.
- ``deform_conv``: the convolution weight and bias, applied by the ``d2conv3d`` operator.

``deform_params`` starts at zero (weight and bias), so a new layer has D = 1 and M = 0.5: it samples the
regular Conv3d grid and halves its response. That is the paper's drop-in start from a trained Conv3d.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

from vosrt.training.ops import d2conv3d as d2conv3d_op


class DynamicDilatedConv(nn.Module):
    """Weight ``[Cout, Cin/groups, kt, kh, kw]`` and bias ``[Cout]`` of a D²Conv3D, with its geometry.

    ``forward(x, dilation, modulation)`` applies ``vosrt.training.ops.d2conv3d.d2conv3d`` with these weights.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}→{out_channels} are not divisible by groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _triple(kernel_size), _triple(stride)
        self.padding, self.dilation = _triple(padding), _triple(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The Conv3d default initialisation (Kaiming-uniform with a = sqrt(5))."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, dilation: torch.Tensor, modulation: torch.Tensor | None) -> torch.Tensor:
        """x ``[N, Cin, T, H, W]``, dilation ``[N, 3, To, Ho, Wo]``, modulation ``[N, K, To, Ho, Wo]`` or None."""
        # Looked up at call time so that export can wrap the operator (custom op) without rebuilding models.
        return d2conv3d_op.d2conv3d(x, dilation, modulation, self.weight, self.bias, self.stride, self.padding,
                                    self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


class D2Conv3d(nn.Module):
    """Dynamic dilated 3D convolution layer (Schmidt et al., WACV 2022), a drop-in for nn.Conv3d.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as nn.Conv3d.
        modulation: predict a modulation per kernel point (the published "XYZ conditioned DCNv2" layer);
            False gives the 3-channel variant without modulation.
        norm_groups: when set, a GroupNorm(norm_groups) is applied to the input of ``deform_params``
            only (the public code's optional ``norm``; its published configuration has none).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, modulation: bool = True, norm_groups: int | None = None):
        super().__init__()
        kernel_size = _triple(kernel_size)
        self.num_kernel_points = kernel_size[0] * kernel_size[1] * kernel_size[2]
        self.modulated = modulation
        self.norm = nn.GroupNorm(norm_groups, in_channels) if norm_groups else None
        # The parameter predictor shares the convolution's geometry so its maps align with the output grid.
        self.deform_params = nn.Conv3d(in_channels, 3 + (self.num_kernel_points if modulation else 0), kernel_size,
                                       stride, padding, dilation, groups=1, bias=bias)
        self.deform_conv = DynamicDilatedConv(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                              groups, bias)
        nn.init.zeros_(self.deform_params.weight)
        if self.deform_params.bias is not None:
            nn.init.zeros_(self.deform_params.bias)

    def dilation_and_modulation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D ``[N, 3, To, Ho, Wo]`` (channels t, y, x) and M ``[N, K, To, Ho, Wo]`` (None without modulation)."""
        params = self.deform_params(x if self.norm is None else self.norm(x))
        dilation = 1 + F.elu(params[:, :3])
        modulation = torch.sigmoid(params[:, 3:]) if self.modulated else None
        return dilation, modulation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[N, Cin, T, H, W]`` → ``[N, Cout, To, Ho, Wo]``."""
        dilation, modulation = self.dilation_and_modulation(x)
        return self.deform_conv(x, dilation, modulation)


def d2conv_from_conv3d(conv: nn.Conv3d, modulation: bool = True, norm_groups: int | None = None) -> D2Conv3d:
    """A D2Conv3d with ``conv``'s geometry and a copy of its weight and bias (deform_params at zero)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"only zero-padded Conv3d with explicit padding can become D2Conv3d, got {conv}")
    layer = D2Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None, modulation, norm_groups)
    layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.deform_conv.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.deform_conv.bias.copy_(conv.bias)
    return layer


def replace_conv3d(module: nn.Module, layers: Iterable[str] | None = None, modulation: bool = True,
                   replace_1x1: bool = False, norm_groups: int | None = None) -> int:
    """Replace, in place, nn.Conv3d layers of ``module`` by D2Conv3d layers carrying their weights.

    ``layers`` names the chosen submodules (dotted paths such as ``"decoder.rf3"`` or ``"rf2.convFS1.0"``);
    every Conv3d at or below each of them is replaced. None means all of ``module``. 1×1×1 convolutions
    are kept unless ``replace_1x1`` (scaling a single-point kernel changes nothing). Returns the number
    replaced. Module names are unchanged, so ``a.b.0.weight`` becomes ``a.b.0.deform_conv.weight`` plus
    ``a.b.0.deform_params.*``, the public code's naming.
    """
    def wanted(conv: nn.Conv3d) -> bool:
        return replace_1x1 or conv.kernel_size != (1, 1, 1)

    if layers is not None:
        replaced = 0
        for name in layers:
            try:
                target = module.get_submodule(name)
            except AttributeError:
                raise ValueError(f"replace_conv3d: {type(module).__name__} has no submodule {name!r}") from None
            if isinstance(target, nn.Conv3d):
                if wanted(target):
                    parent_name, _, child = name.rpartition(".")
                    setattr(module.get_submodule(parent_name), child,
                            d2conv_from_conv3d(target, modulation, norm_groups))
                    replaced += 1
            else:
                replaced += replace_conv3d(target, None, modulation, replace_1x1, norm_groups)
        return replaced
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv3d):
            if wanted(child):
                setattr(module, name, d2conv_from_conv3d(child, modulation, norm_groups))
                replaced += 1
        elif not isinstance(child, D2Conv3d):
            replaced += replace_conv3d(child, None, modulation, replace_1x1, norm_groups)
    return replaced
