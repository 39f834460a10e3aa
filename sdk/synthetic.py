"""Procedural training and demo video: textured objects moving over textured backgrounds.

Everything is drawn with numpy and OpenCV from a seed, so a sequence is the same on every machine,
needs no download and no torch (the SDK tests and ``vosrt demo`` use it on a runtime-only install).

What a sequence contains
    - a background: a textured plane panning with a slowly changing velocity, plus a few unlabelled
      *distractor* shapes drawn from the same shape and texture families as the objects, so that a model
      must track the annotated instances rather than segment "anything textured";
    - ``num_objects`` labelled objects (ids 1..n, fixed depth order: a higher id is drawn in front),
      each an ellipse, polygon, star or blob with a procedural texture (stripes, checks, smoothed noise,
      gradients, dots), colours drawn from the same distribution as the background's, which
      translate, rotate, scale anisotropically, deform (a travelling wave on the outline), occlude one
      another, and may leave the frame and come back;
    - with ``appear_later=True``, every object after the first enters on a later frame (its id is
      absent from the label maps before that frame), as in DAVIS 2017 / YouTube-VOS;
    - mild photometric change: a global brightness drift and sensor-like noise.

API
    ``generate_sequence(seed, num_frames=40, height=240, width=432, num_objects=None,
    appear_later=False, num_distractors=None) -> Sequence``
        ``Sequence.frames``: list of ``[H, W, 3]`` uint8 RGB; ``Sequence.labels``: list of ``[H, W]``
        uint8 object ids (0 background); ``Sequence.object_ids``; ``Sequence.first_frame_of(id)``.
    ``write_davis(root, name, sequence, quality=95)``
        writes ``root/JPEGImages/480p/NAME/00000.jpg`` and ``root/Annotations/480p/NAME/00000.png``
        (palette PNGs, pixel value = object id), the DAVIS 2017 layout every vosrt tool reads.
    ``write_video(path, sequence, fps=15)``: the frames as an mp4 (OpenCV ``mp4v``).
    ``generate_dataset(root, num_sequences, seed, ...) -> list[str]``
        writes ``num_sequences`` sequences named ``synth-SEED-INDEX`` in DAVIS layout and the list file
        ``root/ImageSets/2017/SPLIT.txt``. Sequence ``i`` uses ``sequence_seed(seed, i)``, so a dataset
        seed never reuses another dataset seed's sequences; held-out sets use a different ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vosrt.sdk.errors import UserError
from vosrt.sdk.masks import write_label_png

SHAPES = ("ellipse", "polygon", "star", "blob")
TEXTURES = ("stripes", "checks", "noise", "gradient", "dots")

# how far (in units of the object radius) the texture patch reaches past the unit outline: outlines
# deform up to ~1.35 and must stay inside the patch
_PATCH_EXTENT = 1.6


@dataclass
class Sequence:
    """A generated clip: ``frames`` ``[H, W, 3]`` uint8 RGB and ``labels`` ``[H, W]`` uint8 ids per frame."""

    frames: list[np.ndarray]
    labels: list[np.ndarray]
    seed: int = 0
    start_frames: dict[int, int] = field(default_factory=dict)

    @property
    def object_ids(self) -> list[int]:
        """The labelled object ids of the sequence (1..n), whether visible on a given frame or not."""
        return sorted(self.start_frames)

    def first_frame_of(self, object_id: int) -> int:
        """Index of the first frame on which ``object_id`` is drawn."""
        return self.start_frames[object_id]

    def __len__(self) -> int:
        return len(self.frames)


# ---------------------------------------------------------------------------------------------- textures

def _random_colour(rng: np.random.Generator) -> np.ndarray:
    # uniform in RGB cube, but pushed away from mid-grey half the time so that some textures are vivid
    colour = rng.uniform(0, 255, 3)
    if rng.random() < 0.5:
        colour = 127.5 + (colour - 127.5) * 1.6
    return np.clip(colour, 0, 255).astype(np.float32)


def _texture(rng: np.random.Generator, height: int, width: int, kind: str | None = None) -> np.ndarray:
    """A ``[height, width, 3]`` uint8 procedural texture of ``kind`` (random when None)."""
    kind = kind or TEXTURES[rng.integers(len(TEXTURES))]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = _random_colour(rng), _random_colour(rng)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "stripes":
        period = rng.uniform(5, 24)
        soft = rng.random() < 0.5
        phase = np.sin(2 * np.pi * u / period)
        t = 0.5 + 0.5 * phase if soft else (phase > 0).astype(np.float32)
    elif kind == "checks":
        period = rng.uniform(6, 28)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "noise":
        sigma = rng.uniform(1.5, 8)
        noise = rng.standard_normal((height, width)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
        noise = (noise - noise.min()) / max(float(noise.max() - noise.min()), 1e-6)
        t = noise
    elif kind == "gradient":
        span = max(height, width) * rng.uniform(0.3, 1.2)
        t = np.clip((u - u.mean()) / span + 0.5, 0, 1)
    elif kind == "dots":
        period = rng.uniform(8, 22)
        radius = period * rng.uniform(0.2, 0.4)
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        t = (du * du + dv * dv < radius * radius).astype(np.float32)
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    image = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    # fine grain on every texture so that flat regions still carry some pattern
    grain = rng.standard_normal((height, width, 1)).astype(np.float32) * rng.uniform(2, 10)
    return np.clip(image + grain, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- shapes

@dataclass
class _Shape:
    angles: np.ndarray  # [P] polar angles of the outline vertices
    radii: np.ndarray   # [P] radius of each vertex, unit size ≈ 1
    wave_amp: float     # deformation: radii *= 1 + wave_amp * sin(wave_k * angle + wave_speed * t + phase)
    wave_k: int
    wave_speed: float
    wave_phase: float

    def outline(self, t: float) -> np.ndarray:
        """``[P, 2]`` outline in unit object coordinates at time ``t`` (frames)."""
        wave = 1 + self.wave_amp * np.sin(self.wave_k * self.angles + self.wave_speed * t + self.wave_phase)
        r = self.radii * wave
        return np.stack([r * np.cos(self.angles), r * np.sin(self.angles)], axis=1)


def _random_shape(rng: np.random.Generator, kind: str | None = None) -> _Shape:
    kind = kind or SHAPES[rng.integers(len(SHAPES))]
    if kind == "ellipse":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ax, ay = 1.0, rng.uniform(0.45, 1.0)
        radii = ax * ay / np.sqrt((ay * np.cos(angles)) ** 2 + (ax * np.sin(angles)) ** 2)
    elif kind == "polygon":
        count = int(rng.integers(3, 9))
        # keep vertices spread out so the polygon is not a sliver
        angles = np.sort((np.arange(count) + rng.uniform(-0.3, 0.3, count)) * 2 * np.pi / count
                         + rng.uniform(0, 2 * np.pi))
        radii = rng.uniform(0.6, 1.0, count)
    elif kind == "star":
        points = int(rng.integers(4, 8))
        angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) + rng.uniform(0, np.pi)
        inner = rng.uniform(0.35, 0.65)
        radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    elif kind == "blob":
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radii = np.ones_like(angles)
        for harmonic in range(2, 6):
            radii = radii + rng.uniform(0, 0.25 / harmonic * 2) * np.sin(harmonic * angles + rng.uniform(0, 2 * np.pi))
        radii = np.clip(radii / radii.max(), 0.3, 1.0)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    return _Shape(angles=angles, radii=radii, wave_amp=rng.uniform(0.0, 0.15), wave_k=int(rng.integers(2, 6)),
                  wave_speed=rng.uniform(0.05, 0.3), wave_phase=rng.uniform(0, 2 * np.pi))


# ---------------------------------------------------------------------------------------------- motion

@dataclass
class _Track:
    """Per-frame pose of one drawn thing: centre (x, y), rotation, anisotropic scale; None before start."""

    centre: np.ndarray    # [T, 2]
    rotation: np.ndarray  # [T]
    scale: np.ndarray     # [T, 2]


def _random_track(rng: np.random.Generator, num_frames: int, height: int, width: int, radius: float,
                  start: int, wander: bool) -> _Track:
    size = min(height, width)
    centre = np.zeros((num_frames, 2))
    pos = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
    # per-frame speed of 0.3-1.5 % of the frame's short side (peaks 2.5×): DAVIS-like motion
    speed = rng.uniform(0.003, 0.015) * size
    heading = rng.uniform(0, 2 * np.pi)
    vel = speed * np.array([np.cos(heading), np.sin(heading)])
    # the box the centre bounces inside: a wanderer's box reaches past the frame by more than its
    # radius, so it leaves completely and comes back
    margin = radius * rng.uniform(1.2, 1.8) if wander else -radius * 0.3
    low = np.array([-margin, -margin])
    high = np.array([width + margin, height + margin])
    for t in range(start, num_frames):
        centre[t] = pos
        vel = vel + rng.normal(0, 0.15 * speed, 2)
        norm = np.linalg.norm(vel)
        if norm > 2.5 * speed:
            vel *= 2.5 * speed / norm
        pos = pos + vel
        for axis in range(2):
            if pos[axis] < low[axis] or pos[axis] > high[axis]:
                vel[axis] = -vel[axis]
                pos[axis] = np.clip(pos[axis], low[axis], high[axis])
    spin = rng.uniform(-0.05, 0.05)
    rotation = rng.uniform(0, 2 * np.pi) + spin * np.arange(num_frames) + rng.uniform(0, 0.2) * np.sin(
        np.arange(num_frames) * rng.uniform(0.05, 0.2))
    t = np.arange(num_frames)[:, None]
    base = rng.uniform(0.85, 1.15)
    scale = base * (1 + rng.uniform(0, 0.25, 2) * np.sin(t * rng.uniform(0.03, 0.15, 2) + rng.uniform(0, 2 * np.pi, 2)))
    return _Track(centre=centre, rotation=rotation, scale=scale)


@dataclass
class _Thing:
    """An object or a distractor: a shape with a texture patch following a track."""

    shape: _Shape
    texture: np.ndarray  # [S, S, 3] uint8, centred on the object origin
    radius: float
    track: _Track
    start: int

    def affine(self, t: int) -> np.ndarray:
        """2×2 linear part mapping unit object coordinates to image pixels at frame ``t``."""
        c, s = np.cos(self.track.rotation[t]), np.sin(self.track.rotation[t])
        rot = np.array([[c, -s], [s, c]])
        return rot @ np.diag(self.track.scale[t]) * self.radius

    def render(self, t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image [H, W, 3] of the texture where drawn, boolean mask [H, W]) at frame ``t``."""
        linear = self.affine(t)
        centre = self.track.centre[t]
        outline = self.shape.outline(t) @ linear.T + centre  # [P, 2] image pixels (x, y)
        mask = np.zeros((height, width), np.uint8)
        shift = 4  # sub-pixel vertex precision for fillPoly
        cv2.fillPoly(mask, [np.round(outline * (1 << shift)).astype(np.int32)], 1, cv2.LINE_8, shift)
        # patch pixel u -> unit coords (u - S/2) * ext / (S/2) -> image linear @ unit + centre
        half = self.texture.shape[0] / 2
        to_image = linear * (_PATCH_EXTENT / half)
        offset = centre - to_image @ np.array([half, half])
        matrix = np.concatenate([to_image, offset[:, None]], axis=1).astype(np.float64)
        image = cv2.warpAffine(self.texture, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        return image, mask.astype(bool)


def _random_thing(rng: np.random.Generator, num_frames: int, height: int, width: int, start: int,
                  wander: bool, radius_range: tuple[float, float]) -> _Thing:
    radius = rng.uniform(*radius_range) * min(height, width)
    shape = _random_shape(rng)
    patch = int(np.ceil(2 * _PATCH_EXTENT * radius * 1.5))
    texture = _texture(rng, patch, patch)
    track = _random_track(rng, num_frames, height, width, radius, start, wander)
    return _Thing(shape=shape, texture=texture, radius=radius, track=track, start=start)


# ---------------------------------------------------------------------------------------------- sequences

def _check_size(name: str, value: int, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def generate_sequence(seed: int, num_frames: int = 40, height: int = 240, width: int = 432,
                      num_objects: int | None = None, appear_later: bool = False,
                      num_distractors: int | None = None) -> Sequence:
    """Generate one clip, identical for identical arguments.

    ``num_objects`` None draws 1-3. ``appear_later`` makes every object after the first enter on a
    later frame (between 1/5 and 1/2 of the clip). ``num_distractors`` (unlabelled background shapes)
    None draws 0-3. Every object covers at least a few dozen visible pixels on its first frame.
    """
    num_frames = _check_size("num_frames", num_frames, 1)
    height = _check_size("height", height, 16)
    width = _check_size("width", width, 16)
    rng = np.random.default_rng(seed)
    if num_objects is None:
        num_objects = int(rng.integers(1, 4))
    num_objects = _check_size("num_objects", num_objects, 1)
    if num_objects > 255:
        raise UserError(f"num_objects: at most 255 objects fit in uint8 label maps, got {num_objects}")
    if num_distractors is None:
        num_distractors = int(rng.integers(0, 4))

    # background: a texture larger than the frame, panned by a smooth random walk
    pad = max(height, width) // 2
    background = _texture(rng, height + 2 * pad, width + 2 * pad)
    if rng.random() < 0.6:
        # a second texture blended through a smooth mask, so the background is not one pattern
        other = _texture(rng, height + 2 * pad, width + 2 * pad)
        blend = cv2.GaussianBlur(rng.standard_normal((height + 2 * pad, width + 2 * pad)).astype(np.float32),
                                 (0, 0), min(height, width) / 6)
        blend = (blend > 0).astype(np.float32)
        blend = cv2.GaussianBlur(blend, (0, 0), 3)[..., None]
        background = (background * blend + other * (1 - blend)).astype(np.uint8)
    pan_speed = rng.uniform(0, 0.012) * min(height, width)
    pan_vel = pan_speed * rng.standard_normal(2)
    pan = np.zeros((num_frames, 2))
    for t in range(1, num_frames):
        pan_vel = 0.9 * pan_vel + rng.normal(0, 0.3 * pan_speed + 1e-3, 2)
        pan[t] = np.clip(pan[t - 1] + pan_vel, -pad + 1, pad - 1)

    distractors = [_random_thing(rng, num_frames, height, width, 0, rng.random() < 0.3, (0.06, 0.18))
                   for _ in range(num_distractors)]
    for attempt in range(50):
        starts = [0] + [int(rng.integers(max(1, num_frames // 5), max(2, num_frames // 2 + 1)))
                        if appear_later and num_frames > 1 else 0 for _ in range(num_objects - 1)]
        objects = [_random_thing(rng, num_frames, height, width, start, rng.random() < 0.4, (0.1, 0.24))
                   for start in starts]
        frames, labels = _render(objects, distractors, background, pan, pad, num_frames, height, width, rng)
        min_area = max(16, int(0.002 * height * width))
        visible = all(int((labels[obj.start] == i + 1).sum()) >= min_area for i, obj in enumerate(objects))
        if visible:
            break
    return Sequence(frames=frames, labels=labels, seed=int(seed),
                    start_frames={i + 1: obj.start for i, obj in enumerate(objects)})


def _render(objects, distractors, background, pan, pad, num_frames, height, width, rng):
    frames, labels = [], []
    brightness = 1 + 0.08 * np.sin(np.arange(num_frames) * rng.uniform(0.02, 0.1) + rng.uniform(0, 2 * np.pi))
    noise_sigma = rng.uniform(1, 4)
    for t in range(num_frames):
        shift = np.array([[1, 0, -pad - pan[t, 0]], [0, 1, -pad - pan[t, 1]]], np.float64)
        frame = cv2.warpAffine(background, shift, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        for thing in distractors:
            image, mask = thing.render(t, height, width)
            frame[mask] = image[mask]
        label = np.zeros((height, width), np.uint8)
        for index, thing in enumerate(objects):  # in depth order: later objects occlude earlier ones
            if t < thing.start:
                continue
            image, mask = thing.render(t, height, width)
            frame[mask] = image[mask]
            label[mask] = index + 1
        frame = frame * brightness[t] + rng.normal(0, noise_sigma, frame.shape).astype(np.float32)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        labels.append(label)
    return frames, labels


# ---------------------------------------------------------------------------------------------- writers

def _jpeg_params(quality: int) -> list[int]:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    # full-resolution chroma: the textures are colourful and fine, and 4:2:0 smears object borders
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    return params


def write_davis(root: str | Path, name: str, sequence: Sequence, quality: int = 95) -> Path:
    """Write ``sequence`` as DAVIS 2017 folders under ``root``; returns ``root``.

    ``JPEGImages/480p/NAME/00000.jpg`` (JPEG ``quality``) and ``Annotations/480p/NAME/00000.png``
    (palette PNG of object ids) for every frame.
    """
    root = Path(root)
    if not name or "/" in name or "\\" in name:
        raise UserError(f"sequence name: expected a plain folder name, got {name!r}")
    image_dir = root / "JPEGImages" / "480p" / name
    mask_dir = root / "Annotations" / "480p" / name
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for index, (frame, label) in enumerate(zip(sequence.frames, sequence.labels)):
        ok = cv2.imwrite(str(image_dir / f"{index:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                         _jpeg_params(quality))
        if not ok:
            raise UserError(f"could not write {image_dir / f'{index:05d}.jpg'}")
        write_label_png(mask_dir / f"{index:05d}.png", label)
    return root


def write_video(path: str | Path, sequence: Sequence | list[np.ndarray], fps: float = 15) -> Path:
    """Write the frames of ``sequence`` (or a list of ``[H, W, 3]`` uint8 RGB frames) as an mp4."""
    frames = sequence.frames if isinstance(sequence, Sequence) else list(sequence)
    if not frames:
        raise UserError("write_video: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise UserError(f"could not open {path} for writing an mp4 video")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def sequence_seed(seed: int, index: int) -> int:
    """The seed of sequence ``index`` of the dataset generated with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def generate_dataset(root: str | Path, num_sequences: int, seed: int, num_frames: int = 40,
                     height: int = 240, width: int = 432, num_objects: int | None = None,
                     appear_later_fraction: float = 0.3, split: str = "train",
                     num_distractors: int | None = None) -> list[str]:
    """Write ``num_sequences`` generated sequences in DAVIS 2017 layout under ``root``; returns their names.

    A fraction ``appear_later_fraction`` of the sequences (chosen from ``seed``) has objects entering
    later. ``num_distractors`` (unlabelled shapes) None draws 0-3 per sequence; 0 suits unsupervised
    (3DC-Seg) training, where every moving shape should be foreground. The names are listed in ``root/ImageSets/2017/SPLIT.txt`` (appended to an existing list).
    """
    num_sequences = _check_size("num_sequences", num_sequences, 1)
    chooser = np.random.default_rng(sequence_seed(seed, -1 & 0xFFFFFFFF))
    names = []
    for index in range(num_sequences):
        name = f"synth-{int(seed)}-{index:04d}"
        sequence = generate_sequence(sequence_seed(seed, index), num_frames=num_frames, height=height, width=width,
                                     num_objects=num_objects,
                                     appear_later=bool(chooser.random() < appear_later_fraction),
                                     num_distractors=num_distractors)
        write_davis(root, name, sequence)
        names.append(name)
    list_file = Path(root) / "ImageSets" / "2017" / f"{split}.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    existing = list_file.read_text().split() if list_file.is_file() else []
    list_file.write_text("".join(f"{n}\n" for n in dict.fromkeys(existing + names)))
    return names
