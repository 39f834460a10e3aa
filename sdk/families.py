"""The model families: one row each, read by every layer (sdk, export, training).

A :class:`Family` row says everything the rest of vosrt needs to know about a family without
importing its code: the graphs of its packages and their inputs and outputs, its streaming defaults,
the settings its sessions accept, the session class, the model names training and export build, and
where the family's training code lives. Adding a family is one more :func:`register` call (the
shipped rows are at the bottom of this module); nothing else in the SDK names a family.

    from vosrt.sdk import families
    family = families.get("stcn")           # UserError listing the known families for an unknown name
    family.graph_names                      # ('encode_key', 'encode_value', 'segment')
    family.session_class()                  # vosrt.sdk.tracker.Tracker

Training and export add their parts *beside* a row, by module path (``model_module``,
``recipe_module``), so the SDK never imports torch or the training code: they are imported only by
the layer that needs them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from vosrt.sdk.errors import UserError

# Input kinds: what values a graph input holds (used to make valid random inputs for parity checks).
IMAGE = "image"               # RGB in [0, 1] (an image or a clip)
PROBABILITIES = "probabilities"  # per-object probabilities of disjoint objects along the objects axis
FEATURES = "features"         # anything else: network features, standard normal in tests


@dataclass(frozen=True)
class GraphIO:
    """Inputs and outputs of one graph of a package.

    ``inputs``: ``{name: kind}`` in the graph's input order (kinds above). ``outputs``: names in
    order. ``dynamic_axes``: ``{input or output name: {axis: label}}``; labels ``"objects"`` and
    ``"memory"`` are the ones engine profiles and parity checks size. ``portable_inputs``:
    ``{input name: streaming setting}`` for inputs that only the portable form exposes, with the
    setting's value as their default (the plugin form holds it as a node attribute). ``memory``: the
    inputs and outputs that are memory-bank tensors, which fp16 engines hold in float16
    (:mod:`vosrt.export.fp16`).
    """

    inputs: dict
    outputs: tuple
    dynamic_axes: dict = field(default_factory=dict)
    portable_inputs: dict = field(default_factory=dict)
    memory: tuple = ()

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring).

    ``settings``: session keyword settings (e.g. ``mem_every``); ``streaming``: the defaults recorded
    in a package's manifest. ``session``: ``"module:Class"`` of the session ``vosrt.sdk.load`` returns.
    ``models``: the model names training and export build (the first is the published, full-size
    one). ``demo_model``: the shipped package ``vosrt demo`` uses. ``takes_mask``: sessions are given
    object masks (semi-supervised); otherwise they segment unsupervised and refuse masks.
    ``in_graph``: the steps the graphs compute (recorded in the manifest). ``layout``: the image input
    layout. ``model_module``/``recipe_module``: the training code (imported by training/export only).
    ``cpu_reference``: a CPU-sized training config (under ``training/configs``) and the seconds per
    step it was measured to take on 2 CPU cores, from which ``vosrt train`` estimates CPU runs.
    """

    name: str
    task: str
    graphs: dict
    streaming: dict
    settings: tuple
    session: str
    models: tuple
    takes_mask: bool
    in_graph: tuple
    layout: str = "NCHW"
    demo_model: str | None = None
    default_resolution: tuple = (480, 864)
    model_module: str | None = None
    recipe_module: str | None = None
    cpu_reference: tuple | None = None   # (training config file, measured CPU seconds per step)

    @property
    def graph_names(self) -> tuple:
        return tuple(self.graphs)

    @property
    def full_model(self) -> str:
        return self.models[0]

    def session_class(self):
        """The session class (imported on first use)."""
        module, _, name = self.session.partition(":")
        return getattr(importlib.import_module(module), name)

    def check_settings(self, settings: dict, flags: tuple | None = None) -> None:
        """UserError when ``settings`` names something this family's sessions do not take. ``flags``: the
        settings a command has flags for; the error then names flags, and lists only those the command has."""
        wrong = [k for k in settings if k not in self.settings]
        if wrong:
            def show(name):
                return f"--{name.replace('_', '-')}" if flags is not None else name
            takes = [show(k) for k in self.settings if flags is None or k in flags]
            raise UserError(f"{', '.join(show(k) for k in wrong)}: not a setting of {self.name} packages "
                            f"(they take {', '.join(takes) or 'none of these flags'})")


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family row; returns it."""
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family row (tests that register a throwaway family)."""
    _FAMILIES.pop(name, None)


def names() -> list[str]:
    """Names of the known families."""
    return list(_FAMILIES)


def all_families() -> list[Family]:
    return list(_FAMILIES.values())


def get(name: str, what: str = "family") -> Family:
    """The row of family ``name``; UserError listing the known families otherwise."""
    if name not in _FAMILIES:
        raise UserError(f"unknown {what} '{name}': expected one of {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def of_model(model: str) -> Family:
    """The family that builds model ``model`` (``stcn-lite`` -> stcn); a family name stands for its
    full-size model. UserError listing every model name otherwise."""
    for family in _FAMILIES.values():
        if model == family.name or model in family.models:
            return family
    known = [m for f in _FAMILIES.values() for m in f.models]
    raise UserError(f"unknown model '{model}': expected one of {', '.join(known)}")


def model_names() -> list[str]:
    """Every model name any family builds."""
    return [m for f in _FAMILIES.values() for m in f.models]


# ---------------------------------------------------------------------------------------------- rows

register(Family(
    name="stcn",
    task="semi-supervised VOS: object masks given on some frames are tracked through the stream",
    graphs={
        "encode_key": GraphIO({"image": IMAGE}, ("key", "f16_thin", "f16", "f8", "f4"), memory=("key",)),
        "encode_value": GraphIO({"image": IMAGE, "f16": FEATURES, "masks": PROBABILITIES}, ("value",),
                                {"masks": {0: "objects"}, "value": {0: "objects"}}, memory=("value",)),
        "segment": GraphIO({"mem_key": FEATURES, "mem_value": FEATURES, "query_key": FEATURES,
                            "f16_thin": FEATURES, "f8": FEATURES, "f4": FEATURES}, ("prob", "labels"),
                           {"mem_key": {2: "memory"}, "mem_value": {0: "objects", 2: "memory"},
                            "prob": {0: "objects_and_background"}},
                           portable_inputs={"top_k": "top_k"}, memory=("mem_key", "mem_value", "query_key")),
    },
    streaming={"mem_every": 5, "top_k": 20, "memory_capacity": 20, "max_objects": 32},
    settings=("mem_every", "top_k", "memory_capacity", "color", "max_objects"),
    session="vosrt.sdk.tracker:Tracker",
    models=("stcn", "stcn-lite"),
    takes_mask=True,
    in_graph=("normalization", "soft_aggregation", "argmax"),
    demo_model="stcn-lite",
    model_module="vosrt.training.models.stcn",
    recipe_module="vosrt.training.recipes.stcn",
    cpu_reference=("stcn-lite-demo.json", 2347 / 3500),    # sdk/models/stcn-lite/training.json
))

register(Family(
    name="3dc-seg",
    task="unsupervised VOS: the salient moving objects of overlapping clips, no mask given",
    graphs={"segment_clip": GraphIO({"clip": IMAGE}, ("prob",))},
    streaming={"clip_length": 8, "overlap": 3},
    settings=("overlap", "threshold", "color"),
    session="vosrt.sdk.clip_segmenter:ClipSegmenter",
    models=("3dc-seg", "3dc-seg-lite"),
    takes_mask=False,
    in_graph=("normalization", "sigmoid"),
    layout="NCTHW",
    demo_model="3dc-seg-lite",
    model_module="vosrt.training.models.c3dseg",
    recipe_module="vosrt.training.recipes.c3dseg",
    cpu_reference=("3dc-seg-lite-demo.json", 900 / 400),   # 400 steps in 15 min (sdk/models/README.md)
))

register(Family(
    name="stem-seg",
    task="video instance segmentation: every object instance found, segmented and tracked, no mask given",
    graphs={"embed_clip": GraphIO({"clip": IMAGE},
                                  ("embeddings", "bandwidths", "seediness", "foreground", "categories"))},
    # overlap 4 of 8 as the public code's YouTube-VIS / KITTI-MOTS inference (its DAVIS model: 6 of 16); the
    # clustering thresholds are the public code's defaults (see vosrt.sdk.instances). foreground_threshold 0.25 is
    # its threshold of the seediness (--seediness_thresh), the foreground of models without a category head; the
    # export records 0.5 for models with one (StemSeg.streaming_defaults, stemseg/inference/main.py fg_masks > 0.5).
    streaming={"clip_length": 8, "overlap": 4, "min_seediness": 0.8, "foreground_threshold": 0.25,
               "max_instances": 20},
    settings=("overlap", "min_seediness", "foreground_threshold", "max_instances", "link_iou", "color"),
    session="vosrt.sdk.instance_segmenter:InstanceSegmenter",
    models=("stem-seg", "stem-seg-lite"),
    takes_mask=False,
    in_graph=("normalization", "coordinates", "bandwidth_exp", "sigmoid", "softmax"),
    layout="NCTHW",
    demo_model="stem-seg-lite",
    model_module="vosrt.training.models.stem_seg",
    recipe_module="vosrt.training.recipes.stem_seg",
))
