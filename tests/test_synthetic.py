"""The procedural video generator: deterministic per seed, DAVIS layout on disk, readable video."""
import cv2
import numpy as np
import pytest

from vosrt.sdk.errors import UserError
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.synthetic import generate_dataset, generate_sequence, write_davis, write_video

from media import video_frames

SIZE = dict(num_frames=12, height=64, width=96)


def test_same_seed_gives_identical_sequence():
    a = generate_sequence(7, **SIZE)
    b = generate_sequence(7, **SIZE)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
    assert all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels))


def test_different_seeds_give_different_sequences():
    a = generate_sequence(1, **SIZE)
    b = generate_sequence(2, **SIZE)
    assert not np.array_equal(a.frames[0], b.frames[0])


def test_frames_and_labels_have_requested_shapes_and_ids():
    seq = generate_sequence(3, num_objects=3, **SIZE)
    assert len(seq) == 12 and len(seq.labels) == 12
    assert seq.frames[0].shape == (64, 96, 3) and seq.frames[0].dtype == np.uint8
    assert seq.labels[0].shape == (64, 96) and seq.labels[0].dtype == np.uint8
    assert seq.object_ids == [1, 2, 3]
    assert set(np.unique(np.stack(seq.labels))) <= {0, 1, 2, 3}
    assert set(np.unique(seq.labels[0])) == {0, 1, 2, 3}  # every object visible when it starts


def test_objects_appearing_later_are_absent_before_their_first_frame():
    seq = generate_sequence(5, num_frames=20, height=64, width=96, num_objects=3, appear_later=True)
    assert seq.first_frame_of(1) == 0
    for obj in (2, 3):
        start = seq.first_frame_of(obj)
        assert start > 0
        assert all(not (labels == obj).any() for labels in seq.labels[:start])
        assert (seq.labels[start] == obj).any()


def test_objects_move_between_frames():
    seq = generate_sequence(11, num_objects=1, **SIZE)
    assert not np.array_equal(seq.labels[0], seq.labels[-1])


def test_some_object_leaves_the_frame_and_comes_back():
    # wanderers bounce in a box larger than the frame; across a handful of long clips one must return
    found = False
    for seed in range(12):
        seq = generate_sequence(seed, num_frames=80, height=48, width=64, num_objects=2, num_distractors=0)
        for obj in seq.object_ids:
            present = np.array([(labels == obj).any() for labels in seq.labels])
            gone = np.flatnonzero(~present)
            if len(gone) and gone[0] > 0 and present[gone[0]:].any():
                found = True
        if found:
            break
    assert found


def test_write_davis_round_trips_ids_exactly_and_frames_closely(tmp_path):
    seq = generate_sequence(4, **SIZE)
    write_davis(tmp_path, "clip", seq)
    for t in (0, 11):
        labels = read_label_png(tmp_path / "Annotations" / "480p" / "clip" / f"{t:05d}.png")
        assert np.array_equal(labels, seq.labels[t])
        image = cv2.imread(str(tmp_path / "JPEGImages" / "480p" / "clip" / f"{t:05d}.jpg"))[..., ::-1]
        assert np.abs(image.astype(int) - seq.frames[t]).mean() < 6
    assert len(list((tmp_path / "JPEGImages" / "480p" / "clip").glob("*.jpg"))) == 12


def test_write_video_writes_every_frame(tmp_path):
    seq = generate_sequence(6, **SIZE)
    path = write_video(tmp_path / "clip.mp4", seq)
    assert video_frames(path) == 12


def test_generate_dataset_lists_its_sequences(tmp_path):
    names = generate_dataset(tmp_path, 2, seed=9, num_frames=4, height=32, width=48)
    assert (tmp_path / "ImageSets" / "2017" / "train.txt").read_text().split() == names
    assert all((tmp_path / "JPEGImages" / "480p" / name / "00003.jpg").is_file() for name in names)


def test_bad_sizes_are_rejected_with_a_user_error():
    with pytest.raises(UserError, match="num_frames"):
        generate_sequence(0, num_frames=0)
