"""Validation during training through the SDK: the family's shipped session on the torch backend.

The model in memory becomes a torch backend over an in-memory package (``Package.in_memory``) at
``config.val_size`` (default: the family's package resolution), and each video streams through the
family's session with :func:`vosrt.sdk.streaming.stream`, exactly as ``vosrt run --backend torch``
streams an exported package: the same letterboxing, bounded memory bank, memory schedule and clip
schedule. The videos are the folder's ``val`` split where it lists one (a DAVIS folder also holds the
training videos). Families given masks get each object on the first frame it appears (YouTube-VOS
protocol; on DAVIS 2017 all start on frame 0; 255 beside other ids is void). Scores come from
:func:`vosrt.sdk.metrics.score_sequence` (J, F and their mean per object, averaged over objects and videos).
A video's frames are read as the session takes them and its predictions and annotations kept compressed,
so validation's memory does not grow with the videos' length.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vosrt.sdk import families, metrics
from vosrt.sdk.errors import UserError
from vosrt.sdk.package import Package
from vosrt.sdk.progress import Progress
from vosrt.sdk.streaming import stream
from vosrt.training.data.folders import VideoFolder, split_list
from vosrt.training.models import check_min_size


def _resolution(model, config) -> tuple[int, int, int]:
    """(height, width, stride) of the validation session."""
    height, width = (int(v) for v in (config.val_size or families.get(config.family).default_resolution))
    return height, width, int(getattr(model, "size_multiple", 16))


def validation_folder(root, family: str | None = None) -> VideoFolder:
    """The videos validation scores: the folder's ``val`` split where it lists one (DAVIS 2017's
    ``ImageSets/2017/val.txt``, DAVIS 2016's ``ImageSets/480p/val.txt``), else every annotated video. A
    DAVIS folder holds its training videos too, and training takes its ``train`` split. A family not given
    masks is scored on DAVIS's ``Annotations_unsupervised`` where the folder has them."""
    root = Path(root)
    task = "unsupervised" if family is not None and not families.get(family).takes_mask else "semi-supervised"
    return VideoFolder(root, split="val" if split_list(root, "val") is not None else None, task=task)


def check_validation(model, config, root) -> None:
    """UserError, before training starts, for what would fail the first validation, after all the steps
    before it: a ``--val`` folder with no annotated videos, a ``val_size`` the model cannot take, session options
    (``mem_every``, ``clip_overlap`` ...) the family's session refuses."""
    try:
        validation_folder(root, config.family)
    except UserError as err:
        raise UserError(f"--val: {err}") from None
    height, width, stride = _resolution(model, config)
    if height % stride or width % stride:
        raise UserError(f"val_size: expected [height, width], both multiples of {stride}, got [{height}, {width}]")
    check_min_size(height, width, int(getattr(model, "min_size", 0)), config.model, "val_size",
                   '"val_size": [{height}, {width}] in the --config file')
    # the session's settings (memory schedule, clip overlap) are checked when it opens: at the first validation,
    # by default after the last step
    try:
        session_for(model, config).close()
    except UserError as err:
        import json

        from vosrt.training.recipes import recipe_for

        names = recipe_for(config.family).session_options
        options = json.dumps({name: getattr(config.options, name) for name in names})
        raise UserError(f"--val: the validation session refuses the {config.family} options {options} "
                        f"(\"{config.family}\" in the --config file): {err}") from None


def session_for(model, config):
    """The family's SDK session over ``model`` (torch backend, model in memory, RGB frames)."""
    from vosrt.sdk import open_session
    from vosrt.sdk.backends.torch_backend import TorchBackend
    from vosrt.training.recipes import recipe_for

    family = families.get(config.family)
    height, width, stride = _resolution(model, config)
    streaming = {"clip_length": int(model.clip_length)} if hasattr(model, "clip_length") else {}
    package = Package.in_memory(family.name, height, width, stride=stride,
                                variant=config.model, streaming=streaming, config=model.config)
    backend = TorchBackend(package, model=model)
    return open_session(backend, package, color="rgb", **recipe_for(family.name).session_settings(config))


def given_objects(folder: VideoFolder, video: str) -> dict[int, list[int]]:
    """``{frame index: objects first annotated on it}``: where a family given masks gets each object. Beside
    other ids 255 is void, not an object; in a 0/255 video (DAVIS 2016) it is the one object."""
    first = folder.first_appearance(video)
    if set(first) != {metrics.VOID}:
        first.pop(metrics.VOID, None)
    given: dict[int, list[int]] = {}
    for obj, index in first.items():
        given.setdefault(index, []).append(obj)
    return given


def score_video(session, folder: VideoFolder, video: str, family: str, progress=None) -> list[metrics.ObjectScore]:
    """Stream ``video`` through ``session`` (reset first) and score it with :func:`vosrt.sdk.metrics.score_sequence`.
    Each frame is read when the session takes it; the predictions and annotations are kept compressed
    (:class:`vosrt.sdk.metrics.PackedFrames`), so what a video holds at once does not grow with its length."""
    given = given_objects(folder, video) if session.takes_mask else {}
    predicted, truth = metrics.PackedFrames(), metrics.PackedFrames()
    masks: dict[int, np.ndarray] = {}   # the mask of a frame objects are given on, until the session takes it

    def frames():
        for index, (frame, labels) in enumerate(folder.iter_video(video)):
            truth.append(labels)   # None: not annotated (YouTube-VOS annotates every fifth frame), not scored
            if index in given:
                labels = labels if labels is not None else np.zeros(frame.shape[:2], np.uint8)
                masks[index] = np.where(np.isin(labels, given[index]), labels, 0).astype(labels.dtype)
            yield frame

    def keep(done, frame) -> None:
        if done.index != len(predicted):   # sessions emit in order; a skipped frame would misalign the scores
            raise UserError(f"validation of {video}: frame {done.index} came back where frame {len(predicted)} "
                            "was expected")
        predicted.append(done.labels)

    session.reset()
    stream(session, frames(), masks=(lambda index, frame: masks.pop(index, None)) if session.takes_mask else None,
           close=False, progress=progress, on_result=keep)
    return metrics.score_sequence(family, predicted, truth, name=video)


def validate(model, config, root, max_videos: int | None = None, progress: bool = False) -> dict:
    """Dataset J, F and J&F of ``model`` on up to ``max_videos`` videos of the DAVIS-layout folder ``root``
    (its ``val`` split where it lists one: :func:`validation_folder`). ``progress``: a bar over their frames
    on stderr (validation on a CPU can take minutes)."""
    folder = validation_folder(root, config.family)
    videos = folder.videos[:max_videos]
    was_training = model.training
    session = session_for(model, config)
    scores = []
    bar = Progress(total=sum(len(folder.frame_names(v)) for v in videos), unit="frame", enabled=progress,
                   desc=f"validate {len(videos)} video(s)")
    try:
        for video in videos:
            scores += score_video(session, folder, video, config.family, progress=_Shared(bar))
    finally:
        bar.close()
        model.train(was_training)
    return metrics.summarize(scores) if scores else {}


class _Shared:
    """One :class:`Progress` for several ``stream`` calls (each closes the progress it is given)."""

    def __init__(self, bar: Progress):
        self.bar = bar

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.bar.update(n, postfix=postfix)

    def close(self) -> None:
        pass
