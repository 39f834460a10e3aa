"""STEm-Seg training: the losses on crafted embeddings, a few steps on generated clips lower the loss,
and a trained checkpoint exports and streams through `vosrt run`."""
import numpy as np
import pytest
import torch

from vosrt.cli import main
from vosrt.sdk.errors import UserError
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.synthetic import generate_sequence, write_video
from vosrt.training.models import build_model, save_checkpoint
from vosrt.training.data.instance_clips import GeneratedInstanceClips
from vosrt.training.stem_seg_step import StemSegTrainStep, embedding_losses


def crafted(separated: bool):
    """Two instances on a 1×4×6 clip: embeddings at their centres (or both at one centre), a tight
    bandwidth, seediness 1 inside the instances and 0 outside."""
    masks = torch.zeros(1, 2, 1, 4, 6)
    masks[0, 0, 0, :, :2] = 1
    masks[0, 1, 0, :, 4:] = 1
    embeddings = torch.full((1, 2, 1, 4, 6), 5.0)                       # background far away
    embeddings[0, :, 0, :, :2] = torch.tensor([0.0, 0.0]).view(2, 1, 1)
    embeddings[0, :, 0, :, 4:] = torch.tensor([1.0, 1.0] if separated else [0.0, 0.0]).view(2, 1, 1)
    log_variances = torch.full((1, 2, 1, 4, 6), float(np.log(100.0)))    # bandwidth 1000: std ≈ 0.03
    seediness = masks.amax(1, keepdim=True)
    return embeddings, log_variances, seediness, masks


def test_losses_vanish_for_ideal_embeddings():
    parts = embedding_losses(*crafted(separated=True))
    assert parts["instances"] == 2
    assert float(parts["lovasz"]) == pytest.approx(0.0, abs=1e-6)
    assert float(parts["smoothness"]) == 0.0
    assert float(parts["seediness"]) == pytest.approx(0.0, abs=1e-6)


def test_lovasz_term_grows_when_two_instances_share_an_embedding():
    merged = embedding_losses(*crafted(separated=False))
    # each instance's Gaussian also covers the other's 8 pixels: IoU 8/16 → Lovász hinge ≈ 1 − 1/2 per instance
    assert float(merged["lovasz"]) > 0.4
    # instance pixels of the other instance now have p = 1 but are background for this one: no seediness error
    assert float(merged["seediness"]) == pytest.approx(0.0, abs=1e-6)


def _random_maps(seed: int, clips: int, frames: int):
    """Seeded embeddings (E = 2), log variances and seediness of ``clips`` clips of ``frames`` 4×6 frames."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(clips, 2, frames, 4, 6, generator=generator),
            torch.rand(clips, 2, frames, 4, 6, generator=generator) - 2,
            torch.rand(clips, 1, frames, 4, 6, generator=generator))


def _published_clip_seediness(embeddings, log_variances, seediness, masks, ignore=None):
    """The seediness term of one clip as stemseg/modeling/losses/embedding_loss.py computes it: the mean
    squared seediness over all background pixels (ignored ones as zero error, still in the mean) plus, per
    instance, the mean squared error to the detached probability on its pixels, divided by
    (instances + 1)."""
    emb = embeddings[0].flatten(1).t()
    var = log_variances[0].flatten(1).t()
    seeds = seediness[0, 0].flatten()
    inst = [m for m in masks[0].flatten(1) > 0.5 if m.any()]
    background = ~torch.stack(inst).any(0)
    error = seeds[background] ** 2
    if ignore is not None:
        error = torch.where(ignore[0].flatten()[background], torch.zeros_like(error), error)
    total = float(error.mean())
    for m in inst:
        centre, bandwidth = emb[m].mean(0), (var[m].exp() * 10).mean(0)
        prob = torch.exp(-0.5 * ((emb - centre) ** 2 * bandwidth).sum(1))
        total += float(((seeds[m] - prob[m]) ** 2).mean())
    return total / (len(inst) + 1)


def test_a_batch_loss_is_the_mean_of_its_clips_losses_as_the_public_training():
    # the public training runs one clip per forward pass (MAX_SAMPLES_PER_GPU 1, batch 2 accumulated):
    # clip 0 holds one instance, clip 1 two, so Σ lovasz / Σ instances (3) would differ from the mean of
    # per-clip means, as would the seediness sum / (3 + 1)
    embeddings, log_variances, seediness = _random_maps(0, clips=2, frames=2)
    masks = torch.zeros(2, 3, 2, 4, 6)
    masks[0, 0, :, :2, :3] = 1
    masks[1, 0, :, :2, :2] = 1
    masks[1, 1, :, 2:, 4:] = 1
    batch = embedding_losses(embeddings, log_variances, seediness, masks)
    clips = [embedding_losses(embeddings[b:b + 1], log_variances[b:b + 1], seediness[b:b + 1], masks[b:b + 1])
             for b in range(2)]
    assert batch["instances"] == 3
    for term in ("lovasz", "smoothness", "seediness"):
        assert float(batch[term]) == pytest.approx(sum(float(c[term]) for c in clips) / 2, rel=1e-5), term
    for b in range(2):
        assert float(clips[b]["seediness"]) == pytest.approx(_published_clip_seediness(
            embeddings[b:b + 1], log_variances[b:b + 1], seediness[b:b + 1], masks[b:b + 1]), rel=1e-5)


def test_ignored_background_pixels_count_as_zero_seediness_error_in_the_mean():
    embeddings, log_variances, seediness = _random_maps(1, clips=1, frames=1)
    masks = torch.zeros(1, 1, 1, 4, 6)
    masks[0, 0, 0, :, :2] = 1
    ignore = torch.zeros(1, 1, 4, 6, dtype=torch.bool)
    ignore[0, 0, :, 5] = True
    parts = embedding_losses(embeddings, log_variances, seediness, masks, ignore=ignore)
    assert float(parts["seediness"]) == pytest.approx(
        _published_clip_seediness(embeddings, log_variances, seediness, masks, ignore), rel=1e-5)


class _CategoryStandIn(torch.nn.Module):
    """Fixed outputs of a STEm-Seg with a category head, on a 1/4 grid of 2×2 (for the step's losses)."""

    input_mean, input_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, foreground_logits):
        super().__init__()
        self.foreground_logits = torch.nn.Parameter(foreground_logits)
        self.embedding_loss_criterion = torch.nn.Module()
        self.embedding_loss_criterion.free_dim_bandwidths = torch.full((1, 2), 1 / 0.3 ** 2)

    def forward(self, images):
        batch = images.shape[0]
        return {"embeddings": torch.zeros(batch, 4, 1, 2, 2), "log_variances": torch.zeros(batch, 2, 1, 2, 2),
                "seediness": torch.zeros(batch, 1, 1, 2, 2), "class_logits": torch.zeros(batch, 2, 1, 2, 2),
                "foreground_logits": self.foreground_logits}


def test_the_foreground_loss_leaves_ignored_pixels_out_as_the_public_code():
    # model_builder.compute_fg_loss: per clip, BCE summed over the pixels not ignored / their count
    logits = torch.tensor([[[[[2.0, -1.0], [0.5, 3.0]]]]])              # [1, 1, 1, 2, 2]
    step = StemSegTrainStep(_CategoryStandIn(logits))
    masks = torch.zeros(1, 1, 1, 8, 8)
    masks[0, 0, 0, :4, :4] = 1                                         # the top-left cell is the object
    ignore = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    ignore[0, 0, 4:, 4:] = True                                        # the bottom-right cell is ignored
    _, logs, _ = step(torch.zeros(1, 3, 1, 8, 8), masks, torch.tensor([[1]]), ignore)
    target = torch.tensor([1.0, 0.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0, 0.5]), target)
    assert logs["foreground"] == pytest.approx(float(expected), rel=1e-5)


def test_smoothness_penalises_varying_bandwidths_within_an_instance():
    embeddings, log_variances, seediness, masks = crafted(separated=True)
    log_variances[0, :, 0, 0, 0] += 1.0                                   # one pixel of instance 1 differs
    parts = embedding_losses(embeddings, log_variances, seediness, masks)
    # instance 1: 8 pixels, one off by 1 from the others → mean squared deviation 7/64 per dimension; instance 2: 0
    assert float(parts["smoothness"]) == pytest.approx((7 / 64) / 2)


def _overfit(model, clip_length, size, steps):
    data = GeneratedInstanceClips(clip_length=clip_length, size=size, seed=3)
    sample = data[0]
    assert sample["masks"].sum() > 0
    step = StemSegTrainStep(model)
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(steps):
        loss, logs, preview = step(sample["images"][None], sample["masks"][None])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(logs["loss"])
    assert preview.shape == (1, clip_length, size[0] // 4, size[1] // 4)
    return losses


def test_a_few_steps_on_a_generated_clip_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("stem-seg-lite", clip_length=4, d2conv_heads=())   # plain decoder: seconds per step
    losses = _overfit(model, 4, (80, 80), 4)
    assert losses[-1] < losses[0] * 0.95, losses


@pytest.mark.slow
def test_a_few_steps_of_the_d2conv3d_lite_model_lower_the_loss_and_its_checkpoint_streams(tmp_path):
    torch.manual_seed(0)
    model = build_model("stem-seg-lite")
    losses = _overfit(model, 8, (80, 80), 4)
    assert losses[-1] < losses[0] * 0.95, losses
    save_checkpoint(tmp_path / "trained.pt", model)
    assert main(["export", "stem-seg-lite", "--checkpoint", str(tmp_path / "trained.pt"), "--out",
                 str(tmp_path / "pkg"), "--height", "80", "--width", "80", "--forms", "portable"]) == 0
    sequence = generate_sequence(5, num_frames=11, height=80, width=80, num_objects=2)
    video = write_video(tmp_path / "in.mp4", sequence)
    assert main(["run", str(tmp_path / "pkg"), "--source", str(video), "--out", str(tmp_path / "masks"),
                 "--no-progress"]) == 0
    pngs = sorted((tmp_path / "masks").glob("*.png"))
    assert len(pngs) == 11 and read_label_png(pngs[0]).shape == (80, 80)


TINY = dict(d2conv_heads=[], clip_length=4, fpn_channels=16, head_channels=[16, 16, 16, 8],
            semseg_channels=[16, 16, 16, 8], norm_groups=4)


def test_training_stem_seg_with_the_progress_bar_shows_its_instances(tmp_path, capsys):
    # the bar showed every family's "iou", which only STCN and 3DC-Seg log: vosrt train stem-seg without
    # --no-progress ended at its first step with KeyError: 'iou'
    pytest.importorskip("tqdm")   # the bar (without it: a line a second, none in this short run)
    from vosrt.training.train import default_config, train

    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, size=[80, 80], batch_size=1,
                            iterations=1, num_workers=0, samples_per_epoch=2, seed=0)
    assert train(["generated"], tmp_path / "run", config, progress=True)["step"] == 1
    assert "instances=" in capsys.readouterr().err


@pytest.mark.parametrize("start", ["init", "scratch"])
def test_stem_seg_from_weights_keeps_the_stem_and_res2_frozen_as_published(tmp_path, start):
    # the public code freezes the ResNet's stem and res2 (FREEZE_AT_STAGE 2) under its pretrained backbone; they
    # trained here. From scratch there is nothing pretrained to keep: they train.
    from vosrt.training.models import build_model, save_checkpoint
    from vosrt.training.train import default_config, train

    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, size=[80, 80], batch_size=1,
                            iterations=1, num_workers=0, samples_per_epoch=2, seed=0, lr=1e-2)
    initial = build_model("stem-seg-lite", **TINY)
    save_checkpoint(tmp_path / "start.pth", initial, {"model": "stem-seg-lite", **TINY})
    if start == "init":
        train(["generated"], tmp_path / "run", config, init=tmp_path / "start.pth", progress=False)
    else:
        torch.manual_seed(0)
        train(["generated"], tmp_path / "run", config, progress=False)
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert saved["train_config"]["freeze_stages"] == (2 if start == "init" else 0)   # recorded for --resume
    if start == "init":
        before, after = initial.state_dict(), saved["state_dict"]
        changed = {stage: any(not torch.equal(before[k], after[k]) for k in before
                              if k.startswith(f"backbone.body.{stage}."))
                   for stage in ("stem", "layer1", "layer2", "layer4")}
        assert changed == {"stem": False, "layer1": False, "layer2": True, "layer4": True}


def test_freeze_stages_beyond_the_backbone_is_refused_naming_the_option(tmp_path):
    from vosrt.training.train import default_config, train

    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, size=[80, 80], batch_size=1,
                            iterations=1, num_workers=0, samples_per_epoch=2, seed=0, freeze_stages=6)
    with pytest.raises(UserError, match=r"freeze_stages: stem-seg-lite has 5 backbone stage\(s\) that can be frozen "
                                        r"\(stem, res2, …\), got 6"):
        train(["generated"], tmp_path / "run", config, progress=False)


def test_a_stem_seg_val_size_below_80_is_refused_before_the_first_step(tmp_path):
    # it passed the multiple-of-16 check and failed the first validation, after every step before it, in avg_pool3d
    from vosrt.sdk.synthetic import generate_dataset
    from vosrt.training.train import default_config, train

    generate_dataset(tmp_path / "val", 1, seed=7, num_frames=4, height=64, width=64)
    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, size=[80, 80], batch_size=1,
                            iterations=1, num_workers=0, val_size=[64, 96], seed=0)
    with pytest.raises(UserError, match=r'val_size: stem-seg-lite takes inputs of at least 80x80, got 64x96; '
                                        r'give "val_size": \[80, 96\]'):
        train(["generated"], tmp_path / "run", config, val_data=tmp_path / "val", progress=False)
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.slow   # about 8 s of CPU on a 2-core machine: a stem-seg training run, resumed, with validation
def test_vosrt_train_stem_seg_on_generated_clips_resumes_and_validates(tmp_path):
    from vosrt.sdk.synthetic import generate_dataset
    from vosrt.training.train import default_config, train

    generate_dataset(tmp_path / "val", 1, seed=7, num_frames=6, height=80, width=80)
    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, size=[80, 80], batch_size=1,
                            iterations=2, num_workers=0, val_videos=1, val_size=[80, 80], samples_per_epoch=4,
                            clip_overlap=2, min_seediness=0.3, save_every=1, seed=0)
    summary = train(["generated"], tmp_path / "run", config, val_data=tmp_path / "val", progress=False)
    assert summary["step"] == 2 and summary["logs"]["instances"] >= 1
    assert set(summary["validation"]) == {"J", "F", "J&F"} and 0.0 <= summary["validation"]["J&F"] <= 1.0
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert saved["config"]["model"] == "stem-seg-lite"
    assert main(["train", "stem-seg", "--model", "stem-seg-lite", "--data", "generated", "--out",
                 str(tmp_path / "run"), "--resume", "--iterations", "3", "--workers", "0", "--no-progress"]) == 0
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["step"] == 3


def test_a_davis_2016_folder_trains_stem_seg_on_its_0_255_objects_and_255_beside_objects_stays_void(tmp_path):
    # 255 was void in every video: on a DAVIS 2016 folder (0/255 grey masks) every clip held no instance, the
    # object's pixels were left out of the losses, and training went on at loss 0 without a word
    import cv2

    from vosrt.sdk.synthetic import generate_dataset
    from vosrt.training.data import VideoFolder
    from vosrt.training.data.instance_clips import FolderInstanceClips
    from vosrt.training.train import default_config, train

    generate_dataset(tmp_path / "davis2016", 2, seed=4, num_frames=6, height=80, width=80, num_objects=1)
    for png in (tmp_path / "davis2016" / "Annotations" / "480p").glob("*/*.png"):
        cv2.imwrite(str(png), np.where(read_label_png(png) > 0, 255, 0).astype(np.uint8))
    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, max_window=6, size=[80, 80],
                            batch_size=1, iterations=2, num_workers=1, seed=0)
    summary = train([tmp_path / "davis2016"], tmp_path / "run", config, progress=False)
    assert summary["logs"]["instances"] == 1 and summary["logs"]["loss"] > 0

    # beside another id (generated DAVIS 2017 masks with a 255 band added), 255 is still void: ignored
    generate_dataset(tmp_path / "davis2017", 1, seed=4, num_frames=6, height=80, width=80, num_objects=1)
    for png in (tmp_path / "davis2017" / "Annotations" / "480p").glob("*/*.png"):
        labels = read_label_png(png)
        labels[:, 36:44] = 255  # a band through the middle: in every crop
        cv2.imwrite(str(png), labels)
    for folder, instances, ignored in ((tmp_path / "davis2016", 1, False), (tmp_path / "davis2017", 1, True)):
        sample = FolderInstanceClips(VideoFolder(folder), size=(80, 80), clip_length=4, max_window=6)[0]
        assert int(sample["categories"].gt(0).sum()) == instances and sample["masks"][0].sum() > 0
        assert bool(sample["ignore"].any()) == ignored


def test_a_training_crop_too_small_for_stem_seg_is_refused_naming_size_before_training(tmp_path, capsys):
    # --size 64 128 (multiples of 16, as asked) ended at the first step in a RuntimeError traceback from
    # avg_pool3d: "input image (T: 4 H: 2 W: 4) smaller than kernel size"
    assert main(["train", "stem-seg-lite", "--data", "generated", "--out", str(tmp_path / "run"), "--size", "64", "128",
                 "--iterations", "1", "--batch-size", "1", "--workers", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == ("error: size (--size or \"size\" in the --config file): stem-seg-lite takes "
                                               "inputs of at least 80x80, got 64x128; give --size 80 128")
    assert not (tmp_path / "run" / "last.pth").exists()
    from vosrt.training.train import default_config, train  # the smallest it names trains

    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, size=[80, 128], batch_size=1,
                            iterations=1, num_workers=0, samples_per_epoch=1, seed=0)
    assert train(["generated"], tmp_path / "run", config, progress=False)["step"] == 1


def test_a_training_clip_length_other_than_the_model_s_is_refused_before_training(tmp_path):
    # clips of 8 frames for a model built for 4 (model_overrides) trained what the session does not run; clips of 4
    # for a model of 8 ended at the first step in avg_pool3d's "input image (T: 2 ...) smaller than kernel size"
    from vosrt.training.train import default_config, train

    for model_length, clip_length in ((4, 8), (8, 4)):
        overrides = {**TINY, "clip_length": model_length}
        config = default_config("stem-seg-lite", model_overrides=overrides, clip_length=clip_length, size=[80, 80],
                                batch_size=1, iterations=1, num_workers=0, samples_per_epoch=1, seed=0)
        with pytest.raises(UserError) as error:
            train(["generated"], tmp_path / f"run{model_length}", config, progress=False)
        assert str(error.value) == (
            f"stem-seg option clip_length: stem-seg-lite's decoder is built for clips of {model_length} frames, got "
            f"{clip_length}; give \"stem-seg\": {{\"clip_length\": {model_length}}} in the --config file, or a model for "
            f"{clip_length} frames: \"model_overrides\": {{\"clip_length\": {clip_length}}} (the lengths a model is built "
            f"for: 2, 4, 8, 16, 24, 32)")
        assert not (tmp_path / f"run{model_length}" / "last.pth").exists()


@pytest.mark.parametrize("alone", ["generated", "valid.json", "kitti"])
def test_a_dataset_that_trains_alone_given_beside_a_folder_is_refused_naming_it(tmp_path, capsys, alone):
    # a YouTube-VIS JSON beside a DAVIS folder fell through to the folder reader: "dataset folder not found:
    # valid.json", for a file that is there
    from vosrt.sdk.synthetic import generate_dataset

    generate_dataset(tmp_path / "davis", 1, seed=3, num_frames=4, height=96, width=96)
    (tmp_path / "valid.json").write_text('{"videos": [], "annotations": [], "categories": []}')
    (tmp_path / "kitti" / "instances").mkdir(parents=True)
    assert main(["train", "stem-seg-lite", "--data", str(tmp_path / "davis"), alone if alone == "generated" else
                 str(tmp_path / alone), "--out", str(tmp_path / "run"), "--size", "80", "80", "--iterations", "1",
                 "--batch-size", "1", "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "trains alone" in err and "give --data" in err and "not found" not in err, err
    assert not (tmp_path / "run" / "last.pth").exists()


def test_the_init_hint_for_a_published_file_keeps_the_d2conv3d_heads_and_the_sampler_s_clip_length(tmp_path):
    # The hint gave "d2conv_heads": [] (the plain network, where the README promises D²Conv3D heads started from the
    # published convolutions) and only the model's clip_length 16: the config it gave was refused next, the sampler
    # still cutting clips of 8
    import json
    from pathlib import Path

    from published_weights import published_shapes, random_state_dict
    from vosrt.training.train import default_config, train

    published = random_state_dict(published_shapes(Path(__file__).parent / "data" / "stem_seg_state_dict.tsv"))
    torch.save({"model": published, "optimizer": {}}, tmp_path / "davis.pth")
    config = default_config("stem-seg-lite", model_overrides=TINY, clip_length=4, size=[80, 80], batch_size=1,
                            iterations=1, num_workers=0, samples_per_epoch=2, seed=0)
    with pytest.raises(UserError, match="give the run the file's model and model_overrides") as err:
        train(["generated"], tmp_path / "run", config, init=tmp_path / "davis.pth", progress=False)
    hint = json.loads(str(err.value).rsplit("in the --config file: ", 1)[1])
    assert hint == {"model": "stem-seg", "model_overrides": {"clip_length": 16}, "stem-seg": {"clip_length": 16}}
    model = build_model(hint["model"], **hint["model_overrides"])
    model.load_state_dict(published, strict=True)   # the run's D²Conv3D heads take the file's convolutions
    assert model.d2conv_layers > 0
