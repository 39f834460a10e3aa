"""Reading VOS datasets laid out as their authors ship them: JPEG frames plus PNG annotations.

Recognised layouts (``root`` is the folder you downloaded):

- DAVIS 2017 (and vosrt's generated data): ``JPEGImages/480p/NAME/00000.jpg``,
  ``Annotations/480p/NAME/00000.png`` (palette PNGs, pixel = object id), sequence lists in
  ``ImageSets/2017/SPLIT.txt``. The unsupervised task's annotations (DAVIS 2017/2019 unsupervised) are
  ``Annotations_unsupervised/480p``: read with ``task="unsupervised"`` (3DC-Seg and STEm-Seg training),
  where the folder has them, as the DAVIS evaluation (davis2017/davis.py) and 3DC-Seg's
  datasets/davis/Davis.py read them; ``Annotations`` otherwise.
- DAVIS 2016: the same folders with grey-scale 0/255 foreground masks; lists in
  ``ImageSets/480p/SPLIT.txt`` whose lines are frame paths (the sequence name is taken from them).
- YouTube-VOS: ``[SPLIT/]JPEGImages/NAME/*.jpg`` and ``[SPLIT/]Annotations/NAME/*.png``; annotations may
  exist for only some frames (every fifth in the training set), and objects may appear on any frame.

Frames are returned as ``[H, W, 3]`` uint8 RGB, annotations as ``[H, W]`` uint8 object ids (grey-scale
masks give their values, so a DAVIS 2016 mask reads 0/255: there 255 is the object, beside other ids it
is void, which the samplers decide per video with :class:`vosrt.training.data.vos.OnlyVoidVideos`).
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from vosrt.sdk.errors import UserError, first_few
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.video import frame_files, load_image


SPLIT_LIST_DIRS = ("2017", "2016", "480p")   # ImageSets/<dir>/<split>.txt: DAVIS 2017, DAVIS 2016 (both)
TASKS = ("semi-supervised", "unsupervised")
UNSUPERVISED_ANNOTATIONS = "Annotations_unsupervised"   # DAVIS 2017/2019 unsupervised task


def split_list(root, split: str) -> Path | None:
    """The list file of ``split`` in the DAVIS folder ``root`` (the first of ``ImageSets/2017``, ``2016``,
    ``480p``), None where it lists no such split."""
    for folder in SPLIT_LIST_DIRS:
        candidate = Path(root) / "ImageSets" / folder / f"{split}.txt"
        if candidate.is_file():
            return candidate
    return None


class VideoFolder:
    """One dataset folder: the list of videos, their frames and annotations.

    ``split`` selects the videos listed for that split (``ImageSets/2017/SPLIT.txt``, DAVIS 2016's
    ``ImageSets/480p/SPLIT.txt``, or YouTube-VOS's ``SPLIT/`` sub-folder); None takes every video that
    has at least one annotation. ``resolution`` is DAVIS's sub-folder (``480p`` or ``Full-Resolution``).
    ``task``: ``"semi-supervised"`` reads DAVIS's ``Annotations``, ``"unsupervised"`` its
    ``Annotations_unsupervised`` where the folder has them (else ``Annotations``: DAVIS 2016, generated data).
    """

    def __init__(self, root: str | Path, split: str | None = None, resolution: str = "480p",
                 task: str = "semi-supervised"):
        if task not in TASKS:
            raise ValueError(f"task: one of {TASKS}, got {task!r}")
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"dataset folder not found: {root}")
        if split is not None and (root / split / "JPEGImages").is_dir():
            root = root / split  # YouTube-VOS: train/ and valid/ each hold JPEGImages and Annotations
            listed = None
        else:
            listed = split
        self.root = root
        if (root / "JPEGImages" / resolution).is_dir():
            self.layout = "davis"
            self.image_root = root / "JPEGImages" / resolution
            unsupervised = root / UNSUPERVISED_ANNOTATIONS / resolution
            if task == "unsupervised" and unsupervised.is_dir():
                self.mask_root = unsupervised
            else:
                self.mask_root = root / "Annotations" / resolution
                if task == "unsupervised" and (root / "ImageSets" / "2017").is_dir() and self.mask_root.is_dir():
                    # DAVIS 2017 without its unsupervised set: the semi-supervised task's objects were taken without
                    # a word (DAVIS 2016 has only Annotations, the salient object: taken as it is)
                    _note_once(f"note: {root}: no {UNSUPERVISED_ANNOTATIONS}/{resolution} (DAVIS-2017-Unsupervised's "
                               f"annotations, which the published unsupervised models train on); training reads "
                               f"Annotations/{resolution}, the semi-supervised task's objects")
                if not self.mask_root.is_dir() and unsupervised.is_dir():
                    raise UserError(f"{root}: holds {UNSUPERVISED_ANNOTATIONS}/{resolution} (the annotations of "
                                    f"DAVIS's unsupervised task) but no Annotations/{resolution}, which semi-"
                                    f"supervised training reads (the masks of DAVIS-2017-trainval-{resolution}.zip)")
        elif (root / "JPEGImages" / "Full-Resolution").is_dir() and resolution != "Full-Resolution":
            # DAVIS's Full-Resolution zip: its resolution folder was taken for a YouTube-VOS video, and the run
            # stopped with "no annotated videos found (looked in ROOT/Annotations)"
            raise UserError(f"{root}: holds DAVIS at Full-Resolution (JPEGImages/Full-Resolution), but training reads "
                            f"its {resolution} frames (JPEGImages/{resolution}, Annotations/{resolution}: the "
                            f"DAVIS-2017-trainval-{resolution}.zip set, which the published models train on); unpack "
                            f"that set into {root} or give its folder to --data")
        elif (root / "JPEGImages").is_dir():
            self.layout = "youtube-vos"
            self.image_root = root / "JPEGImages"
            self.mask_root = root / "Annotations"
        else:
            raise UserError(f"{root}: expected a DAVIS (JPEGImages/{resolution}/NAME) or YouTube-VOS "
                            f"(JPEGImages/NAME) folder, found no JPEGImages folder{_level_hint(root)}")
        names = sorted(p.name for p in self.image_root.iterdir() if p.is_dir())
        if listed is not None:
            wanted = self._read_split(listed)
            missing = [n for n in wanted if n not in names]
            if missing:
                raise UserError(f"{root}: split '{listed}' lists videos with no frames folder: {missing[:5]}")
            names = wanted
        else:
            names = [n for n in names if _list_stems(self.mask_root / n, ".png")]
        if not names:
            # a YouTube-VIS / OVIS folder (frames beside a JSON of the annotations) was said as a DAVIS one missing masks
            found = sorted({*root.glob("*.json"), *root.parent.glob("*.json")} - {root / "meta.json",
                                                                                 root.parent / "meta.json"})
            hint = (f"; its annotations may be the JSON beside it: stem-seg trains on a YouTube-VIS / OVIS file, "
                    f"--data {found[0]}" if found else "")
            raise UserError(f"{root}: no annotated videos found (looked in {self.mask_root}){hint}")
        self.videos: list[str] = names
        # {(folder, suffix): {stem: file}} of the folders holding a file whose suffix is not lower case (.JPG),
        # listed once, at the first read of such a file, not at every read
        self._listed: dict[tuple[str, str], dict[str, Path]] = {}

    def _read_split(self, split: str) -> list[str]:
        candidate = split_list(self.root, split)
        if candidate is not None:
            names = []
            for line in candidate.read_text().split("\n"):
                line = line.strip()
                if not line:
                    continue
                # DAVIS 2016 lists frame paths ("/JPEGImages/480p/bear/00000.jpg ..."), 2017 names
                name = Path(line.split()[0]).parent.name if "/" in line else line
                names.append(name)
            return list(dict.fromkeys(names))
        raise UserError(f"{self.root}: no list file for split '{split}' (expected ImageSets/2017/{split}.txt, or "
                        f"DAVIS 2016's ImageSets/2016/{split}.txt or ImageSets/480p/{split}.txt)")

    def __len__(self) -> int:
        return len(self.videos)

    def frame_names(self, video: str) -> list[str]:
        """Sorted frame stems (file names without extension) of ``video``'s JPEGs."""
        return _list_stems(self.image_root / video, ".jpg")

    def annotated_names(self, video: str) -> list[str]:
        """Sorted stems of ``video``'s annotated frames (those with a PNG)."""
        return _list_stems(self.mask_root / video, ".png")

    def frame_path(self, video: str, stem: str) -> Path:
        """The JPEG of frame ``stem`` (``.jpg`` in any letter case, as :meth:`frame_names` lists them)."""
        return self._named(self.image_root / video, stem, ".jpg")

    def mask_path(self, video: str, stem: str) -> Path:
        """The PNG annotation of frame ``stem`` (``.png`` in any letter case)."""
        return self._named(self.mask_root / video, stem, ".png")

    def _named(self, folder: Path, stem: str, suffix: str) -> Path:
        """``folder/stem+suffix``, or the file of that stem whose suffix differs only in letter case (``.JPG``)."""
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
        key = (str(folder), suffix)
        if key not in self._listed:
            self._listed[key] = _files_by_stem(folder, suffix)
        return self._listed[key].get(stem, path)

    def read_frame(self, video: str, stem: str) -> np.ndarray:
        """Frame ``stem`` of ``video`` as ``[H, W, 3]`` uint8 RGB."""
        path = self.frame_path(video, stem)
        image = load_image(path, "frame")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def read_labels(self, video: str, stem: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Annotation ``stem`` of ``video`` as ``[H, W]`` uint8 ids; ``shape``: its frame's shape, which the
        annotation must have (UserError otherwise: the mask would be warped out of register)."""
        path = self.mask_path(video, stem)
        labels = read_label_png(path)
        if shape is not None:
            check_mask_size(labels, shape, path, self.frame_path(video, stem))
        return labels

    def object_ids(self, video: str) -> list[int]:
        """Every object id annotated anywhere in ``video``."""
        return sorted(self.first_appearance(video))

    def first_appearance(self, video: str) -> dict[int, int]:
        """``{object id: index (in frame_names) of the first frame annotating it}``."""
        return _first_appearance(self, video)

    def iter_video(self, video: str) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """``video``'s frames in order, each read when it is asked for, with its annotation or None where
        there is none."""
        annotated = set(self.annotated_names(video))
        for stem in self.frame_names(video):
            frame = self.read_frame(video, stem)
            yield frame, self.read_labels(video, stem, frame.shape) if stem in annotated else None

    def load_video(self, video: str) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """All frames of ``video`` and, per frame, its annotation or None where there is none."""
        pairs = list(self.iter_video(video))
        return [frame for frame, _ in pairs], [labels for _, labels in pairs]


_noted: set[str] = set()


def _note_once(note: str) -> None:
    """Print ``note`` on stderr, once per process (a dataset folder is opened again for validation, each epoch)."""
    import sys

    if note not in _noted:
        _noted.add(note)
        print(note, file=sys.stderr, flush=True)


def _level_hint(root: Path) -> str:
    """Where the dataset folder is when ``root`` (which has no ``JPEGImages``) is a level above or inside it."""
    inside = [p for p in sorted(root.iterdir()) if (p / "JPEGImages").is_dir()]
    if inside:
        return f"; the dataset folder is one level deeper: give {', or '.join(map(str, inside))}"
    for parent in list(root.resolve().parents)[:3]:
        if (parent / "JPEGImages").is_dir():
            return f"; {root} lies inside the dataset folder: give {parent}"
    return ""


def check_mask_size(labels: np.ndarray, shape: tuple[int, ...], mask_path: Path, image_path: Path) -> None:
    """UserError unless the label map ``labels`` (read from ``mask_path``) has the height and width of its
    image (``shape``, read from ``image_path``)."""
    if tuple(labels.shape[:2]) != tuple(shape[:2]):
        raise UserError(f"mask {mask_path} is {labels.shape[1]}x{labels.shape[0]} but its image {image_path} is "
                        f"{shape[1]}x{shape[0]}: an annotation must have its frame's size (resize it with "
                        f"nearest-neighbour interpolation, or pair it with the frames of its resolution)")


def annotated_videos(folders) -> tuple[list[VideoFolder], list[tuple[VideoFolder, str]]]:
    """(folders, [(folder, video), ...] of every video with at least two annotated frames) for one folder or
    several; UserError when there is nothing to train on. A sample takes several annotated frames of a video: one
    with a single annotation (a validation or test split's first-frame mask: YouTube-VOS's valid/, DAVIS's
    test-dev) gave that frame again and again, and a split's video without annotations was left out; both are
    said in a note."""
    import sys

    folders = [folders] if isinstance(folders, VideoFolder) else list(folders)
    counted = [(folder, video, len(folder.annotated_names(video))) for folder in folders for video in folder.videos]
    items = [(folder, video) for folder, video, count in counted if count >= 2]
    single = [video for _, video, count in counted if count == 1]
    bare = [video for _, video, count in counted if count == 0]
    roots = ", ".join(str(folder.root) for folder in folders)

    if not items:
        if single:
            raise UserError(f"--data {roots}: every annotated video has one annotated frame ({first_few(single)}): the "
                            f"first-frame masks of a validation or test split (YouTube-VOS's valid/, DAVIS's "
                            f"test-dev); training samples several annotated frames of a video: give the train split")
        raise UserError(f"--data {roots}: no annotated videos to train on")
    left = ([f"{len(single)} with one annotated frame ({first_few(single)})"] if single else []) + \
        ([f"{len(bare)} listed by the split without annotations ({first_few(bare)})"] if bare else [])
    if left:
        print(f"note: --data {roots}: {' and '.join(left)} left out; training takes the {len(items)} video(s) with "
              f"two or more annotated frames", file=sys.stderr, flush=True)
    return folders, items


def _list_stems(folder: Path, suffix: str) -> list[str]:
    """Sorted stems of ``folder``'s files whose suffix is ``suffix`` in any letter case, each once (a stem with
    both ``.jpg`` and ``.JPG`` is one frame, read from the lower-case file)."""
    return sorted(_files_by_stem(folder, suffix))


def _files_by_stem(folder: Path, suffix: str) -> dict[str, Path]:
    """``{stem: file}`` of ``folder``'s files whose suffix is ``suffix`` in any letter case (the lower-case one
    where a stem has both), hidden ones left out (:func:`vosrt.sdk.video.frame_files`)."""
    files: dict[str, Path] = {}
    for p in (frame_files(folder, (suffix,)) if folder.is_dir() else ()):
        if p.suffix == suffix or (p.suffix.lower() == suffix and p.stem not in files):
            files[p.stem] = p
    return files


@lru_cache(maxsize=4096)
def _first_appearance_cached(mask_root: str, video: str, stems: tuple[str, ...], frame_stems: tuple[str, ...]):
    position = {stem: i for i, stem in enumerate(frame_stems)}
    files = _files_by_stem(Path(mask_root) / video, ".png")  # listed once, not once a mask
    first: dict[int, int] = {}
    for stem in stems:
        ids = np.unique(read_label_png(files.get(stem, Path(mask_root) / video / f"{stem}.png")))
        for obj in ids[ids > 0].tolist():
            first.setdefault(int(obj), position.get(stem, 0))
    return first


def _first_appearance(folder: VideoFolder, video: str) -> dict[int, int]:
    return dict(_first_appearance_cached(str(folder.mask_root), video, tuple(folder.annotated_names(video)),
                                         tuple(folder.frame_names(video))))
