"""`vosrt demo`: the shipped demo package segments a held-out generated clip on ONNX Runtime CPU."""
import json
import re

import numpy as np
import pytest

from vosrt.cli import main
from vosrt.sdk import cli_demo
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.synthetic import sequence_seed

from media import video_frames


def _training_record(family):
    path = cli_demo.demo_package(family) / "training.json"
    return json.loads(path.read_text())


def test_stcn_demo_package_is_shipped_and_small():
    folder = cli_demo.demo_package("stcn")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["family"] == "stcn"
    # both ONNX forms (16.7 MB each) and the checkpoint (16.4 MB)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data", ".json", ".pth"))
    assert size < 55e6


def test_demo_clips_are_held_out_from_the_training_data():
    record = _training_record("stcn")
    trained = {sequence_seed(seed, i) for seed, count in record["datasets"] for i in range(count)}
    assert cli_demo.DEMO_SEED not in trained
    assert not trained & {sequence_seed(cli_demo.HELDOUT_DATASET_SEED, i) for i in range(100)}


def test_stcn_demo_writes_overlay_video_and_masks_and_beats_copying_the_first_mask(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--frames", "20"]) == 0
    printed = capsys.readouterr().out
    model = float(re.search(r"J&F (\d\.\d+)", printed).group(1))
    baseline = float(re.search(r"every frame: J&F (\d\.\d+)", printed).group(1))
    assert model > baseline + 0.1, printed
    assert "FPS" in printed
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 20 and read_label_png(masks[0]).shape == (240, 432)
    assert set(np.unique(read_label_png(masks[-1]))) <= {0, 1, 2, 3}
    assert video_frames(tmp_path / "overlay.mp4") == 20


def test_demo_rejects_a_too_short_clip(capsys):
    assert main(["demo", "--frames", "1"]) == 2
    assert "--frames" in capsys.readouterr().err


def test_demo_refuses_a_clip_too_long_to_hold_before_generating_it(capsys):
    # the demo keeps the clip whole (about 0.5 MB a frame): --frames 100000 generated frames until memory ran out
    assert main(["demo", "--frames", "100000"]) == 2
    err = capsys.readouterr().err
    assert "--frames: expected 2 to 2000 frames, got 100000" in err and "about 50 GB" in err and "vosrt run" in err, err


def test_demo_with_a_missing_package_says_where_it_looked(tmp_path, capsys):
    assert main(["demo", "--package", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_demo_rejects_a_negative_seed(capsys):
    assert main(["demo", "--seed", "-1", "--frames", "3"]) == 2     # numpy's ValueError traceback before
    assert "--seed" in capsys.readouterr().err


def test_demo_of_a_family_without_a_shipped_model_says_none_is_shipped(capsys):
    assert main(["demo", "--family", "3dc-seg"]) == 2
    err = capsys.readouterr().err
    assert "no 3dc-seg demo model" in err and "--package" in err


def test_demo_of_a_package_of_another_family_names_the_family_flag_that_runs_it(tmp_path, capsys):
    from sdk_packages import colour_embedding_package

    package = colour_embedding_package(tmp_path / "pkg")
    args = ["demo", "--package", str(package), "--frames", "3", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    hint = re.search(r"add (--family \S+)", capsys.readouterr().err)
    assert hint, "no --family hint"
    assert main(args + hint.group(1).split()) == 0


def test_demo_shows_how_far_the_clip_is(tmp_path, capsys):
    # `vosrt demo --frames 600` streamed for half a minute without a word on the terminal
    pytest.importorskip("tqdm")   # the bar (without it: a line a second, none in this short run)
    assert main(["demo", "--out", str(tmp_path), "--frames", "3"]) == 0
    assert re.search(r"100%.* 3/3 ", capsys.readouterr().err)


def test_demo_heldout_says_that_seed_and_out_are_not_used(tmp_path, capsys):
    # --seed picked no other clips and --out received nothing with --heldout, without a word
    assert main(["demo", "--heldout", "1", "--frames", "3", "--seed", "7", "--out", str(tmp_path / "o")]) == 0
    assert "note: --seed and --out are not used with --heldout" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["demo", "--heldout", "1", "--frames", "3"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_demo_into_the_folder_of_a_longer_run_says_that_its_pngs_stay(tmp_path, capsys):
    # a 3-frame run after a 5-frame one said "wrote 3 PNGs in OUT/masks" beside the 2 left from the first
    assert main(["demo", "--out", str(tmp_path), "--frames", "5"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--frames", "3"]) == 0
    assert f"note: {tmp_path / 'masks'} already holds 2 other PNG(s), of an earlier run" in capsys.readouterr().err


def test_an_out_that_cannot_be_written_is_refused_before_the_clip_is_segmented(tmp_path, capsys):
    # --out under a file was refused only after the whole clip had streamed (half a minute with --frames 600)
    pytest.importorskip("tqdm")   # the bar shows whether the clip streamed
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "out"), "--frames", "3"]) == 2
    err = capsys.readouterr().err
    assert f"--out: cannot create {blocker / 'out' / 'masks'}" in err
    assert "3/3" not in err and "frame/s" not in err, err   # nothing was segmented


def test_a_mask_png_that_cannot_be_written_is_one_error_line_naming_it(tmp_path, capsys):
    # a folder in the way of a PNG (or a read-only masks folder, a full disk) ended the demo with a traceback
    (tmp_path / "masks" / "00001.png").mkdir(parents=True)
    assert main(["demo", "--out", str(tmp_path), "--frames", "3"]) == 2
    assert f"error: --out: cannot write {tmp_path / 'masks' / '00001.png'}: Is a directory" in capsys.readouterr().err


def test_the_scores_of_an_int8_package_say_int8(tmp_path, capsys):
    # `vosrt demo --heldout 16 --package PKG_INT8` (the README's command for the INT8 J&F) printed "stcn-lite:",
    # as for the fp32 package it compares with
    from sdk_packages import tiny_int8_package, tiny_package

    int8 = tiny_int8_package()
    capsys.readouterr()
    assert main(["demo", "--heldout", "1", "--frames", "3", "--package", str(int8)]) == 0
    assert capsys.readouterr().out.startswith("stcn-lite INT8: 1 held-out generated clips")
    assert main(["demo", "--frames", "3", "--package", str(tiny_package("stcn")), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.startswith("stcn-lite: tracking")
