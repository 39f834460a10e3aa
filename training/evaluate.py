"""Validation during training: run the PyTorch model over DAVIS-layout videos and score J&F.

Inference here is the plain PyTorch form of what the SDK sessions do (kept small and in one place so a
training run needs no exported package):

- ``stcn``: objects are given on the first frame they appear (YouTube-VOS protocol; on DAVIS 2017 all
  start on frame 0); the memory holds the first annotated frame and every ``mem_every``-th frame, read
  with top-k (``top_k``) as at inference; soft aggregation and arg-max give the labels.
- ``3dc-seg``: clips of ``clip_length`` frames every ``clip_length - overlap`` frames, the foreground
  probabilities of overlapping clips averaged, threshold 0.5.

Scores come from :mod:`vosrt.sdk.metrics` (J, F and their mean per object, averaged over objects and
videos); without that module validation reports nothing rather than an invented number.
"""
from __future__ import annotations

import numpy as np
import torch

from vosrt.training.data.folders import VideoFolder
from vosrt.training.ops.aggregate import soft_aggregate
from vosrt.training.ops.l2_readout import l2_memory_readout
from vosrt.training.preprocess import pad_to_multiple, unpad
from vosrt.training.steps import _normalise


def _frame_tensor(frame: np.ndarray, model, device) -> torch.Tensor:
    image = torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float() / 255  # [1, 3, H, W]
    return _normalise(image, model, 1)


@torch.no_grad()
def predict_stcn(model, frames: list[np.ndarray], annotations: dict[int, np.ndarray], mem_every: int = 5,
                 top_k: int = 20) -> list[np.ndarray]:
    """Label maps for ``frames`` (``[H, W, 3]`` uint8 RGB) given ``annotations`` {frame index: labels}."""
    device = next(model.parameters()).device
    objects: list[int] = []
    memory = []  # per memory frame: [key [1, Ck, h·w], image, f16, values [O, Cv, h, w], masks [O, 1, H, W]]
    results = []
    pads = None
    for index, frame in enumerate(frames):
        image, pads = pad_to_multiple(_frame_tensor(frame, model, device))
        key, f16_thin, f16, f8, f4 = model.encode_key(image)
        prob = None
        if memory and objects:
            mem_key = torch.cat([m[0] for m in memory], dim=2)  # [1, Ck, N]
            values = torch.cat([m[3].flatten(2) for m in memory], dim=2)  # [O, Cv, N], frame-major as the keys
            mem_value = values.flatten(0, 1)[None]  # [1, O·Cv, N]
            readout = l2_memory_readout(mem_key, key.flatten(2), mem_value, top_k=top_k)
            readout = readout.view(len(objects), -1, *key.shape[2:])  # [O, Cv, h, w]
            prob = torch.sigmoid(model.segment(readout, f16_thin, f8, f4))  # [O, 1, H, W]
        new = annotations.get(index)
        if new is not None:
            given, _ = pad_to_multiple(torch.from_numpy(new.astype(np.int64)).to(device)[None, None])  # [1,1,H,W]
            for obj in (int(v) for v in np.unique(new) if v != 0 and int(v) not in objects):
                objects.append(obj)
                # earlier memory frames hold an empty mask for the newcomer
                for m in memory:
                    empty = torch.zeros_like(m[4][:1])
                    m[3] = torch.cat([m[3], _values(model, m[1], m[2], empty)], 0)
                    m[4] = torch.cat([m[4], empty], 0)
            annotated = torch.stack([(given[0] == obj).float() for obj in objects])  # [O, 1, H, W]
            is_given = torch.tensor([float((new == obj).any()) for obj in objects], device=device)[:, None, None, None]
            previous = torch.zeros_like(annotated)
            if prob is not None:
                previous[:prob.shape[0]] = prob
            # annotated objects take their masks; the others keep their prediction outside those masks
            covered = (given > 0).float()
            prob = is_given * annotated + (1 - is_given) * previous * (1 - covered)
        if prob is None:
            results.append(np.zeros(frame.shape[:2], np.uint8))
            continue
        merged, _ = soft_aggregate(prob)  # [O+1, 1, H, W]
        labels = unpad(merged.argmax(dim=0)[0], pads).cpu().numpy()
        ids = np.array([0] + objects, np.uint8)
        results.append(ids[labels])
        if new is not None or index % mem_every == 0:
            masks = merged[1:]
            memory.append([key.flatten(2), image, f16, _values(model, image, f16, masks), masks])
    return results


def _values(model, image, f16, masks):
    """Memory values ``[O, Cv, h, w]`` of one frame for the object probabilities ``masks`` ``[O, 1, H, W]``."""
    return model.encode_value(image, f16, masks)


@torch.no_grad()
def predict_clips(model, frames: list[np.ndarray], clip_length: int = 8, overlap: int = 3) -> list[np.ndarray]:
    """Foreground label maps (0/1 uint8) of ``frames`` from overlapping clips."""
    device = next(model.parameters()).device
    count = len(frames)
    height, width = frames[0].shape[:2]
    total = torch.zeros(count, height, width)
    hits = torch.zeros(count)
    stride = max(1, clip_length - overlap)
    starts = list(range(0, max(count - clip_length, 0) + 1, stride))
    if starts[-1] + clip_length < count:
        starts.append(count - clip_length)
    for start in starts:
        picked = [min(max(i, 0), count - 1) for i in range(start, start + clip_length)]
        clip = torch.stack([_frame_tensor(frames[i], model, device)[0] for i in picked], 1)[None]  # [1,3,L,H,W]
        clip, pads = pad_to_multiple(clip)
        prob = torch.sigmoid(unpad(model(clip), pads))[0, 0].float().cpu()  # [L, H, W]
        for offset, i in enumerate(picked):
            if start <= i < start + clip_length and (offset == 0 or picked[offset - 1] != i):
                total[i] += prob[offset]
                hits[i] += 1
    return [((total[i] / hits[i].clamp(min=1)) > 0.5).numpy().astype(np.uint8) for i in range(count)]


def evaluate_folder(model, config, root, max_videos: int | None = None) -> dict:
    """Dataset J, F and J&F (``vosrt.sdk.metrics``: means over objects) of ``model`` on up to
    ``max_videos`` videos of the DAVIS-layout folder ``root``; {} when the metrics are unavailable."""
    try:
        from vosrt.sdk import metrics
    except ImportError:
        return {}
    folder = VideoFolder(root)
    was_training = model.training
    model.eval()
    scores = []
    for video in folder.videos[:max_videos]:
        frames, labels = folder.load_video(video)
        truth = [lab if lab is not None else np.zeros(f.shape[:2], np.uint8) for f, lab in zip(frames, labels)]
        if config.family == "stcn":
            annotations = {}
            for obj, index in folder.first_appearance(video).items():
                annotations.setdefault(index, np.zeros_like(truth[index]))
                annotations[index][truth[index] == obj] = obj
            predicted = predict_stcn(model, frames, annotations, config.mem_every, config.top_k)
            scores += metrics.evaluate_sequence(predicted, truth, name=video)
        else:
            predicted = predict_clips(model, frames, config.clip_length, config.clip_overlap)
            truth = [(t > 0).astype(np.uint8) for t in truth]
            # unsupervised protocol: no frame is given, so every frame is scored
            scores += metrics.evaluate_sequence(predicted, truth, name=video, skip_first_last=False)
    model.train(was_training)
    return metrics.summarize(scores) if scores else {}
