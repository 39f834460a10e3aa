"""The graphs of a model package as nn.Modules: the single definition of what each graph computes.

``vosrt.export`` traces these modules into ONNX, and the SDK's torch backend runs them eagerly, so the
exported graphs and the torch backend cannot drift apart. Inputs and outputs follow docs/DESIGN.md
("Graphs of a model package"): images enter as RGB in [0, 1] at the package resolution, and ImageNet
normalisation, the memory readout, sigmoid, soft aggregation and the arg-max all happen inside, so a
GPU backend needs no per-frame host work beyond frame in, labels out.

The two custom operators are also registered here as ``torch.ops.vosrt.d2conv3d`` and
``torch.ops.vosrt.l2_memory_readout`` (implemented by the reference operators). Eager runs call the
reference functions directly; inside :func:`custom_ops` (what the exporter uses) the graphs and the
models route both operators through the registered ops, which the exporter turns into single ONNX nodes
(plugin form) or standard-op decompositions (portable form), see ``vosrt.export.onnx_ops``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import sys
from typing import Callable, Optional

import torch
from torch import nn

from vosrt.sdk import families
from vosrt.training.ops import d2conv3d as _d2conv3d_module
from vosrt.training.ops.aggregate import soft_aggregate_logits
from vosrt.training.ops.l2_readout import l2_memory_readout

DEFAULT_TOP_K = 20
# Kept before custom_ops() can point the module attribute at the custom op (which calls this).
_REFERENCE_D2CONV3D = _d2conv3d_module.d2conv3d

# ---------------------------------------------------------------------------------------------------
# custom ops


@torch.library.custom_op("vosrt::d2conv3d", mutates_args=())
def _d2conv3d_op(x: torch.Tensor, dilation: torch.Tensor, modulation: Optional[torch.Tensor],
                 weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int], padding: list[int],
                 dilation_base: list[int], groups: int) -> torch.Tensor:
    return _REFERENCE_D2CONV3D(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups,
                               backend="torch")


@_d2conv3d_op.register_fake
def _d2conv3d_fake(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups):
    # The output grid is the dilation map's grid.
    return x.new_empty((x.shape[0], weight.shape[0], *dilation.shape[2:]))  # [N, Cout, To, Ho, Wo]


@torch.library.custom_op("vosrt::l2_memory_readout", mutates_args=())
def _l2_readout_op(mem_key: torch.Tensor, query_key: torch.Tensor, mem_value: torch.Tensor, top_k: int,
                   scale: float, top_k_input: Optional[torch.Tensor] = None) -> torch.Tensor:
    if top_k_input is not None:  # the portable form's graph input overrides the attribute
        top_k = int(top_k_input.reshape(-1)[0])
    return l2_memory_readout(mem_key, query_key, mem_value, top_k=max(top_k, 0), scale=scale, backend="torch")


@_l2_readout_op.register_fake
def _l2_readout_fake(mem_key, query_key, mem_value, top_k, scale, top_k_input=None):
    return mem_value.new_empty((mem_value.shape[0], mem_value.shape[1], query_key.shape[2]))  # [B, V, M]


D2CONV3D_OP = torch.ops.vosrt.d2conv3d.default
L2_READOUT_OP = torch.ops.vosrt.l2_memory_readout.default

_exporting = False


def _triple(value) -> list[int]:
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


def _d2conv3d_as_op(x, dilation, modulation, weight, bias=None, stride=1, padding=0, dilation_base=1,
                    groups=1, backend="auto"):
    # Same signature as the reference d2conv3d, so a model module can call it unchanged.
    return _d2conv3d_op(x, dilation, modulation, weight, bias, _triple(stride), _triple(padding),
                        _triple(dilation_base), int(groups))


@contextlib.contextmanager
def custom_ops():
    """Within this block the graphs and the models call ``torch.ops.vosrt.*`` instead of the reference
    functions, so that the exporter sees each operator as one node.

    ``vosrt.training.ops.d2conv3d.d2conv3d`` (which the D²Conv3D layers look up at call time), and the
    same name in any model module that imported it directly, point at the custom op for the duration
    of the block.
    """
    global _exporting
    reference = _REFERENCE_D2CONV3D
    patched = [_d2conv3d_module] + [m for name, m in list(sys.modules.items())
                                    if name.startswith("vosrt.training.models")
                                    and getattr(m, "d2conv3d", None) is reference]
    previous, _exporting = _exporting, True
    for module in patched:
        module.d2conv3d = _d2conv3d_as_op
    try:
        yield
    finally:
        for module in patched:
            module.d2conv3d = reference
        _exporting = previous


def exporting() -> bool:
    """True inside :func:`custom_ops`."""
    return _exporting


# ---------------------------------------------------------------------------------------------------
# graph modules


class _Normalize(nn.Module):
    """RGB in [0, 1] -> the model's normalisation ``(x − mean) / std`` over axis 1 (images or clips)."""

    def __init__(self, model: nn.Module, rank: int):
        super().__init__()
        shape = (1, 3) + (1,) * (rank - 2)
        self.register_buffer("mean", torch.tensor(model.input_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(model.input_std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class EncodeKeyGraph(nn.Module):
    """STCN ``encode_key``: image ``[1, 3, H, W]`` in [0, 1] -> key ``[1, Ck, h, w]``, f16_thin, f16, f8, f4."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.normalize = _Normalize(model, 4)

    def forward(self, image: torch.Tensor):
        return self.model.encode_key(self.normalize(image))


class EncodeValueGraph(nn.Module):
    """STCN ``encode_value``: image ``[1, 3, H, W]``, f16 ``[1, C16, h, w]``, masks ``[O, 1, H, W]``
    (object probabilities) -> value ``[O, Cv, h, w]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.normalize = _Normalize(model, 4)

    def forward(self, image: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.model.encode_value(self.normalize(image), f16, masks)


class SegmentGraph(nn.Module):
    """STCN ``segment``: memory read, decoder, soft aggregation and arg-max for all objects at once.

    Inputs: mem_key ``[1, Ck, N]``, mem_value ``[O, Cv, N]``, query_key ``[1, Ck, h, w]``, f16_thin
    ``[1, C, h, w]``, f8, f4, and optionally top_k (int64 ``[1]``, overriding ``self.top_k``).
    Outputs: prob ``[O+1, 1, H, W]`` (background first) and labels ``[1, H, W]`` uint8.
    All objects share one affinity: their values are stacked along the readout's value axis.
    """

    def __init__(self, model: nn.Module, top_k: int = DEFAULT_TOP_K, scale: float | None = None):
        super().__init__()
        self.model = model
        self.top_k = int(top_k)
        self.scale = float(scale) if scale is not None else 1.0 / math.sqrt(model.dims["key_dim"])

    def forward(self, mem_key, mem_value, query_key, f16_thin, f8, f4, top_k: torch.Tensor | None = None):
        objects, value_dim, memory = mem_value.shape
        _, key_dim, height, width = query_key.shape
        values = mem_value.reshape(1, objects * value_dim, memory)  # [1, O·Cv, N]
        queries = query_key.reshape(1, key_dim, height * width)  # [1, Ck, M]
        if _exporting:
            readout = _l2_readout_op(mem_key, queries, values, self.top_k, self.scale, top_k)
        else:
            k = self.top_k if top_k is None else int(top_k.reshape(-1)[0])
            readout = l2_memory_readout(mem_key, queries, values, top_k=max(k, 0), scale=self.scale)
        readout = readout.reshape(objects, value_dim, height, width)  # [O, Cv, h, w]
        logits = self.model.segment(readout, f16_thin, f8, f4)  # [O, 1, H, W]
        prob, _ = soft_aggregate_logits(logits)  # soft_aggregate(sigmoid(logits)) [O+1, 1, H, W], without its rounding
        labels = torch.argmax(prob, dim=0).to(torch.uint8)  # [1, H, W]
        return prob, labels


class SegmentClipGraph(nn.Module):
    """3DC-Seg ``segment_clip``: clip ``[1, 3, L, H, W]`` in [0, 1] -> foreground prob ``[1, 1, L, H, W]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.normalize = _Normalize(model, 5)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(self.normalize(clip)))


# ---------------------------------------------------------------------------------------------------
# graph table


@dataclasses.dataclass
class GraphSpec:
    """One graph of a package: the module, its ONNX input/output names, its dynamic axes
    (``{input or output name: {axis: axis name}}``), the inputs only the portable form exposes
    (``{input: streaming setting}``) and ``example(height, width, **sizes)`` building random example
    inputs (a tuple in input order). Names and axes come from the family table (:meth:`of`)."""

    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    example: Callable[..., tuple]
    portable_inputs: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, family: str, graph: str, module: nn.Module, example: Callable[..., tuple]) -> "GraphSpec":
        """The spec of ``graph`` of ``family`` with its I/O as the family table (vosrt.sdk.families) says."""
        io = families.get(family).graphs[graph]
        return cls(module, io.input_names, io.output_names, {k: dict(v) for k, v in io.dynamic_axes.items()},
                   example, dict(io.portable_inputs))


def family_of_model(model: nn.Module) -> str:
    """The family name of a built model (its ``family`` attribute, set by the family's model module)."""
    family = getattr(model, "family", None)
    if family is None:
        raise TypeError(f"{type(model).__name__} is not a vosrt model: it has no 'family' attribute")
    return families.get(family).name


def graphs_for(model: nn.Module, top_k: int = DEFAULT_TOP_K) -> dict[str, GraphSpec]:
    """The graphs of ``model``'s package, by name (docs/DESIGN.md), built by the family's model module
    (``package_graphs(model, top_k)``). The modules share ``model``'s weights."""
    model.eval()
    module = importlib.import_module(families.get(family_of_model(model)).model_module)
    return module.package_graphs(model, top_k=top_k)
