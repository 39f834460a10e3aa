"""STEm-Seg training samplers on small datasets written to disk in each format: YouTube-VIS / OVIS JSON
with JPEG folders, KITTI-MOTS (txt and instance PNGs), DAVIS-layout instance folders, generated clips."""
import json

import cv2
import numpy as np
import pytest
import torch

from vosrt.sdk.errors import UserError
from vosrt.sdk.synthetic import generate_dataset, generate_sequence
from vosrt.training.data.instance_clips import FolderInstanceClips, GeneratedInstanceClips, KittiMOTSClips, VISJsonClips
from vosrt.training.recipes import recipe_for
from vosrt.training.train import default_config

mask_utils = pytest.importorskip("pycocotools.mask")
H, W, FRAMES = 48, 64, 6


def write_frames(folder, sequence, suffix):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for t, frame in enumerate(sequence.frames):
        cv2.imwrite(str(folder / f"{t:06d}{suffix}"), frame[:, :, ::-1])
        names.append(f"{t:06d}{suffix}")
    return names


def _vis_json(root):
    """``root/train.json``: a YouTube-VIS annotation file of one video (frames under ``root/train/JPEGImages/vid``)
    with two instances, of categories 3 and 7."""
    seq = generate_sequence(3, num_frames=FRAMES, height=H, width=W, num_objects=2, num_distractors=0)
    names = write_frames(root / "train" / "JPEGImages" / "vid", seq, ".jpg")
    annotations = []
    for k, (obj, category) in enumerate(((1, 3), (2, 7)), 1):
        segs = []
        for labels in seq.labels:
            mask = labels == obj
            if not mask.any():
                segs.append(None)
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            segs.append({"size": rle["size"], "counts": rle["counts"].decode()})
        annotations.append({"id": k, "video_id": 5, "category_id": category, "segmentations": segs})
    (root / "train.json").write_text(json.dumps({
        "videos": [{"id": 5, "height": H, "width": W, "file_names": [f"vid/{n}" for n in names]}],
        "categories": [{"id": 3}, {"id": 7}], "annotations": annotations}))
    return root / "train.json"


def test_youtube_vis_json_clips_carry_instances_and_their_categories(tmp_path):
    data = VISJsonClips(_vis_json(tmp_path), size=(H, W), clip_length=4, max_instances=3)
    sample = data[0]
    assert sample["images"].shape == (3, 4, H, W) and sample["masks"].shape == (3, 4, H, W)
    assert sample["categories"].tolist() == [3, 7, 0]
    assert sample["masks"][0].sum() > 0 and sample["masks"][1].sum() > 0 and sample["masks"][2].sum() == 0
    assert not (sample["masks"][0].bool() & sample["masks"][1].bool()).any()


def test_youtube_vis_clips_keep_the_instances_in_view_when_a_video_has_more_than_max_instances(tmp_path):
    # those kept were drawn from every track of the video: an instance in view could give way to one absent from
    # the clip, and was then background in the losses
    path = _vis_json(tmp_path)
    data = json.loads(path.read_text())
    absent = [dict(data["annotations"][0], id=10 + k, category_id=9, segmentations=[None] * FRAMES) for k in range(6)]
    data["annotations"] = absent[:3] + data["annotations"] + absent[3:]
    path.write_text(json.dumps(data))
    clips = VISJsonClips(path, size=(H, W), clip_length=4, max_instances=2)
    for index in range(6):
        sample = clips[index]
        assert sorted(sample["categories"].tolist()) == [3, 7]
        assert sample["masks"][0].sum() > 0 and sample["masks"][1].sum() > 0


def test_a_category_head_too_small_for_the_dataset_s_category_ids_is_refused_before_training(tmp_path):
    # "IndexError: Target 7 is out of bounds" from the cross-entropy at the first sample carrying category 7
    recipe, data = recipe_for("stem-seg"), [_vis_json(tmp_path)]
    with pytest.raises(UserError) as error:
        recipe.build_dataset(default_config("stem-seg-lite", model_overrides={"num_classes": 5}), data)
    assert str(error.value) == (f"--data {data[0]}: its category ids go up to 7, more than stem-seg-lite's category "
                                f"head scores (num_classes 5, background 0 included); give \"model_overrides\": "
                                f"{{\"num_classes\": 8}} in the --config file")
    assert recipe.build_dataset(default_config("stem-seg-lite", model_overrides={"num_classes": 8}), data).categories \
        == [3, 7]
    assert len(recipe.build_dataset(default_config("stem-seg-lite"), data)) == 1   # class-agnostic: any ids


def test_kitti_mots_txt_and_png_clips_keep_classes_and_ignore_regions(tmp_path):
    seq = generate_sequence(4, num_frames=FRAMES, height=H, width=W, num_objects=2, num_distractors=0)
    write_frames(tmp_path / "txt" / "images" / "0000", seq, ".png")
    write_frames(tmp_path / "png" / "images" / "0000", seq, ".png")
    lines = []
    (tmp_path / "png" / "instances" / "0000").mkdir(parents=True)
    for t, labels in enumerate(seq.labels):
        ids = np.zeros((H, W), np.uint16)
        ids[labels == 1] = 1005          # a car
        ids[labels == 2] = 2001          # a pedestrian
        ids[:, :20] = 10000              # ignore strip, wide enough to survive the random crop
        cv2.imwrite(str(tmp_path / "png" / "instances" / "0000" / f"{t:06d}.png"), ids)
        for obj in (1005, 2001, 10000):
            if (ids == obj).any():
                rle = mask_utils.encode(np.asfortranarray((ids == obj).astype(np.uint8)))
                lines.append(f"{t} {obj} {obj // 1000} {H} {W} {rle['counts'].decode()}")
    (tmp_path / "txt" / "instances_txt").mkdir()
    (tmp_path / "txt" / "instances_txt" / "0000.txt").write_text("\n".join(lines) + "\n")
    samples = [KittiMOTSClips(tmp_path / kind, size=(H, W), clip_length=4, max_instances=4)[0] for kind in ("txt", "png")]
    for sample in samples:
        assert sample["categories"].tolist() == [1, 2, 0, 0]
        assert sample["ignore"].any() and not (sample["ignore"] & sample["masks"].bool().any(0)).any()
    assert torch.equal(samples[0]["masks"], samples[1]["masks"])


def _kitti_folder(root, names):
    seq = generate_sequence(5, num_frames=FRAMES, height=H, width=W, num_objects=1, num_distractors=0)
    for name in names:
        write_frames(root / "images" / name, seq, ".png")
        (root / "instances" / name).mkdir(parents=True)
        for t, labels in enumerate(seq.labels):
            cv2.imwrite(str(root / "instances" / name / f"{t:06d}.png"), (labels > 0).astype(np.uint16) * 1001)
    return root


def test_kitti_mots_takes_stem_seg_s_motschallenge_sequence_0050_with_its_jpeg_frames(tmp_path, capsys):
    # STEm-Seg trains on KITTI-MOTS's 12 train sequences and MOTSChallenge's 0002 copied in as images/0050 (JPEG
    # frames): 0050 was left out as "the validation split", and with "kitti_split": "all" its clips failed with
    # "ValueError: high <= 0" (only .png frames were listed)
    root = _kitti_folder(tmp_path / "kitti", ["0000", "0002", "0005", "0099"])
    seq = generate_sequence(9, num_frames=FRAMES, height=H, width=W, num_objects=1, num_distractors=0)
    write_frames(root / "images" / "0050", seq, ".jpg")
    (root / "instances" / "0050").mkdir(parents=True)
    for t, labels in enumerate(seq.labels):
        cv2.imwrite(str(root / "instances" / "0050" / f"{t:06d}.png"), (labels > 0).astype(np.uint16) * 2001)
    clips = KittiMOTSClips(root, size=(H, W), clip_length=4)
    assert clips.sequences == ["0000", "0005", "0050"]
    err = capsys.readouterr().err
    assert "0002 (the validation split, kept for evaluation) and 0099 (in no split of KITTI-MOTS) left out" in err, err
    sample = clips[2]   # 0050's clip: its JPEG frames and its pedestrian
    assert sample["video"] == "0050" and sample["categories"][0] == 2
    (root / "images" / "0099" / "000000.png").parent.mkdir(exist_ok=True)
    for frame in (root / "images" / "0099").iterdir():
        frame.unlink()
    with pytest.raises(UserError, match=r"1 sequence folder\(s\) of .* hold no frames \(0099;"):
        KittiMOTSClips(root, size=(H, W), clip_length=4, split="all")


def test_kitti_mots_trains_on_its_train_split_and_keeps_the_validation_sequences_out(tmp_path, capsys):
    # Every sequence of KITTI-MOTS's training folder was a training sequence, the 9 of its validation split
    # (0002, 0006, ... on which STEm-Seg and the MOTS tools evaluate) included.
    root = _kitti_folder(tmp_path / "kitti", ["0000", "0002", "0005", "0006"])
    assert KittiMOTSClips(root, size=(H, W), clip_length=4).sequences == ["0000", "0005"]
    err = capsys.readouterr().err
    assert "KITTI-MOTS's train split, 2 of its 4 sequences; 0002, 0006 (the validation split, kept for evaluation) left out" in err, err
    assert KittiMOTSClips(root, size=(H, W), clip_length=4, split="val").sequences == ["0002", "0006"]
    assert KittiMOTSClips(root, size=(H, W), clip_length=4, split="all").sequences == ["0000", "0002", "0005", "0006"]
    capsys.readouterr()
    other = _kitti_folder(tmp_path / "mine", ["cam_a", "cam_b"])   # not KITTI-MOTS's names: taken whole
    assert KittiMOTSClips(other, size=(H, W), clip_length=4).sequences == ["cam_a", "cam_b"]
    assert "note" not in capsys.readouterr().err
    val_only = _kitti_folder(tmp_path / "val", ["0002"])
    with pytest.raises(UserError, match=r"none of its sequences \(0002\) is in KITTI-MOTS's train split .*kitti_split"):
        KittiMOTSClips(val_only, size=(H, W), clip_length=4)
    with pytest.raises(UserError, match="kitti_split: expected 'train', 'val' or 'all', got 'test'"):
        KittiMOTSClips(root, size=(H, W), clip_length=4, split="test")
    # a sequence without annotations is refused naming it (it failed at its first clip, or trained as background)
    write_frames(root / "images" / "0001", generate_sequence(6, num_frames=FRAMES, height=H, width=W), ".png")
    with pytest.raises(UserError, match=r"1 sequence\(s\) of .* have no annotations \(0001; expected .*SEQ/\*\.png"):
        KittiMOTSClips(root, size=(H, W), clip_length=4)
    import shutil
    shutil.rmtree(root / "images" / "0001")
    # the recipe's option reaches it
    config = default_config("stem-seg-lite", model_overrides=dict(d2conv_heads=[], clip_length=4, fpn_channels=16,
                            head_channels=[16, 16, 16, 8], norm_groups=4), clip_length=4, size=[80, 80],
                            kitti_split="all")
    assert recipe_for("stem-seg").build_dataset(config, [root]).sequences == ["0000", "0002", "0005", "0006"]


def test_recipe_picks_the_sampler_from_the_data_and_steps_with_ignore(tmp_path):
    generate_dataset(tmp_path / "davis", 2, seed=1, num_frames=FRAMES, height=H, width=W)
    config = default_config("stem-seg-lite", model_overrides=dict(d2conv_heads=[], clip_length=4, fpn_channels=16,
                            head_channels=[16, 16, 16, 8], norm_groups=4), clip_length=4, size=[80, 80])
    recipe = recipe_for("stem-seg")
    assert isinstance(recipe.build_dataset(config, ["generated"]), GeneratedInstanceClips)
    folder_data = recipe.build_dataset(config, [tmp_path / "davis"])
    assert isinstance(folder_data, FolderInstanceClips)
    sample = folder_data[0]
    assert sample["masks"].shape == (10, 4, 80, 80) and sample["masks"].sum() > 0
    from vosrt.training.models import build_model
    from vosrt.training.train import _collate
    torch.manual_seed(0)
    model = build_model("stem-seg-lite", **config.model_overrides)
    batch = _collate([sample])
    batch["ignore"][0, :, :8] = True
    loss, logs, preview = recipe.run_step(recipe.step_module(model, config), batch, 0, torch.device("cpu"))
    assert torch.isfinite(loss) and logs["instances"] >= 1
    images, truth, predicted = recipe.overlay_rows(batch, preview)
    assert images.shape == (4, 80, 80, 3) and truth.shape == predicted.shape == (4, 80, 80)


def test_folder_clips_keep_instance_ids_beyond_255_apart_from_the_background(tmp_path):
    from vosrt.sdk.masks import read_label_png, write_label_png
    from vosrt.training.data.folders import VideoFolder

    generate_dataset(tmp_path, 1, seed=1, num_frames=FRAMES, height=H, width=W, num_objects=2)
    masks = sorted((tmp_path / "Annotations" / "480p").glob("*/*.png"))
    for mask in masks:   # ids 256 and 300, as vosrt writes STEm-Seg tracks past 255 (16-bit PNGs)
        labels = read_label_png(mask)
        write_label_png(mask, np.select([labels == 1, labels == 2], [256, 300], 0).astype(np.uint16))
    sample = FolderInstanceClips(VideoFolder(tmp_path), size=(H, W), clip_length=4, max_instances=4)[0]
    assert sample["categories"].tolist() == [1, 1, 0, 0]
    assert (sample["masks"][:2].flatten(1).sum(1) > 0).all() and not sample["ignore"].any()


def test_json_files_that_are_not_vis_training_annotations_are_refused_with_what_to_give(tmp_path):
    from vosrt.sdk.errors import UserError

    seq = generate_sequence(3, num_frames=FRAMES, height=H, width=W, num_objects=1, num_distractors=0)
    names = write_frames(tmp_path / "train" / "JPEGImages" / "vid", seq, ".jpg")
    # YouTube-VIS valid.json: videos and categories, the annotations kept private
    (tmp_path / "valid.json").write_text(json.dumps({"categories": [{"id": 1}], "videos": [
        {"id": 1, "height": H, "width": W, "length": FRAMES, "file_names": [f"vid/{n}" for n in names]}]}))
    with pytest.raises(UserError, match="no annotations.*train"):
        VISJsonClips(tmp_path / "valid.json", size=(H, W))
    # YouTube-VOS train/meta.json: videos keyed by name, objects with categories and frames, no masks
    (tmp_path / "train" / "meta.json").write_text(json.dumps(
        {"videos": {"vid": {"objects": {"1": {"category": "cat", "frames": ["000000"]}}}}}))
    with pytest.raises(UserError, match=r"YouTube-VOS meta\.json.*--data " + str(tmp_path / "train")):
        VISJsonClips(tmp_path / "train" / "meta.json", size=(H, W))


def test_kitti_mots_clips_leave_out_hidden_files_beside_the_frames(tmp_path):
    # ._000000.png (a copy from a Mac) among a sequence's frames ended the sample in int("._000000"): ValueError
    root = _kitti_folder(tmp_path / "kitti", ["0000"])
    for file in list((root / "images" / "0000").iterdir()):
        (root / "images" / "0000" / f"._{file.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    clips = KittiMOTSClips(root, size=(H, W), clip_length=4)
    for index in range(4):
        assert clips[index]["masks"].shape[1] == 4
