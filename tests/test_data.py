"""Dataset folders and the training samplers, on generated DAVIS / YouTube-VOS / DAVIS 2016 folders."""
import shutil

import cv2
import numpy as np
import pytest
import torch

from vosrt.sdk.errors import UserError
from vosrt.sdk.masks import read_label_png, write_label_png
from vosrt.sdk.synthetic import generate_sequence, write_davis
from vosrt.training.data import (ForegroundClipDataset, StaticSequenceDataset, VideoFolder, VOSTripletDataset,
                                 max_skip_at, sample_clip_indices, sample_frame_indices)

SIZE = dict(num_frames=10, height=64, width=96)


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    sequences = {"early": generate_sequence(1, num_objects=2, **SIZE),
                 "late": generate_sequence(2, num_objects=3, appear_later=True, **SIZE)}
    for name, seq in sequences.items():
        write_davis(root, name, seq)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("late\n")
    return root, sequences


def test_davis_folder_reads_labels_exactly_and_frames_as_stored(davis):
    root, sequences = davis
    folder = VideoFolder(root)
    assert folder.layout == "davis" and folder.videos == ["early", "late"]
    seq = sequences["late"]
    assert folder.frame_names("late") == [f"{i:05d}" for i in range(10)]
    for i, stem in enumerate(folder.frame_names("late")):
        assert np.array_equal(folder.read_labels("late", stem), seq.labels[i])
        stored = cv2.imread(str(root / "JPEGImages" / "480p" / "late" / f"{stem}.jpg"))[..., ::-1]
        assert np.array_equal(folder.read_frame("late", stem), stored)
        assert np.abs(folder.read_frame("late", stem).astype(int) - seq.frames[i]).mean() < 6


def test_frames_and_masks_with_upper_case_extensions_are_read(tmp_path, davis):
    # frame_names listed 00000.JPG as "00000" but read_frame opened 00000.jpg ("cannot read frame"), and a
    # video whose masks were .PNG was not a video at all
    root, sequences = davis
    shutil.copytree(root, tmp_path / "upper")
    for path in list((tmp_path / "upper").glob("*/480p/late/*")):
        path.rename(path.with_suffix(path.suffix.upper()))
    folder = VideoFolder(tmp_path / "upper")
    assert folder.videos == ["early", "late"] and folder.frame_names("late") == [f"{i:05d}" for i in range(10)]
    frames, labels = folder.load_video("late")
    assert len(frames) == 10 and all(np.array_equal(lab, seq) for lab, seq in zip(labels, sequences["late"].labels))
    assert folder.first_appearance("late") == VideoFolder(root).first_appearance("late")


def test_a_video_of_upper_case_extensions_is_listed_once_not_once_a_read(tmp_path, monkeypatch):
    # every read of a .JPG frame or .PNG mask listed its folder to find it: quadratic in the video's length
    import os

    names = [f"{i:05d}" for i in range(30)]
    for folder, suffix in (("JPEGImages", ".JPG"), ("Annotations", ".PNG")):
        (tmp_path / folder / "480p" / "v").mkdir(parents=True)
        for i, stem in enumerate(names):
            image = np.full((8, 8, 3) if suffix == ".JPG" else (8, 8), i % 3, np.uint8)
            assert cv2.imwrite(str(tmp_path / folder / "480p" / "v" / f"{stem}{suffix}"), image)
    folder = VideoFolder(tmp_path)
    listed = []
    for name in ("listdir", "scandir"):  # what Path.iterdir calls (listdir up to Python 3.11, scandir after)
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path=".", real=real: listed.append(str(path)) or real(path))
    for stem in folder.frame_names("v"):
        folder.read_labels("v", stem, folder.read_frame("v", stem).shape)
    assert sorted(listed) == sorted([str(tmp_path / "JPEGImages" / "480p" / "v")] * 2
                                    + [str(tmp_path / "Annotations" / "480p" / "v")])  # frame_names, then once each
    listed.clear()
    assert folder.first_appearance("v") == {1: 1, 2: 2}
    assert len(listed) == 3  # annotated_names, frame_names and the masks' files, not once a mask


def test_davis_folder_reports_objects_appearing_later(davis):
    root, sequences = davis
    folder = VideoFolder(root)
    assert folder.first_appearance("late") == sequences["late"].start_frames
    assert min(v for k, v in folder.first_appearance("late").items() if k > 1) > 0
    assert folder.object_ids("early") == [1, 2]


def test_split_list_selects_videos(davis):
    root, _ = davis
    assert VideoFolder(root, split="train").videos == ["late"]
    with pytest.raises(UserError, match="split 'val'"):
        VideoFolder(root, split="val")


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="JPEGImages"):
        VideoFolder(tmp_path)


def test_a_folder_one_level_off_the_dataset_is_refused_with_the_right_level(tmp_path, davis):
    root, _ = davis
    shutil.copytree(root, tmp_path / "DAVIS-2017-trainval-480p" / "DAVIS")   # the zip's top folder
    for given, right in ((tmp_path / "DAVIS-2017-trainval-480p", tmp_path / "DAVIS-2017-trainval-480p" / "DAVIS"),
                         (root / "JPEGImages" / "480p", root), (root / "Annotations", root)):
        with pytest.raises(UserError, match="JPEGImages") as err:
            VideoFolder(given)
        hint = str(err.value).rsplit("give ", 1)[1]
        assert hint in (str(right), str(right.resolve()))
        assert VideoFolder(hint).videos == ["early", "late"]


def test_youtube_vos_layout_with_sparse_annotations(tmp_path, davis):
    root, sequences = davis
    yt = tmp_path / "yt" / "train"
    shutil.copytree(root / "JPEGImages" / "480p", yt / "JPEGImages")
    (yt / "Annotations" / "late").mkdir(parents=True)
    for i in range(0, 10, 5):  # annotations on every fifth frame, as YouTube-VOS train
        write_label_png(yt / "Annotations" / "late" / f"{i:05d}.png", sequences["late"].labels[i])
    folder = VideoFolder(tmp_path / "yt", split="train")
    assert folder.layout == "youtube-vos" and folder.videos == ["late"]
    assert folder.annotated_names("late") == ["00000", "00005"]
    frames, labels = folder.load_video("late")
    assert len(frames) == 10 and labels[1] is None and np.array_equal(labels[5], sequences["late"].labels[5])


def test_stcn_main_training_on_davis_beside_youtube_vos_takes_each_davis_video_five_times(tmp_path, davis):
    # STCN trains on ConcatDataset([davis] * 5 + [youtube]): every video was taken once, and with DAVIS's 60 videos
    # beside YouTube-VOS's 3,471 DAVIS made 1.7 % of the samples instead of 8 %
    from vosrt.training.recipes import recipe_for
    from vosrt.training.train import default_config

    root, sequences = davis
    yt = tmp_path / "yt" / "train"
    for name in ("early", "late"):
        shutil.copytree(root / "JPEGImages" / "480p" / name, yt / "JPEGImages" / f"yt-{name}")
        shutil.copytree(root / "Annotations" / "480p" / name, yt / "Annotations" / f"yt-{name}")
    recipe = recipe_for("stcn")
    config = default_config("stcn-lite", size=[32, 32])
    mixed = recipe.build_dataset(config, [root, tmp_path / "yt"])
    counts = {}
    for index in range(len(mixed)):
        video = mixed.items[mixed.order[index]][1]
        counts[video] = counts.get(video, 0) + 1
    assert counts == {"late": 5, "yt-early": 1, "yt-late": 1}   # DAVIS's train split: late
    assert len(recipe.build_dataset(config, [root])) == 1   # DAVIS alone: once each
    assert [mixed[i]["video"] for i in range(len(mixed))].count("late") == 5   # the samples read them
    assert len(recipe.build_dataset(default_config("stcn-lite", size=[32, 32], davis_weight=2),
                                    [root, tmp_path / "yt"])) == 4
    with pytest.raises(UserError, match="stcn option davis_weight should be ≥ 1"):
        default_config("stcn-lite", davis_weight=0)


def test_a_split_of_first_frame_masks_is_refused_and_unannotated_videos_are_said(tmp_path, davis, capsys):
    # YouTube-VOS's valid/ (DAVIS's test-dev too) has each video's first-frame mask only: STCN trained on that frame
    # three times over, without a word. A video the train split lists without annotations was left out silently.
    root, sequences = davis
    valid = tmp_path / "yt" / "valid"
    for name in ("early", "late"):
        shutil.copytree(root / "JPEGImages" / "480p" / name, valid / "JPEGImages" / name)
        (valid / "Annotations" / name).mkdir(parents=True)
        shutil.copy(root / "Annotations" / "480p" / name / "00000.png", valid / "Annotations" / name)
    with pytest.raises(UserError, match=r"every annotated video has one annotated frame \(early, late\).*give the "
                                        r"train split"):
        VOSTripletDataset(VideoFolder(tmp_path / "yt", split="valid"), size=(32, 32))
    shutil.copytree(root / "Annotations" / "480p" / "late", valid / "Annotations" / "late", dirs_exist_ok=True)
    shutil.rmtree(valid / "Annotations" / "early")
    (tmp_path / "yt" / "valid" / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "yt" / "valid" / "ImageSets" / "2017" / "train.txt").write_text("early\nlate\n")
    dataset = VOSTripletDataset(VideoFolder(tmp_path / "yt" / "valid", split="train"), size=(32, 32))
    assert [video for _, video in dataset.items] == ["late"]
    assert "1 listed by the split without annotations (early) left out" in capsys.readouterr().err


def test_a_youtube_vis_folder_given_as_a_video_folder_points_to_its_json(tmp_path, davis):
    # "no annotated videos found (looked in YTVIS/train/Annotations)", the train.json beside the frames unsaid
    root, _ = davis
    shutil.copytree(root / "JPEGImages" / "480p", tmp_path / "ytvis" / "train" / "JPEGImages")
    (tmp_path / "ytvis" / "train.json").write_text("{}")
    with pytest.raises(UserError, match=r"no annotated videos found .*YouTube-VIS / OVIS file, --data .*ytvis/train\.json"):
        VideoFolder(tmp_path / "ytvis", split="train")


def test_unsupervised_training_on_davis_2017_without_its_unsupervised_set_says_what_it_reads(davis, capsys):
    # 3dc-seg and stem-seg read the semi-supervised task's objects of a DAVIS 2017 folder without
    # Annotations_unsupervised, without a word; the published models train on DAVIS-2017-Unsupervised's
    from vosrt.training.data import folders

    root, _ = davis
    folders._noted.clear()   # (an earlier test of this process may have opened the folder so)
    folder = VideoFolder(root, task="unsupervised")
    assert folder.mask_root == root / "Annotations" / "480p"
    assert "no Annotations_unsupervised/480p" in capsys.readouterr().err
    VideoFolder(root, task="unsupervised")
    assert capsys.readouterr().err == ""   # once


def test_youtube_vos_train_layout_divides_the_frame_gap_by_the_annotation_spacing(tmp_path):
    # YouTube-VOS's train download (and STCN's train_480p) holds only the annotated frames: JPEGImages and
    # Annotations both have 00000, 00005, 00010, ...; STCN samples them with max_skip // 5
    seq = generate_sequence(7, num_objects=2, num_frames=60, height=48, width=64)
    yt = tmp_path / "train"
    for t in range(0, 60, 5):
        (yt / "JPEGImages" / "vid").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(yt / "JPEGImages" / "vid" / f"{t:05d}.jpg"), seq.frames[t][..., ::-1])
        write_label_png(yt / "Annotations" / "vid" / f"{t:05d}.png", seq.labels[t])

    class Recording(VideoFolder):
        read = []

        def read_frame(self, video, stem):
            self.read.append(int(stem))
            return super().read_frame(video, stem)

    folder = Recording(tmp_path, split="train")
    assert folder.frame_names("vid") == folder.annotated_names("vid")
    ds = VOSTripletDataset(folder, size=(48, 64), max_skip=10, repeat=40)
    for i in range(len(ds)):
        Recording.read.clear()
        ds[i]
        for start in range(0, len(Recording.read), 3):   # one triplet per attempt
            gaps = np.abs(np.diff(Recording.read[start:start + 3]))
            assert ((gaps >= 5) & (gaps <= 10)).all(), Recording.read   # at most 10 // 5 annotated frames apart


def test_unsupervised_families_read_davis_unsupervised_annotations(tmp_path, davis):
    # DAVIS 2017 unsupervised ships Annotations_unsupervised/480p beside (or instead of) the semi-supervised
    # Annotations/480p; davis2017-evaluation and 3DC-Seg's Davis.py read it for the unsupervised task
    from vosrt.training.recipes import recipe_for
    from vosrt.training.train import default_config
    from vosrt.training.validate import validation_folder

    root, sequences = davis
    shutil.copytree(root, tmp_path / "both")
    shutil.copytree(root / "JPEGImages", tmp_path / "unsup_only" / "JPEGImages")
    shutil.copytree(root / "ImageSets", tmp_path / "unsup_only" / "ImageSets")
    for top in ("both", "unsup_only"):
        folder = tmp_path / top / "Annotations_unsupervised" / "480p" / "late"
        folder.mkdir(parents=True)
        for i, labels in enumerate(sequences["late"].labels):   # one instance where the semi-supervised has three
            write_label_png(folder / f"{i:05d}.png", (labels > 0).astype(np.uint8))
    assert VideoFolder(tmp_path / "both", split="train").object_ids("late") == [1, 2, 3]
    for top in ("both", "unsup_only"):
        for model in ("stem-seg-lite", "3dc-seg-lite"):
            config = default_config(model, size=[64, 96])
            data = recipe_for(model.replace("-lite", "")).build_dataset(config, [tmp_path / top])
            assert [f.object_ids("late") for f in data.folders] == [[1]], (top, model)
        assert validation_folder(tmp_path / top, "stem-seg").object_ids("late") == [1]
    assert validation_folder(tmp_path / "both", "stcn").object_ids("late") == [1, 2, 3]
    with pytest.raises(UserError, match="Annotations_unsupervised/480p.*no Annotations/480p"):
        recipe_for("stcn").build_dataset(default_config("stcn-lite"), [tmp_path / "unsup_only"])


def test_davis_2016_grey_masks_read_as_foreground(tmp_path, davis):
    root, sequences = davis
    shutil.copytree(root / "JPEGImages", tmp_path / "JPEGImages")
    (tmp_path / "Annotations" / "480p" / "early").mkdir(parents=True)
    for i, labels in enumerate(sequences["early"].labels):
        cv2.imwrite(str(tmp_path / "Annotations" / "480p" / "early" / f"{i:05d}.png"),
                    np.where(labels > 0, 255, 0).astype(np.uint8))
    (tmp_path / "ImageSets" / "480p").mkdir(parents=True)
    (tmp_path / "ImageSets" / "480p" / "train.txt").write_text(
        "".join(f"/JPEGImages/480p/early/{i:05d}.jpg /Annotations/480p/early/{i:05d}.png\n" for i in range(10)))
    folder = VideoFolder(tmp_path, split="train")
    assert folder.videos == ["early"]
    assert np.array_equal(folder.read_labels("early", "00003"), np.where(sequences["early"].labels[3] > 0, 255, 0))


def test_frame_indices_are_ordered_with_bounded_gaps():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        count, gap = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        idx = sample_frame_indices(rng, count, gap)
        assert len(idx) == 3 and 0 <= idx[0] and idx[-1] < count
        steps = np.diff(idx)
        assert (steps <= gap).all() and (steps >= (1 if count >= 3 + 2 * gap else 0)).all()


def test_clip_indices_are_sorted_inside_the_window():
    for seed in range(100):
        rng = np.random.default_rng(seed)
        count = int(rng.integers(1, 30))
        idx = sample_clip_indices(rng, count, 8, 12)
        assert len(idx) == 8 and idx == sorted(idx) and idx[-1] < count and idx[-1] - idx[0] < 12


def test_skip_curriculum_follows_stcn_schedule():
    assert [max_skip_at(p) for p in (0.0, 0.05, 0.15, 0.25, 0.35, 0.5, 0.95)] == [5, 5, 10, 15, 20, 25, 5]


def test_triplet_sampler_is_deterministic_per_seed_and_epoch(davis):
    root, _ = davis
    ds = VOSTripletDataset(VideoFolder(root), size=(48, 64), max_skip=3, seed=4)
    a, b = ds[1], ds[1]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["images"], a["images"])


def test_triplet_sampler_packs_at_most_two_objects_visible_on_the_first_frame(davis):
    root, _ = davis
    ds = VOSTripletDataset(VideoFolder(root), size=(48, 64), max_skip=3, seed=0)
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["images"].shape == (3, 3, 48, 64) and 0 <= sample["images"].min() <= sample["images"].max() <= 1
        assert sample["masks"].shape == (3, 2, 48, 64)
        assert set(sample["labels"].unique().tolist()) <= {0, 1, 2}
        assert torch.equal((sample["labels"] == 1).float(), sample["masks"][:, 0])
        assert sample["masks"][0, 0].any()  # the target is visible on the frame its mask is given on
        if sample["selector"][1]:
            assert sample["masks"][0, 1].any()
        else:
            assert not sample["masks"][:, 1].any()


def test_static_sampler_makes_single_object_triplets(davis):
    root, _ = davis
    ds = StaticSequenceDataset(VideoFolder(root), size=(48, 64), seed=0)
    assert len(ds) == 20
    sample = ds[3]
    assert sample["images"].shape == (3, 3, 48, 64)
    assert sample["selector"].tolist() == [1.0, 0.0]
    assert sample["masks"][0, 0].any() and not sample["masks"][:, 1].any()
    assert not torch.equal(sample["images"][0], sample["images"][1])  # each frame deformed differently


def test_static_sampler_reads_image_mask_pairs(tmp_path, davis):
    root, sequences = davis
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), sequences["early"].frames[i][..., ::-1])
        write_label_png(tmp_path / f"img{i}.png", sequences["early"].labels[i])
    ds = StaticSequenceDataset(tmp_path, size=(32, 32))
    assert len(ds) == 2 and ds[0]["masks"][0, 0].any()


def test_static_sampler_thresholds_soft_grey_saliency_masks_as_stcn(tmp_path):
    # DUTS / ECSSD / HRSOD / BIG masks: grey-scale PNGs, 255 inside, anti-aliased values along the edge;
    # STCN's static_dataset.py takes the foreground where the mask is above half (> 0.5 of 255)
    from PIL import Image

    yy, xx = np.mgrid[:64, :64]
    soft = np.clip((20 - np.hypot(yy - 32, xx - 32)) * 60 + 128, 0, 255).astype(np.uint8)
    assert len(np.unique(soft)) > 10
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(soft, "L").save(tmp_path / "a.png")
    ds = StaticSequenceDataset(tmp_path, size=(64, 64), repeat=6)
    disc = int((soft >= 128).sum())
    for i in range(len(ds)):
        # the whole disc (scaled by the augmentation), not one grey level of its rim
        assert ds[i]["masks"][0, 0].sum() > disc / 3


def test_static_pairs_are_found_at_any_depth_and_colour_or_softer_masks_read_as_stcn(tmp_path):
    # STCN's static folder holds FSS-1000 two levels down (fss/<class>/N.jpg): its images were left out without a word
    # (only the folder and its direct sub-folders were searched). An RGB mask was refused at its image's first draw,
    # hours into a run, and a soft map whose core is below 255 became one object per grey level; STCN reads every
    # static mask as grey-scale and takes the foreground above half.
    from PIL import Image

    from vosrt.training.data.static import find_image_mask_pairs, read_pair_mask

    static = tmp_path / "static"
    yy, xx = np.mgrid[:32, :32]
    disc = np.hypot(yy - 16, xx - 16) < 9
    soft = np.clip((9 - np.hypot(yy - 16, xx - 16)) * 40 + 128, 0, 250).astype(np.uint8)   # its core is 250
    masks = {"fss/bear/1": Image.fromarray(disc.astype(np.uint8) * 255, "L").convert("RGB"),
             "DUTS-TR/a": Image.fromarray(soft, "L"), "ecssd/b": Image.fromarray(disc.astype(np.uint8), "L")}
    for name, mask in masks.items():
        (static / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(static / f"{name}.jpg"), np.zeros((32, 32, 3), np.uint8))
        mask.save(static / f"{name}.png")
    pairs = find_image_mask_pairs(static)
    assert [image.relative_to(static).with_suffix("").as_posix() for image, _ in pairs] == \
        ["DUTS-TR/a", "ecssd/b", "fss/bear/1"]
    for _, mask in pairs:
        labels = read_pair_mask(mask)
        expected = soft >= 128 if mask.parent.name == "DUTS-TR" else disc
        assert len(np.unique(labels)) == 2 and np.array_equal(labels > 0, expected), mask
    ds = StaticSequenceDataset(static, size=(32, 32))
    assert len(ds) == 3 and all(ds[i]["masks"][0, 0].any() for i in range(3))
    # STCN takes BIG and HRSOD 5 times ([big_dataset, hrsod_dataset] * 5): the recipe's static_weights
    from vosrt.training.recipes import recipe_for
    from vosrt.training.train import default_config

    (static / "BIG_small").mkdir()
    for suffix in (".jpg", ".png"):
        shutil.copy(static / "ecssd" / f"b{suffix}", static / "BIG_small" / f"c{suffix}")
    weighted = recipe_for("stcn").build_dataset(default_config("stcn-lite", stage="static", size=[32, 32]), [static])
    assert sorted(name for _, name in weighted.items) == ["1", "a", "b"] + ["c"] * 5
    with pytest.raises(UserError, match="stcn option static_weights should map folder names to whole numbers"):
        default_config("stcn-lite", static_weights={"BIG_small": 0})


def test_clip_sampler_gives_clips_with_binary_foreground(davis):
    root, _ = davis
    ds = ForegroundClipDataset(VideoFolder(root), size=(32, 48), clip_length=8, seed=0)
    sample = ds[0]
    assert sample["images"].shape == (3, 8, 32, 48) and sample["foreground"].shape == (1, 8, 32, 48)
    assert set(sample["foreground"].unique().tolist()) <= {0.0, 1.0} and sample["foreground"].any()


def test_generated_triplets_come_from_a_new_clip_every_sample_and_epoch():
    from vosrt.training.data import GeneratedTripletDataset

    ds = GeneratedTripletDataset(size=(32, 32), clip_size=(48, 64), num_frames=6, max_skip=2,
                                 samples_per_epoch=3, seed=1)
    first = [ds.clip_seed(i) for i in range(3)]
    sample = ds[0]
    assert sample["images"].shape == (3, 3, 32, 32) and sample["masks"][0, 0].any()
    assert torch.equal(ds[0]["images"], sample["images"])
    ds.set_epoch(1)
    assert len(set(first + [ds.clip_seed(i) for i in range(3)])) == 6


def test_a_mask_of_another_size_than_its_frame_is_a_user_error_in_every_sampler(tmp_path, davis):
    from vosrt.training.data.instance_clips import FolderInstanceClips

    root, sequences = davis
    shutil.copytree(root, tmp_path / "davis")
    for mask in (tmp_path / "davis" / "Annotations" / "480p").glob("*/*.png"):
        labels = sequences[mask.parent.name].labels[int(mask.stem)]
        write_label_png(mask, cv2.resize(labels, (48, 32), interpolation=cv2.INTER_NEAREST))  # half size
    folder = VideoFolder(tmp_path / "davis")
    samplers = [VOSTripletDataset(folder, size=(32, 32)), ForegroundClipDataset(folder, size=(32, 32), clip_length=4),
                FolderInstanceClips(folder, size=(32, 32), clip_length=4), StaticSequenceDataset(folder, size=(32, 32))]
    for sampler in samplers:  # silently warping the half-size masks would train on misplaced objects
        with pytest.raises(UserError, match=r"mask .*\.png is 48x32 but its image .*\.jpg is 96x64"):
            sampler[0]
    with pytest.raises(UserError, match="48x32"):
        folder.load_video("early")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    cv2.imwrite(str(pairs / "a.jpg"), np.zeros((64, 96, 3), np.uint8))
    write_label_png(pairs / "a.png", np.ones((32, 48), np.uint8))
    with pytest.raises(UserError, match=r"a\.png is 48x32 but its image .*a\.jpg is 96x64"):
        StaticSequenceDataset(pairs, size=(32, 32))[0]


def _void_video(root, name, with_object):
    """Frames with a red band labelled 255 (void) and, ``with_object``, a blue square labelled 1."""
    for folder in ("JPEGImages", "Annotations"):
        (root / folder / "480p" / name).mkdir(parents=True)
    image = np.full((64, 96, 3), 128, np.uint8)
    labels = np.zeros((64, 96), np.uint8)
    image[:, :32], labels[:, :32] = (0, 0, 255), 255                     # BGR red
    if with_object:
        image[20:44, 56:80], labels[20:44, 56:80] = (255, 0, 0), 1      # BGR blue
    for i in range(6):
        cv2.imwrite(str(root / "JPEGImages" / "480p" / name / f"{i:05d}.jpg"), image)
        write_label_png(root / "Annotations" / "480p" / name / f"{i:05d}.png", labels)


def test_triplet_sampler_never_tracks_void_255_beside_objects_but_does_in_a_0_255_video(tmp_path):
    _void_video(tmp_path, "objects", with_object=True)
    _void_video(tmp_path, "binary", with_object=False)
    dataset = VOSTripletDataset(VideoFolder(tmp_path), size=(32, 32))
    for epoch in range(8):
        dataset.set_epoch(epoch)
        sample = dataset[0]          # "binary": 255 is its only id, the object (DAVIS 2016 masks)
        assert sample["video"] == "binary" and sample["masks"][0, 0].sum() > 0
        sample = dataset[1]          # "objects": 255 is void, as the evaluation reads it
        for slot in range(2):
            mask = sample["masks"][0, slot] > 0
            if mask.any():
                red, _, blue = (sample["images"][0, c][mask].mean() for c in range(3))
                assert blue > red, f"epoch {epoch}: slot {slot} holds the void region"


def test_clip_sampler_reads_255_beside_objects_as_background_but_as_the_object_in_a_0_255_video(tmp_path):
    _void_video(tmp_path, "objects", with_object=True)
    _void_video(tmp_path, "binary", with_object=False)
    dataset = ForegroundClipDataset(VideoFolder(tmp_path), size=(64, 96), clip_length=4, seed=0)
    for index in range(8):
        sample = dataset[index]
        red = sample["images"][0] > 2 * sample["images"][2] + 0.2      # [L, H, W]: the 255 band's pixels
        blue = sample["images"][2] > 2 * sample["images"][0] + 0.2     # the object's
        fg = sample["foreground"][0] > 0.5
        assert red.sum() > 100
        if sample["video"] == "objects":   # void: trained as foreground it would teach the network DAVIS's void
            assert blue.sum() > 100 and not (fg & red).any() and fg[blue].float().mean() > 0.9
        else:
            assert fg[red].float().mean() > 0.9
    assert dataset.only_void_videos.decided() == {0: True, 1: False}


def test_triplet_sampler_reads_a_video_s_masks_once_to_tell_void_from_a_0_255_object(tmp_path, monkeypatch):
    # every sample read all its video's masks to find whether 255 is void or DAVIS 2016's object (once per
    # process at best, and DataLoader workers are new every epoch): now once per video, and for a video whose
    # sampled masks show an object, not at all
    import pickle

    import vosrt.training.data.folders as folders

    _void_video(tmp_path, "objects", with_object=True)
    _void_video(tmp_path, "binary", with_object=False)
    dataset = VOSTripletDataset(VideoFolder(tmp_path), size=(32, 32), repeat=3)
    reads = {"masks": 0, "frames": 0}
    read_label_png, read_frame = folders.read_label_png, VideoFolder.read_frame

    def counted(kind, read):
        def counting(*args, **kwargs):
            reads[kind] += 1
            return read(*args, **kwargs)
        return counting

    monkeypatch.setattr(folders, "read_label_png", counted("masks", read_label_png))
    monkeypatch.setattr(VideoFolder, "read_frame", counted("frames", read_frame))
    fresh = pickle.dumps(dataset)  # as DataLoader workers get it
    samples = [dataset[i] for i in range(len(dataset))]
    assert reads["masks"] == reads["frames"] + 6  # the mask of each frame read, and "binary"'s six masks once
    assert dataset.only_void == {0: True, 1: False}
    reads.update(masks=0, frames=0)
    again = [pickle.loads(pickle.dumps(dataset))[i] for i in range(len(dataset))]  # what it found goes along
    assert reads["masks"] == reads["frames"]
    for sample, other, first in zip(samples, again, [pickle.loads(fresh)[i] for i in range(len(dataset))]):
        for key, value in sample.items():
            assert (torch.equal(value, other[key]) and torch.equal(value, first[key]) if torch.is_tensor(value)
                    else value == other[key] == first[key])


def _davis_2016(root, names, num_frames=10):
    """A DAVIS 2016 folder: grey 0/255 foreground masks, ``ImageSets/480p/train.txt`` listing frame paths."""
    lines = []
    for seed, name in enumerate(names):
        write_davis(root, name, generate_sequence(seed, num_frames=num_frames, height=64, width=96, num_objects=1))
        for i in range(num_frames):
            png = root / "Annotations" / "480p" / name / f"{i:05d}.png"
            cv2.imwrite(str(png), np.where(read_label_png(png) > 0, 255, 0).astype(np.uint8))
            lines.append(f"/JPEGImages/480p/{name}/{i:05d}.jpg /Annotations/480p/{name}/{i:05d}.png\n")
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "train.txt").write_text("".join(lines))
    return root


def _epoch(dataset, epoch, context):
    """An epoch as train.py runs it: set_epoch, then a new DataLoader with a worker process of its own."""
    from vosrt.training.train import _collate

    dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=_collate,
                                         multiprocessing_context=context)
    for batch in loader:
        assert batch["masks"][:, 0, 0].flatten(1).sum(1).gt(0).all()  # 255 is the object of a 0/255 video


def test_a_0_255_video_s_masks_are_read_once_a_run_not_again_by_every_epoch_s_new_workers(tmp_path, monkeypatch):
    # whether 255 is a video's object (DAVIS 2016) or void was remembered in the dataset's copy in a DataLoader
    # worker, which train.py replaces every epoch: every 0/255 video's masks were all read again, every epoch
    import vosrt.training.data.folders as folders

    _davis_2016(tmp_path / "davis2016", ["bear", "cows"])
    log = tmp_path / "reads.log"
    read_label_png, read_frame = folders.read_label_png, VideoFolder.read_frame

    def logged(kind, read):
        def reading(*args, **kwargs):
            with open(log, "a") as f:  # from the worker processes: one line a read
                f.write(kind + "\n")
            return read(*args, **kwargs)
        return reading

    monkeypatch.setattr(folders, "read_label_png", logged("mask", read_label_png))
    monkeypatch.setattr(VideoFolder, "read_frame", logged("frame", read_frame))
    dataset = VOSTripletDataset(VideoFolder(tmp_path / "davis2016", split="train"), size=(32, 32), repeat=2)
    extra = []  # per epoch: masks read beyond those of the sampled frames (one each)
    for epoch in range(3):
        log.write_text("")
        _epoch(dataset, epoch, "fork")
        kinds = log.read_text().split()
        extra.append(kinds.count("mask") - kinds.count("frame"))
    assert extra == [20, 0, 0]  # both videos' ten masks, in the first epoch only
    assert dataset.only_void == {0: True, 1: True}  # what the workers found, in the training process


def test_what_a_spawned_worker_finds_about_a_0_255_video_comes_back_for_the_next_epoch_s_workers(tmp_path):
    # under the spawn (and forkserver) start methods the dataset goes to the workers pickled: what they found
    # must still come back to the training process, which hands it to the next epoch's workers
    _davis_2016(tmp_path, ["bear"], num_frames=4)
    dataset = VOSTripletDataset(VideoFolder(tmp_path, split="train"), size=(32, 32), repeat=2)
    _epoch(dataset, 0, "spawn")
    assert dataset.only_void == {0: True}


def test_a_stem_with_both_letter_cases_is_one_frame(tmp_path):
    # 00001.jpg beside 00001.JPG was listed twice: a frame seen twice, read twice from the same .jpg
    video = tmp_path / "JPEGImages" / "480p" / "v"
    masks = tmp_path / "Annotations" / "480p" / "v"
    video.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(3):
        assert cv2.imwrite(str(video / f"{i:05d}.jpg"), np.full((8, 8, 3), 40 * i, np.uint8))
    assert cv2.imwrite(str(video / "00001.JPG"), np.full((8, 8, 3), 250, np.uint8))
    write_label_png(masks / "00000.png", np.ones((8, 8), np.uint8))
    write_label_png(masks / "00000.PNG", np.full((8, 8), 2, np.uint8))
    folder = VideoFolder(tmp_path)
    assert folder.frame_names("v") == ["00000", "00001", "00002"] and folder.annotated_names("v") == ["00000"]
    frames, labels = folder.load_video("v")
    assert [int(f.mean()) // 10 for f in frames] == [0, 4, 8]  # the .jpg files
    assert folder.object_ids("v") == [1]


def test_hidden_files_beside_frames_and_masks_are_no_frames(tmp_path, davis):
    # A dataset copied from a Mac holds an AppleDouble ._00000.jpg / ._00000.png beside each file: they were
    # frames of the video ("._00000", unreadable, failing the sample that drew it) and static pairs; vosrt run
    # leaves hidden files out of a source folder (vosrt.sdk.video.frame_files), and so does training now.
    from vosrt.training.data.static import find_image_mask_pairs

    root = tmp_path / "davis"
    shutil.copytree(davis[0], root)
    for folder in (root / "JPEGImages" / "480p" / "late", root / "Annotations" / "480p" / "late"):
        for file in list(folder.iterdir()):
            (folder / f"._{file.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    folder = VideoFolder(root)
    assert folder.frame_names("late") == [f"{i:05d}" for i in range(10)]
    assert folder.annotated_names("late") == [f"{i:05d}" for i in range(10)]
    static = tmp_path / "static"
    static.mkdir()
    cv2.imwrite(str(static / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    write_label_png(static / "a.png", np.ones((8, 8), np.uint8))
    for name in ("._a.jpg", "._a.png"):
        (static / name).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    assert find_image_mask_pairs(static) == [(static / "a.jpg", static / "a.png")]
