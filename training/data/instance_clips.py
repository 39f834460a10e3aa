"""STEm-Seg's clip samplers: L frames with one mask per object instance.

Samples: ``images`` ``[3, L, H, W]`` float in [0, 1], ``masks`` ``[max_instances, L, H, W]`` float 0/1
(one slot per instance, unused slots zero), ``categories`` ``[max_instances]`` int64 (0 for an unused
slot; 1 for every instance of the class-agnostic sources, the dataset's category ids otherwise),
``ignore`` ``[L, H, W]`` bool (regions left out of the losses: label 255 / KITTI-MOTS id 10000),
``video`` name.

- :class:`GeneratedInstanceClips`: clips generated on the fly (:mod:`vosrt.sdk.synthetic`), a fresh clip
  per sample, 1..max_instances labelled objects plus unlabelled distractors (background to the model).
- :class:`FolderInstanceClips`: DAVIS-layout folders whose annotations hold instance ids (DAVIS
  2017/2019 unsupervised, or generated datasets): a clip drawn as for 3DC-Seg
  (:func:`~vosrt.training.data.clips.sample_clip_indices`), one resize-crop-flip for all its frames, and
  up to ``max_instances`` of the objects visible in it (chosen at random when there are more); 255 is void,
  except in a video whose only id it is (DAVIS 2016's 0/255 masks), where it is the one instance.
- :class:`VISJsonClips`: YouTube-VIS 2019/2021 and OVIS annotation files with their JPEG folders.
- :class:`KittiMOTSClips`: KITTI-MOTS sequences with instance PNGs or the txt format.
"""
from __future__ import annotations

import numpy as np
import torch

from vosrt.sdk.synthetic import generate_sequence, sequence_seed
from vosrt.sdk.errors import first_few
from vosrt.sdk.video import frame_files, load_image
from vosrt.training.data import transforms as T
from vosrt.training.data.clips import AnnotatedClips, clip_warp, sample_clip_indices
from vosrt.training.data.folders import VideoFolder
from vosrt.training.data.sampling import SeededDataset, images_to_tensor
from vosrt.training.data.vos import OnlyVoidVideos


def _pack(frames: list[np.ndarray], labels: list[np.ndarray], objects: list[int], max_instances: int,
          name: str) -> dict:
    stacked = np.stack(labels)                                              # [L, H, W]
    masks = np.zeros((max_instances, *stacked.shape), np.float32)
    categories = np.zeros(max_instances, np.int64)
    for slot, obj in enumerate(objects[:max_instances]):
        masks[slot] = stacked == obj
        categories[slot] = 1
    images = images_to_tensor(frames).transpose(0, 1).contiguous()          # [3, L, H, W]
    return {"images": images, "masks": torch.from_numpy(masks), "categories": torch.from_numpy(categories),
            "ignore": torch.from_numpy(stacked == 255), "video": name}


def _slot_labels(ids: np.ndarray, slots: dict[int, int], void: int) -> np.ndarray:
    """A map of instance ids -> uint8 labels: ``slots[id]`` (1..K) for the chosen ids, 255 for ``void``, 0
    elsewhere."""
    label = np.zeros(ids.shape, np.uint8)
    for obj, slot in slots.items():
        label[ids == obj] = slot
    label[ids == void] = 255
    return label


def _augment(rng: np.random.Generator, frames: list[np.ndarray], labels: list[np.ndarray], size) -> tuple[list, list]:
    """One resize-crop-flip (:func:`~vosrt.training.data.clips.clip_warp`) for all frames of a clip."""
    matrix = clip_warp(rng, *frames[0].shape[:2], size)
    out = [T.warp_affine(f, lab, matrix, size) for f, lab in zip(frames, labels)]
    return [f for f, _ in out], [lab for _, lab in out]


class GeneratedInstanceClips(SeededDataset):
    """``samples_per_epoch`` fresh generated clips per epoch of ``clip_length`` frames at ``size``."""

    def __init__(self, clip_length: int = 8, size: tuple[int, int] = (96, 128), max_instances: int = 3,
                 samples_per_epoch: int = 1000, seed: int = 0):
        self.clip_length = int(clip_length)
        self.size = tuple(size)
        self.max_instances = int(max_instances)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)

    def clip_seed(self, index: int) -> int:
        """Seed of the clip behind sample ``index`` of the current epoch."""
        return sequence_seed(self.seed, self.epoch * self.samples_per_epoch + int(index))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        count = int(self.rng(index).integers(1, self.max_instances + 1))
        clip = generate_sequence(self.clip_seed(index), num_frames=self.clip_length, height=self.size[0],
                                 width=self.size[1], num_objects=count)
        return _pack(clip.frames, clip.labels, clip.object_ids, self.max_instances,
                     f"generated-{self.clip_seed(index)}")


class FolderInstanceClips(AnnotatedClips):
    """Instance clips from DAVIS-layout folders (module docstring); only annotated frames are used."""

    def __init__(self, folders: VideoFolder | list[VideoFolder], size: tuple[int, int] = (480, 854),
                 clip_length: int = 8, max_window: int = 16, max_instances: int = 10, repeat: int = 1, seed: int = 0):
        super().__init__(folders, size, clip_length, max_window, repeat, seed)
        self.max_instances = int(max_instances)
        self.only_void_videos = OnlyVoidVideos(self.items)

    def __getitem__(self, index: int) -> dict:
        folder, video, rng, chosen, frames = self.draw(index)
        ids = [folder.read_labels(video, s, f.shape).astype(np.int64) for s, f in zip(chosen, frames)]
        # 255 is void, except in a video whose only id it is (DAVIS 2016's 0/255 masks), where it is the
        # instance: read as void there, such a video trained on no instance at all (loss 0)
        void = -1 if self.only_void_videos(index % len(self.items), ids) else 255
        # Ids become slots 1..K before the 8-bit augmentation: masks of 16-bit ids (vosrt's own PNGs beyond
        # 255 objects) would wrap otherwise (id 256 read as background); void becomes 255.
        present = sorted({int(i) for frame_ids in ids for i in np.unique(frame_ids) if i not in (0, void)})
        slots = {obj: k for k, obj in enumerate(present, 1)}
        if len(slots) > 254:
            from vosrt.sdk.errors import UserError
            raise UserError(f"{video}: {len(slots)} instances in one clip; at most 254 are supported")
        labels = [_slot_labels(frame_ids, slots, void=void) for frame_ids in ids]
        out_frames, out_labels = _augment(rng, frames, labels, self.size)
        visible = sorted({int(i) for lab in out_labels for i in np.unique(lab) if i not in (0, 255)})
        if len(visible) > self.max_instances:
            visible = sorted(rng.choice(visible, self.max_instances, replace=False).tolist())
        return _pack(out_frames, out_labels, visible, self.max_instances, video)


# ------------------------------------------------------------------------------------ annotation files


def _read_rgb(path) -> np.ndarray:
    image = load_image(path)
    return image[:, :, ::-1].copy()


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """A YouTube-VIS / OVIS per-frame segmentation (RLE, compressed or not, or polygons) → bool [H, W]."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


class VISJsonClips(SeededDataset):
    """Clips from a YouTube-VIS 2019/2021 or OVIS annotation file (``videos`` with ``file_names``,
    ``annotations`` with per-frame ``segmentations`` and ``category_id``); images under ``image_root``
    (default: ``JPEGImages``, ``train/JPEGImages`` or ``train`` beside the JSON, whichever holds the
    first video's first frame). Categories are the dataset's ids (a model with ``num_classes`` =
    max id + 1). Needs pycocotools for the masks."""

    def __init__(self, annotations, image_root=None, size: tuple[int, int] = (480, 864), clip_length: int = 8,
                 max_window: int = 16, max_instances: int = 10, repeat: int = 1, seed: int = 0):
        import json
        from pathlib import Path

        from vosrt.sdk.errors import UserError

        path = Path(annotations)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"--data {path}: expected a YouTube-VIS / OVIS annotation JSON ({err})") from None
        if not isinstance(data, dict) or not data.get("videos"):
            raise UserError(f"--data {path}: no 'videos' in the annotation file")
        if isinstance(data["videos"], dict):
            # YouTube-VOS's meta.json: {"videos": {NAME: {"objects": ...}}}, no masks: its folder holds them
            where = (f"give its folder, --data {path.parent}" if (path.parent / "JPEGImages").is_dir() else
                     "give the YouTube-VOS folder (the one holding JPEGImages/ and Annotations/)")
            raise UserError(f"--data {path}: a YouTube-VOS meta.json (videos by name, no masks), not a YouTube-VIS / "
                            f"OVIS annotation file (videos with file_names, annotations with segmentations); to "
                            f"train on YouTube-VOS's PNG annotations {where}")
        if not data.get("annotations"):
            raise UserError(f"--data {path}: the file has no annotations (YouTube-VIS and OVIS keep those of their "
                            f"valid and test splits private); train on the train split's file (train.json, or "
                            f"train/instances.json in YouTube-VIS 2021)")
        first = data["videos"][0]["file_names"][0]
        candidates = [Path(image_root)] if image_root else [path.parent / "JPEGImages", path.parent / "train" / "JPEGImages",
                                                             path.parent / "train", path.parent]
        found = [c for c in candidates if (c / first).is_file()]
        if not found:
            raise UserError(f"--data {path}: the images (e.g. {first}) are in none of {', '.join(map(str, candidates))}")
        self.image_root = found[0]
        self.videos = data["videos"]
        self.tracks: dict[int, list] = {}
        for ann in data.get("annotations", []):
            self.tracks.setdefault(ann["video_id"], []).append(ann)
        self.videos = [v for v in self.videos if v["id"] in self.tracks]
        self.categories = sorted({int(ann["category_id"]) for ann in data["annotations"]})   # the ids samples carry
        self.size, self.clip_length, self.max_window = tuple(size), int(clip_length), int(max_window)
        self.max_instances, self.repeat, self.seed = int(max_instances), int(repeat), int(seed)

    def __len__(self) -> int:
        return len(self.videos) * self.repeat

    def __getitem__(self, index: int) -> dict:
        video = self.videos[index % len(self.videos)]
        rng = self.rng(index)
        chosen = sample_clip_indices(rng, len(video["file_names"]), self.clip_length, self.max_window)
        frames = [_read_rgb(self.image_root / video["file_names"][t]) for t in chosen]
        height, width = frames[0].shape[:2]
        # the tracks seen in the clip's frames (a video's others would be empty slots): with more tracks than
        # max_instances, those kept were drawn from all of them, and an instance in view could be dropped for one
        # that is not (it then was background in the losses)
        tracks = [ann for ann in self.tracks[video["id"]] if any(ann["segmentations"][t] for t in chosen)]
        if len(tracks) > self.max_instances:
            tracks = [tracks[i] for i in sorted(rng.choice(len(tracks), self.max_instances, replace=False))]
        labels = []
        for t in chosen:
            label = np.zeros((height, width), np.uint8)
            for slot, ann in enumerate(tracks, 1):
                seg = ann["segmentations"][t]
                if seg is not None:
                    label[_decode(seg, height, width)] = slot
            labels.append(label)
        frames, labels = _augment(rng, frames, labels, self.size)
        sample = _pack(frames, labels, list(range(1, len(tracks) + 1)), self.max_instances, str(video["id"]))
        for slot, ann in enumerate(tracks):
            sample["categories"][slot] = int(ann["category_id"])
        return sample


# KITTI-MOTS's annotated sequences: the train / val split of mots_tools' train.seqmap and val.seqmap
# train: mots_tools' train.seqmap, and 0050, MOTSChallenge's sequence 0002 (JPEG frames) that STEm-Seg trains on
# beside them (stemseg/config/defaults.yaml DATA.KITTI_MOTS.TRAIN_SEQS; its README: copied in as images/0050)
KITTI_MOTS_SPLITS = {"train": tuple(f"{i:04d}" for i in (0, 1, 3, 4, 5, 9, 11, 12, 15, 17, 19, 20, 50)),
                     "val": tuple(f"{i:04d}" for i in (2, 6, 7, 8, 10, 13, 14, 16, 18))}
KITTI_FRAME_SUFFIXES = (".png", ".jpg")   # KITTI's PNG frames; MOTSChallenge's JPEG ones (0050)


def kitti_mots_split(root, names: list[str], split: str) -> list[str]:
    """The sequences of ``names`` (a KITTI-MOTS folder's) that ``split`` takes (:class:`KittiMOTSClips`)."""
    import sys

    from vosrt.sdk.errors import UserError

    if split not in ("train", "val", "all"):
        raise UserError(f"kitti_split: expected 'train', 'val' or 'all', got {split!r}")
    known = set(KITTI_MOTS_SPLITS["train"]) | set(KITTI_MOTS_SPLITS["val"])
    if split == "all" or not known & set(names):
        return names
    chosen = [n for n in names if n in KITTI_MOTS_SPLITS[split]]
    left = [n for n in names if n not in chosen]
    how = 'set "kitti_split": "all" under "stem-seg" in a --config file to take every sequence'
    if not chosen:
        raise UserError(f"--data {root}: none of its sequences ({first_few(names)}) "
                        f"is in KITTI-MOTS's {split} split ({', '.join(KITTI_MOTS_SPLITS[split])}); give the folder "
                        f"holding them, or {how}")
    if left:
        # said as what they are: a sequence of neither split was called "the validation split"
        val = [n for n in left if n in KITTI_MOTS_SPLITS["val"]] if split == "train" else []
        other = [n for n in left if n not in val]
        parts = [f"{first_few(val, 9)} (the validation split, kept for evaluation)"] if val else []
        if other:
            parts.append(first_few(other, 9) + (" (in no split of KITTI-MOTS)" if split == "train" else ""))
        print(f"note: --data {root}: KITTI-MOTS's {split} split, {len(chosen)} of its {len(names)} sequences; "
              f"{' and '.join(parts)} left out; {how}", file=sys.stderr)
    return chosen


class KittiMOTSClips(SeededDataset):
    """Clips from KITTI-MOTS: images ``ROOT/images/<seq>/<frame>.png`` (``.jpg``: MOTSChallenge's frames, as STEm-Seg's
    sequence 0050) (or the KITTI tracking layout
    ``ROOT/training/image_02/<seq>/``) and annotations as instance PNGs ``ROOT/instances/<seq>/<frame>.png``
    (value = class · 1000 + instance) or ``ROOT/instances_txt/<seq>.txt`` lines ``frame id class height
    width rle``. Class 1 car, 2 pedestrian; id 10000 (class 10) marks ignore regions, which are left out
    of the losses (``ignore``). Needs pycocotools for the txt format.

    ``split``: KITTI-MOTS's 21 annotated sequences are 12 for training and 9 for validation (the split of the
    MOTS paper's mots_tools ``train.seqmap`` / ``val.seqmap``, which STEm-Seg trains and evaluates on; the train split
    also takes 0050, STEm-Seg's MOTSChallenge sequence):
    ``"train"`` (default) and ``"val"`` take theirs where the folder holds KITTI-MOTS's sequence names (a
    note says which were left out), ``"all"`` every sequence. A folder of other names is taken whole."""

    def __init__(self, root, size: tuple[int, int] = (384, 1248), clip_length: int = 8, max_window: int = 8,
                 max_instances: int = 20, repeat: int = 1, seed: int = 0, split: str = "train"):
        from pathlib import Path

        from vosrt.sdk.errors import UserError

        root = Path(root)
        self.images = next((p for p in (root / "images", root / "training" / "image_02") if p.is_dir()), None)
        self.png_root = root / "instances" if (root / "instances").is_dir() else None
        self.txt_root = root / "instances_txt" if (root / "instances_txt").is_dir() else None
        if self.images is None or (self.png_root is None and self.txt_root is None):
            raise UserError(f"--data {root}: expected KITTI-MOTS images/ (or training/image_02/) and instances/ "
                            "or instances_txt/")
        self.sequences = kitti_mots_split(root, sorted(p.name for p in self.images.iterdir() if p.is_dir()), split)
        # a sequence without its annotations failed at its first clip (FileNotFoundError) or, with the PNG
        # layout, trained as all background
        unannotated = [seq for seq in self.sequences
                       if not ((self.png_root is not None and any((self.png_root / seq).glob("*.png")))
                               or (self.txt_root is not None and (self.txt_root / f"{seq}.txt").is_file()))]
        if unannotated:
            where = " or ".join(str(r / ("SEQ/*.png" if r is self.png_root else "SEQ.txt"))
                                for r in (self.png_root, self.txt_root) if r is not None)
            raise UserError(f"--data {root}: {len(unannotated)} sequence(s) of {self.images} have no annotations "
                            f"({first_few(unannotated)}; expected {where}); "
                            "add them, or remove those sequences' images")
        # a sequence folder without frames failed at its first clip ("high <= 0")
        empty = [seq for seq in self.sequences if not any(frame_files(self.images / seq, KITTI_FRAME_SUFFIXES))]
        if empty:
            raise UserError(f"--data {root}: {len(empty)} sequence folder(s) of {self.images} hold no frames "
                            f"({first_few(empty)}; expected "
                            f"{self.images / 'SEQ' / '000000.png'} or .jpg); add them, or remove those folders")
        self.size, self.clip_length, self.max_window = tuple(size), int(clip_length), int(max_window)
        self.max_instances, self.repeat, self.seed = int(max_instances), int(repeat), int(seed)
        self._txt: dict[str, dict[int, list]] = {}

    def __len__(self) -> int:
        return len(self.sequences) * self.repeat

    def _ids(self, seq: str, frame: int, shape) -> np.ndarray:
        """Instance ids ``[H, W]`` int32 (class · 1000 + instance, 10000 ignore) of one frame."""
        if self.png_root is not None:
            from vosrt.sdk.masks import read_label_png
            path = self.png_root / seq / f"{frame:06d}.png"
            return read_label_png(path).astype(np.int32) if path.is_file() else np.zeros(shape, np.int32)
        if seq not in self._txt:
            lines: dict[int, list] = {}
            for line in (self.txt_root / f"{seq}.txt").read_text().splitlines():
                if line.strip():
                    t, obj, _, h, w, counts = line.split(maxsplit=5)
                    lines.setdefault(int(t), []).append((int(obj), int(h), int(w), counts))
            self._txt[seq] = lines
        from pycocotools import mask as mask_utils
        ids = np.zeros(shape, np.int32)
        for obj, h, w, counts in self._txt[seq].get(frame, []):
            ids[mask_utils.decode({"size": [h, w], "counts": counts.encode()}).astype(bool)] = obj
        return ids

    def __getitem__(self, index: int) -> dict:
        seq = self.sequences[index % len(self.sequences)]
        rng = self.rng(index)
        files = sorted(frame_files(self.images / seq, KITTI_FRAME_SUFFIXES))
        chosen = sample_clip_indices(rng, len(files), self.clip_length, self.max_window)
        frames = [_read_rgb(files[t]) for t in chosen]
        ids = [self._ids(seq, int(files[t].stem), frames[0].shape[:2]) for t in chosen]
        objects = sorted({int(i) for frame_ids in ids for i in np.unique(frame_ids) if i and i != 10000})
        if len(objects) > self.max_instances:
            objects = sorted(rng.choice(objects, self.max_instances, replace=False).tolist())
        slots = {obj: k for k, obj in enumerate(objects, 1)}
        labels = [_slot_labels(frame_ids, slots, void=10000) for frame_ids in ids]
        frames, labels = _augment(rng, frames, labels, self.size)
        sample = _pack(frames, labels, list(range(1, len(objects) + 1)), self.max_instances, seq)
        for slot, obj in enumerate(objects):
            sample["categories"][slot] = obj // 1000
        return sample
