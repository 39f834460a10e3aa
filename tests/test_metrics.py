"""J and F against values computed by hand on crafted masks (DAVIS protocol), and `vosrt eval`."""
import csv
import re

import numpy as np
import pytest

from vosrt.cli import main
from vosrt.sdk import metrics
from vosrt.sdk.masks import write_label_png
from vosrt.sdk.metrics import (boundary_map, boundary_measure, boundary_tolerance, evaluate_sequence,
                               region_similarity, score_sequence, summarize)


def square(top, left, size=20, shape=(100, 100)):
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_tolerance_is_ceil_of_0_008_times_the_diagonal():
    assert boundary_tolerance((100, 100)) == 2      # 0.008 * 141.4 = 1.13
    assert boundary_tolerance((480, 854)) == 8      # 0.008 * 979.6 = 7.84


def test_boundary_of_a_square_has_2n_plus_2m_pixels_offset_towards_the_origin():
    edge = boundary_map(square(20, 20))
    assert edge.sum() == 80
    assert edge[19, 19] and edge[19, 20] and edge[39, 39] and edge[20, 39]
    assert not edge[40, 20] and not edge[20, 40] and not edge[20, 20]


def test_j_of_squares_shifted_by_half_their_width_is_one_third():
    # overlap 20x10 = 200, union 600
    assert region_similarity(square(20, 30), square(20, 20)) == pytest.approx(1 / 3)


def test_f_of_squares_shifted_by_ten_pixels_matches_hand_count():
    # Hand count (tolerance 2 px, 80 boundary pixels each): of the predicted boundary, 6 pixels of the
    # left edge, 12 of the top and 12 of the bottom lie within 2 px of the true boundary -> P = 30/80;
    # symmetrically 13 + 5 + 12 true pixels are matched -> R = 30/80; F = 0.375.
    assert boundary_measure(square(20, 30), square(20, 20)) == pytest.approx(0.375)


def test_f_is_one_within_the_tolerance_and_below_one_past_it():
    assert boundary_measure(square(20, 22), square(20, 20)) == pytest.approx(1.0)
    assert boundary_measure(square(20, 23), square(20, 20)) < 1.0


def test_empty_masks_follow_the_davis_conventions():
    empty = np.zeros((100, 100), bool)
    assert region_similarity(empty, empty) == 1.0
    assert boundary_measure(empty, empty) == 1.0
    assert region_similarity(empty, square(20, 20)) == 0.0
    assert boundary_measure(empty, square(20, 20)) == 0.0   # P = 1, R = 0


def test_void_pixels_are_not_scored():
    gt = square(20, 20)
    pred = square(20, 20) | square(60, 60)
    void = square(60, 60)
    assert region_similarity(pred, gt, void) == 1.0
    assert boundary_measure(pred, gt, void) == 1.0


def test_sequence_scores_objects_of_the_first_frame_and_skips_first_and_last():
    gt = np.zeros((100, 100), np.uint8)
    gt[square(20, 20)] = 1
    gt[square(60, 60)] = 2
    wrong = np.zeros_like(gt)
    good_1_shifted_2 = np.zeros_like(gt)
    good_1_shifted_2[square(20, 30)] = 1
    good_1_shifted_2[square(60, 60)] = 2
    preds = [wrong, good_1_shifted_2, gt.copy(), wrong]   # first and last frames are not scored
    scores = evaluate_sequence(preds, [gt] * 4, "seq")
    assert [s.object_id for s in scores] == [1, 2]
    assert scores[0].j == pytest.approx([1 / 3, 1.0])
    assert scores[0].f == pytest.approx([0.375, 1.0])
    assert scores[1].j_mean == 1.0 and scores[1].f_mean == 1.0
    total = summarize(scores)
    j = ((1 / 3 + 1) / 2 + 1) / 2
    f = ((0.375 + 1) / 2 + 1) / 2
    assert total["J"] == pytest.approx(j) and total["F"] == pytest.approx(f)
    assert total["J&F"] == pytest.approx((j + f) / 2)


def _write_shifted_square(tmp_path, gt_suffix=".png", pred_suffix=".png", frames=3, predicted=None):
    """``frames`` frames of sequence seqA under tmp_path/gt and tmp_path/pred: a square and the same square
    shifted by 10 pixels (J = 1/3 on every frame), predicted on the frames ``predicted`` (default all)."""
    gt = np.zeros((100, 100), np.uint8)
    gt[square(20, 20)] = 1
    shifted = np.zeros_like(gt)
    shifted[square(20, 30)] = 1
    for t in range(frames):
        write_label_png(tmp_path / "gt" / "seqA" / f"{t:05d}{gt_suffix}", gt)
        if predicted is None or t in predicted:
            write_label_png(tmp_path / "pred" / "seqA" / f"{t:05d}{pred_suffix}", shifted)


def test_vosrt_eval_prints_a_table_and_writes_csv(tmp_path, capsys):
    _write_shifted_square(tmp_path)
    out_csv = tmp_path / "scores.csv"
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "seqA" in printed and "J&F" in printed
    rows = list(csv.DictReader(open(out_csv)))
    overall = [r for r in rows if r["sequence"] == "all"][0]
    assert float(overall["J"]) == pytest.approx(1 / 3, abs=1e-6)
    assert float(overall["F"]) == pytest.approx(0.375, abs=1e-6)


def test_vosrt_eval_replaces_a_link_at_its_csv_instead_of_writing_through_it(tmp_path, capsys):
    # the default PRED/metrics.csv was opened for writing: a link planted there in a predictions folder from elsewhere
    # overwrote the file it named
    _write_shifted_square(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "pred" / "metrics.csv").symlink_to(victim)
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    assert victim.read_text() == "keep" and not (tmp_path / "pred" / "metrics.csv").is_symlink()
    assert "sequence" in (tmp_path / "pred" / "metrics.csv").read_text()


def test_vosrt_eval_leaves_out_hidden_pngs_as_vosrt_run_does(tmp_path, capsys):
    # A folder copied from a Mac holds an AppleDouble ._00000.png beside each PNG, and a run killed mid-write may
    # leave a hidden .NAME.partial.png: eval took the truth's as frames of the sequence (unreadable: the run
    # ended in an error) where vosrt run leaves them out of a source folder.
    _write_shifted_square(tmp_path)
    for folder in (tmp_path / "gt" / "seqA", tmp_path / "pred" / "seqA"):
        for t in range(3):
            (folder / f"._{t:05d}.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    write_label_png(tmp_path / "pred" / "seqA" / ".00001.partial-x1.png", np.ones((100, 100), np.uint8))
    out_csv = tmp_path / "scores.csv"
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--csv", str(out_csv)]) == 0
    overall = [r for r in csv.DictReader(open(out_csv)) if r["sequence"] == "all"][0]
    assert float(overall["J"]) == pytest.approx(1 / 3, abs=1e-6)


def test_vosrt_eval_reports_a_missing_prediction(tmp_path, capsys):
    gt = np.zeros((16, 16), np.uint8)
    gt[4:8, 4:8] = 1
    write_label_png(tmp_path / "gt" / "00000.png", gt)
    (tmp_path / "pred").mkdir()
    write_label_png(tmp_path / "pred" / "00001.png", gt)
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    assert "missing" in capsys.readouterr().err


def test_vosrt_eval_names_the_flag_and_the_fix_for_a_prediction_of_another_size(tmp_path, capsys):
    write_label_png(tmp_path / "gt" / "00000.png", np.zeros((11, 13), np.uint8) + 1)
    write_label_png(tmp_path / "pred" / "00000.png", np.ones((12, 13), np.uint8))
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert f"--pred {tmp_path / 'pred' / '00000.png'}: size 13x12" in err and "truth's 13x11" in err
    assert "ground truth's resolution" in err and "--gt" in err


def test_vosrt_eval_needs_no_prediction_for_the_unscored_first_and_last_frames(tmp_path, capsys):
    # davis2017-evaluation reads the predictions of the scored frames only (the first and last are not): a
    # results folder without the given first frame's mask is scored. Frames 1 and 2: the square shifted by
    # 10 pixels (J = 1/3, F = 0.375, as above); frames 0 and 3 have no prediction.
    _write_shifted_square(tmp_path, frames=4, predicted=(1, 2))
    out_csv = tmp_path / "scores.csv"
    args = ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--csv", str(out_csv)]
    assert main(args) == 0
    overall = [r for r in csv.DictReader(open(out_csv)) if r["sequence"] == "all"][0]
    assert float(overall["J"]) == pytest.approx(1 / 3, abs=1e-6)
    assert float(overall["F"]) == pytest.approx(0.375, abs=1e-6)
    # frames that are scored still need one: all of them with --all-frames (the last is named before scoring;
    # whether the first is scored depends on the masks, so it is checked where it is read)
    capsys.readouterr()
    assert main(args + ["--all-frames"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "00003.png" in err
    (tmp_path / "pred" / "seqA" / "00003.png").write_bytes((tmp_path / "pred" / "seqA" / "00002.png").read_bytes())
    assert main(args + ["--all-frames"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "00000.png" in err


def test_void_in_the_ground_truth_is_background_as_davis2017_evaluation_reads_it():
    # davis2017-evaluation sets 255 to 0 in the annotations before scoring: a prediction that paints the
    # void region as the object loses J for it
    gt = np.zeros((100, 100), np.uint8)
    gt[square(10, 10)] = 1
    gt[square(60, 60)] = 255
    pred = np.where(square(10, 10) | square(60, 60), 1, 0).astype(np.uint8)
    (score,) = evaluate_sequence([pred], [gt], "seq", skip_first_last=False)
    assert score.j == [0.5]


def test_a_predicted_id_the_ground_truth_lacks_is_an_error_naming_the_likely_cause(tmp_path, capsys):
    gt = np.zeros((40, 40), np.uint8)
    gt[5:20, 5:20] = 1
    for name, pred in (("gt", gt), ("pred", gt * 255)):        # a binary mask saved as 0/255
        for t in range(3):
            write_label_png(tmp_path / name / "seq" / f"{t:05d}.png", pred)
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert "object id(s) 255" in err and "objects 1..1" in err and "0/255" in err


def test_a_sequence_without_objects_in_its_first_frame_is_reported_not_silently_dropped(tmp_path, capsys):
    good = np.zeros((40, 40), np.uint8)
    good[5:20, 5:20] = 1
    for name in ("gt", "pred"):
        for t in range(3):
            write_label_png(tmp_path / name / "a" / f"{t:05d}.png", good)
            write_label_png(tmp_path / name / "b" / f"{t:05d}.png", np.zeros((40, 40), np.uint8))
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    captured = capsys.readouterr()
    assert "sequence 'b' is not scored" in captured.err and "\na " in captured.out


def test_a_folder_holding_both_pngs_and_sequence_folders_is_refused_as_ambiguous(tmp_path, capsys):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 1
    for name in ("gt", "pred"):
        write_label_png(tmp_path / name / "seq" / "00000.png", mask)
        write_label_png(tmp_path / name / "overview.png", mask)
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    assert "one sequence or a set of them" in capsys.readouterr().err


def davis2016_clip(frames=4):
    """A 0/255 foreground clip (DAVIS 2016's masks): a square moving right."""
    out = []
    for t in range(frames):
        mask = np.zeros((40, 40), np.uint8)
        mask[5:20, 5 + 2 * t:20 + 2 * t] = 255
        out.append(mask)
    return out


def test_training_validation_scores_a_davis2016_clip_instead_of_returning_no_objects():
    # validation gives a family that takes masks the first frame's 0/255 mask, so it tracks (and writes) id 255;
    # read as void, such a clip had no object and validation returned {} without a word
    truth = davis2016_clip()
    shifted = [np.roll(m, 2, axis=1) for m in truth]
    (stcn,) = score_sequence("stcn", shifted, truth)
    assert stcn.object_id == 1 and len(stcn.j) == 2 and stcn.j_mean == pytest.approx(13 * 15 / (17 * 15))
    (instances,) = score_sequence("stem-seg", [(m > 0).astype(np.uint32) * 7 for m in shifted], truth)
    assert instances.j_mean == pytest.approx(13 / 17) and len(instances.j) == 4


def test_3dc_seg_scoring_reads_void_beside_objects_as_background_and_a_0_255_clip_s_255_as_foreground():
    # demo and training validation counted DAVIS 2017's void as foreground for 3dc-seg, whose sampler trains
    # it as background: a model that left the void out, as trained, lost J there
    truth = []
    for _ in range(3):
        labels = np.zeros((40, 40), np.uint8)
        labels[5:15, 5:15] = 1
        labels[25:35, :] = 255                       # void band
        truth.append(labels)
    objects_only = [(t == 1).astype(np.uint8) for t in truth]
    (score,) = score_sequence("3dc-seg", objects_only, truth)
    assert score.j_mean == pytest.approx(1.0) and score.f_mean == pytest.approx(1.0)
    only_void = [np.where(t == 255, 255, 0).astype(np.uint8) for t in truth]   # DAVIS 2016: 255 is the object
    (score,) = score_sequence("3dc-seg", [(t > 0).astype(np.uint8) for t in only_void], only_void)
    assert score.j_mean == pytest.approx(1.0)


def test_vosrt_eval_scores_davis2016_0_255_ground_truth_as_one_object(tmp_path, capsys):
    truth = davis2016_clip()
    for t, mask in enumerate(truth):
        write_label_png(tmp_path / "gt" / "bear" / f"{t:05d}.png", mask)
        write_label_png(tmp_path / "stcn" / "bear" / f"{t:05d}.png", mask)          # tracked as id 255
        write_label_png(tmp_path / "fg" / "bear" / f"{t:05d}.png", (mask > 0).astype(np.uint8))   # 3DC-Seg: 0/1
    for pred in ("stcn", "fg"):
        assert main(["eval", "--pred", str(tmp_path / pred), "--gt", str(tmp_path / "gt")]) == 0
        captured = capsys.readouterr()
        assert "bear           1   1.000   1.000   1.000" in captured.out and "0/255 ground truth" in captured.err
    assert main(["eval", "--task", "unsupervised", "--pred", str(tmp_path / "fg"), "--gt", str(tmp_path / "gt")]) == 0
    assert "all         mean   1.000   1.000   1.000" in capsys.readouterr().out


def test_3dc_seg_validation_scores_a_davis2016_clip_as_vosrt_eval_and_davis_2016_do(tmp_path):
    # DAVIS 2016's evaluation, the one 3DC-Seg reports, leaves out the first and last frames for every method, and so
    # does vosrt eval; the demo and training validation scored every frame for 3dc-seg, so the same masks got
    # another J&F from them than from `vosrt run` + `vosrt eval`
    from vosrt.sdk.cli_eval import evaluate_folders

    truth = davis2016_clip(frames=5)
    predicted = [(m > 0).astype(np.uint8) for m in truth]
    predicted[0][:] = 0                                   # first and last frames wrong, the middle three right
    predicted[-1] = np.roll(predicted[-1], 6, axis=1)
    for t, (gt, pred) in enumerate(zip(truth, predicted)):
        write_label_png(tmp_path / "gt" / "bear" / f"{t:05d}.png", gt)
        write_label_png(tmp_path / "pred" / "bear" / f"{t:05d}.png", pred)
    (validation,) = score_sequence("3dc-seg", predicted, truth, name="bear")
    (evaluated,) = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert validation.j == evaluated.j == [1.0] * 3 and validation.f == evaluated.f == [1.0] * 3


def test_vosrt_eval_refuses_ground_truth_ids_beyond_254_instead_of_scoring_thousands_of_absent_objects(tmp_path,
                                                                                                      capsys):
    # objects are 1..K of the first frame: 16-bit ids 2001 and 2002 (KITTI-MOTS's instance PNGs) made 2002 objects,
    # 2000 of them absent and perfect, so an empty prediction scored J&F 0.999; the unsupervised task ran for minutes
    for t in range(4):
        gt = np.zeros((40, 40), np.uint16)
        gt[5:15, 5:15], gt[20:30, 20:30] = 2001, 2002
        write_label_png(tmp_path / "gt" / "seq" / f"{t:05d}.png", gt)
        write_label_png(tmp_path / "pred" / "seq" / f"{t:05d}.png", np.zeros((40, 40), np.uint8))
    for task in ("semi-supervised", "unsupervised"):
        assert main(["eval", "--task", task, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
        err = capsys.readouterr().err
        assert "00000.png: object id(s) 2001, 2002 beyond 254 (a 16-bit PNG)" in err and "--task mots" in err, err


def test_vosrt_eval_warns_of_ids_missing_from_the_first_frame_that_the_protocol_scores_as_objects(tmp_path, capsys):
    for t in range(3):
        gt = np.zeros((40, 40), np.uint8)
        gt[5:15, 5:15], gt[20:30, 20:30] = 1, 3                 # no object 2
        write_label_png(tmp_path / "gt" / f"{t:05d}.png", gt)
        write_label_png(tmp_path / "pred" / f"{t:05d}.png", gt)
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    captured = capsys.readouterr()
    assert "object id(s) 2 of 1..3 are not in the first ground-truth frame (00000.png)" in captured.err
    assert re.search(r"^gt +2 +1\.000 +1\.000 +1\.000", captured.out, re.M), captured.out   # as davis2017-evaluation


def test_vosrt_eval_refuses_the_ground_truth_as_the_predictions(tmp_path, capsys):
    for t, mask in enumerate(davis2016_clip()):
        write_label_png(tmp_path / "Annotations" / "480p" / "bear" / f"{t:05d}.png", mask)
    for pred in (tmp_path / "Annotations" / "480p", tmp_path / "Annotations" / "480p" / "bear"):
        assert main(["eval", "--pred", str(pred), "--gt", str(tmp_path / "Annotations" / "480p")]) == 2
        assert "the predictions of bear are --gt's own ground truth" in capsys.readouterr().err


def test_vosrt_eval_reads_sequence_lists_as_people_write_them(tmp_path, capsys):
    # `ls -d */` gives "seqa/", which became one empty name; a path became its parent's name ("480p"); a BOM
    # (Windows Notepad) stayed in the first name; a comment line was a name
    for name in ("seqa", "seqb", "seqc"):
        for t, mask in enumerate(davis2016_clip()):
            write_label_png(tmp_path / "gt" / name / f"{t:05d}.png", mask)
            write_label_png(tmp_path / "pred" / name / f"{t:05d}.png", mask)
    listing = "\ufeff# validation split\nseqa/\r\ndata/Annotations/480p/seqb\n\n"
    (tmp_path / "list.txt").write_text(listing, encoding="utf-8")
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--sequences",
                 str(tmp_path / "list.txt")]) == 0
    sequences = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if " mean " in line}
    assert sequences == {"seqa", "seqb", "all"}
    (tmp_path / "davis2016.txt").write_text("/JPEGImages/480p/seqc/00000.jpg /Annotations/480p/seqc/00000.png\n")
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--sequences",
                 str(tmp_path / "davis2016.txt")]) == 0
    assert "seqc" in capsys.readouterr().out


def test_a_csv_that_cannot_be_written_is_refused_before_any_scoring(tmp_path, capsys):
    # it was found after the table: minutes into scoring a dataset
    _write_shifted_square(tmp_path)
    (tmp_path / "taken").write_text("a file where --csv wants a folder")
    for csv_path, said in ((tmp_path / "taken" / "m.csv", "taken is a file, not a folder; give --csv FILE in a"),
                           (tmp_path, "is a folder; give a file name")):
        assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--csv",
                     str(csv_path)]) == 2
        captured = capsys.readouterr()
        assert said in captured.err and "J&F" not in captured.out, (captured.out, captured.err)


def test_vosrt_eval_takes_frames_in_natural_order_to_find_the_first_and_last(tmp_path, capsys):
    # frames 0..10 without zero padding: the last frame is 10.png (not scored); sorted as strings, 9.png came
    # last and 10.png, wrong on purpose here, was scored instead
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 1
    for t in range(11):
        write_label_png(tmp_path / "gt" / f"{t}.png", mask)
        write_label_png(tmp_path / "pred" / f"{t}.png", mask if t < 10 else np.zeros_like(mask))
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    assert "all         mean   1.000   1.000   1.000" in capsys.readouterr().out


def test_vosrt_eval_of_one_sequence_finds_it_in_a_folder_of_predicted_sequences(tmp_path, capsys):
    # `--gt Annotations/480p/bear --pred masks/` where masks/bear/ holds the PNGs: was "missing masks/00000.png"
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 1
    for t in range(3):
        write_label_png(tmp_path / "gt" / "bear" / f"{t:05d}.png", mask)
        write_label_png(tmp_path / "masks" / "bear" / f"{t:05d}.png", mask)
    assert main(["eval", "--pred", str(tmp_path / "masks"), "--gt", str(tmp_path / "gt" / "bear")]) == 0
    assert "bear           1   1.000   1.000   1.000" in capsys.readouterr().out
    assert main(["eval", "--pred", str(tmp_path / "none"), "--gt", str(tmp_path / "gt" / "bear")]) == 2
    assert f"--pred {tmp_path / 'none'}: not a folder (it does not exist)" in capsys.readouterr().err
    assert main(["eval", "--pred", str(tmp_path / "masks"), "--gt", str(tmp_path / "none")]) == 2
    assert f"--gt {tmp_path / 'none'}: not a folder" in capsys.readouterr().err


def test_vosrt_eval_with_no_sequence_to_score_is_an_error_not_a_table_of_nan(tmp_path, capsys):
    for name in ("gt", "pred"):
        for t in range(3):
            write_label_png(tmp_path / name / "empty" / f"{t:05d}.png", np.zeros((40, 40), np.uint8))
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    captured = capsys.readouterr()
    assert "no sequence could be scored" in captured.err and "nan" not in captured.out
    assert not (tmp_path / "pred" / "metrics.csv").exists()


def entering_clip():
    """Object 1 on every frame; object 2 enters on frame 2 (as generated sequences' late objects do)."""
    frames = []
    for t in range(5):
        labels = np.zeros((40, 40), np.uint8)
        labels[2:12, 2:12] = 1
        if t >= 2:
            labels[20:30, 20:30] = 2
        frames.append(labels)
    return frames


def test_score_sequence_of_objects_that_enter_later_and_of_unannotated_frames():
    # training validation gives each object on its first annotated frame; scoring it by the first frame's
    # objects raised UnknownObjectError on the entering object and ended the training run
    truth = entering_clip()
    predicted = [t.copy() for t in truth]
    predicted[4][20:30, 20:30] = 0                                 # object 2 lost on the last frame
    one, two = score_sequence("stcn", predicted, truth)
    assert (one.object_id, one.j) == (1, [1.0] * 4)                # frames 1..4, the last included
    assert (two.object_id, two.j) == (2, [1.0, 0.0])               # frames 3 and 4: after the one it is given on
    # YouTube-VOS annotates every fifth frame: frames without one (None) are not scored, not read as empty
    sparse = [truth[0], None, truth[2], None, truth[4]]
    wrong = [t.copy() for t in predicted]
    wrong[1][:] = 0
    one, two = score_sequence("stcn", wrong, sparse)
    assert one.j == [1.0, 1.0] and two.j == [0.0]
    (foreground,) = score_sequence("3dc-seg", [(t > 0).astype(np.uint8) for t in wrong], sparse)
    assert foreground.j == [1.0]                                   # frame 2: the first and last annotated left out


def test_vosrt_eval_scores_objects_that_enter_after_the_first_frame(tmp_path, capsys):
    # vosrt run on a DAVIS-layout sequence gives such an object where it is first annotated; eval refused its id
    for t, labels in enumerate(entering_clip()):
        write_label_png(tmp_path / "gt" / "late" / f"{t:05d}.png", labels)
        write_label_png(tmp_path / "pred" / "late" / f"{t:05d}.png", labels)
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    captured = capsys.readouterr()
    assert "late           2   1.000   1.000   1.000" in captured.out and "enter after the first frame" in captured.err


@pytest.mark.parametrize("gt_suffix, pred_suffix", [(".PNG", ".png"), (".png", ".PNG"), (".PNG", ".PNG")])
def test_vosrt_eval_reads_png_masks_named_in_either_case(tmp_path, capsys, gt_suffix, pred_suffix):
    # upper-case .PNG files were not found on Linux ("no PNG masks"); vosrt run reads image folders in either case
    _write_shifted_square(tmp_path, gt_suffix, pred_suffix)
    for gt_folder, pred_folder in (("gt", "pred"), ("gt/seqA", "pred/seqA")):   # a set of sequences, and one
        out_csv = tmp_path / "scores.csv"
        assert main(["eval", "--pred", str(tmp_path / pred_folder), "--gt", str(tmp_path / gt_folder),
                     "--csv", str(out_csv)]) == 0, capsys.readouterr().err
        overall = [r for r in csv.DictReader(open(out_csv)) if r["sequence"] == "all"][0]
        assert float(overall["J"]) == pytest.approx(1 / 3, abs=1e-6)


def test_vosrt_run_takes_the_first_mask_of_a_davis_sequence_annotated_in_upper_case_png(tmp_path):
    from vosrt.sdk.synthetic import generate_sequence, write_davis
    from vosrt.sdk.video import open_source

    sequence = generate_sequence(5, num_frames=2, height=32, width=48, num_objects=1, num_distractors=0)
    write_davis(tmp_path, "seq", sequence)
    annotation = tmp_path / "Annotations" / "480p" / "seq" / "00000.png"
    annotation.rename(annotation.with_suffix(".PNG"))
    source = open_source(tmp_path / "JPEGImages" / "480p" / "seq")
    try:
        assert np.array_equal(source.first_mask(), sequence.labels[0])
    finally:
        source.close()


def _random_video(rng, family: str):
    """(predicted, truth) of a small random video for ``family``'s protocol: objects on the first frame or
    entering later, frames without annotation, DAVIS 2016 0/255 masks, void 255 beside objects."""
    count = int(rng.integers(1, 7))
    binary = rng.random() < 0.25
    pool = [255] if binary else [1, 2, 3] + ([255] if rng.random() < 0.3 else [])
    truth = []
    for t in range(count):
        ids = [0] + [i for i in pool if rng.random() < (0.9 if t == 0 else 0.6)]
        truth.append(rng.choice(ids, size=(10, 12)).astype(np.uint8))
    if rng.random() < 0.4:  # YouTube-VOS: some frames are not annotated (the first one too, at times)
        truth = [None if t and rng.random() < 0.4 else labels for t, labels in enumerate(truth)]
        if rng.random() < 0.2:
            truth[0] = None
    given = sorted({int(i) for labels in truth if labels is not None for i in np.unique(labels) if i})
    if family == "stem-seg":  # track ids, over 20 at times (the protocol keeps the 20 largest)
        predicted = [rng.integers(0, int(rng.choice([4, 30])), size=(10, 12)).astype(np.uint32) for _ in truth]
    else:  # a tracker predicts the ids it was given (255 only as DAVIS 2016's one object)
        ids = [0] + (given if binary else [i for i in given if i != 255])
        predicted = [rng.choice(ids, size=(10, 12)).astype(np.uint8) for _ in truth]
    return predicted, truth


@pytest.mark.parametrize("family", ["stcn", "3dc-seg", "stem-seg"])
def test_scores_of_compressed_frames_read_one_at_a_time_equal_those_of_lists(family):
    # training validation hands score_sequence PackedFrames so that a long video is not held whole; every
    # protocol (first and last frames skipped, objects entering later, frames without annotation, 0/255
    # masks, void beside objects, instance proposals) must score them exactly as lists
    from vosrt.sdk.metrics import PackedFrames, score_sequence

    rng = np.random.default_rng(0)
    for case in range(60):
        predicted, truth = _random_video(rng, family)
        packed_predicted, packed_truth = PackedFrames(), PackedFrames()
        for p, t in zip(predicted, truth):
            packed_predicted.append(p)
            packed_truth.append(t)
        assert all(a is None if b is None else np.array_equal(a, b) and a.dtype == b.dtype
                   for a, b in zip(packed_truth, truth))
        try:
            expected = [(s.sequence, s.object_id, s.j, s.f) for s in score_sequence(family, predicted, truth, "clip")]
        except ValueError as err:   # a protocol's refusal (an id the truth never annotates) is the same too
            with pytest.raises(type(err), match=re.escape(str(err))):
                score_sequence(family, packed_predicted, packed_truth, "clip")
            continue
        got = score_sequence(family, packed_predicted, packed_truth, "clip")
        assert [(s.sequence, s.object_id, s.j, s.f) for s in got] == expected, case


def test_recall_and_decay_follow_the_davis_evaluation_s_definitions():
    # recall: frames above 0.5; decay: mean of the first quarter less the last, quarters cut at
    # round(linspace(1, n, 5)) - 1 = [0, 1, 3, 4, 5] for n = 6 (3.5 rounds up), edge frames in both bins
    assert metrics.recall_and_decay([1, 1, 0.4, 0.2, 0, 0]) == pytest.approx((2 / 6, 1.0))
    assert metrics.recall_and_decay([0.2, 0.9, 0.9, 0.9, 0.9, 0.6]) == pytest.approx((5 / 6, 0.55 - 0.75))
    assert metrics.recall_and_decay([0.7]) == pytest.approx((1.0, 0.0))
    assert all(np.isnan(metrics.recall_and_decay([])))
    scores = [metrics.ObjectScore("a", 1, j=[1, 1, 0.4, 0.2, 0, 0], f=[1] * 6),
              metrics.ObjectScore("a", 2, j=[0.7] * 6, f=[0.2, 0.9, 0.9, 0.9, 0.9, 0.6])]
    total = metrics.summarize(scores, recall_decay=True)
    assert total["J-Recall"] == pytest.approx((2 / 6 + 1) / 2) and total["J-Decay"] == pytest.approx(0.5)
    assert total["F-Recall"] == pytest.approx((1 + 5 / 6) / 2) and total["F-Decay"] == pytest.approx(-0.1)
    assert set(metrics.summarize(scores)) == {"J", "F", "J&F"}


def test_vosrt_eval_reports_recall_and_decay_after_j_and_f(tmp_path, capsys):
    # the DAVIS evaluation reports J and F recall and decay beside the means; vosrt eval gave the means only
    gt = np.zeros((6, 24, 24), np.uint8)
    gt[:, 4:20, 4:20] = 1
    pred = gt.copy()
    pred[4:, :, :] = 0                       # the object lost for the last two frames
    for t in range(6):
        write_label_png(tmp_path / "gt" / "s" / f"{t:05d}.png", gt[t])
        write_label_png(tmp_path / "pred" / "s" / f"{t:05d}.png", pred[t])
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    out = capsys.readouterr().out
    assert "J&F  J-Recall   J-Decay  F-Recall   F-Decay" in out
    # scored frames 1..4: J = [1, 1, 1, 0]; edges round(linspace(1, 4, 5)) - 1 = [0, 1, 2, 2, 3]: bins [1, 1], [1, 0]
    row = [r for r in csv.DictReader(open(tmp_path / "pred" / "metrics.csv")) if r["sequence"] == "all"][0]
    assert float(row["J-Recall"]) == pytest.approx(0.75) and float(row["J-Decay"]) == pytest.approx(1 - 0.5)
    assert float(row["F-Recall"]) == pytest.approx(0.75) and float(row["F-Decay"]) == pytest.approx(1 - 0.5)


def test_vosrt_eval_shows_its_progress_over_the_frames_unless_told_not_to(tmp_path, capsys):
    # eval printed nothing until its table: scoring DAVIS's validation set takes tens of seconds on a CPU and
    # the unsupervised task's 20 proposals per object minutes, a silent wait
    pytest.importorskip("tqdm")   # the bar (without it: a line a second, none in this short run)
    _write_shifted_square(tmp_path, frames=4)
    args = ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(args) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "scoring: 100%" in err and "4/4" in err
    assert main(args + ["--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def _davis_root(root, predicted=("b", "c"), frames=4):
    """A DAVIS-layout root: Annotations/480p/{a,b,c} (a square), ImageSets/2017/val.txt listing b and c, and
    predictions (the truth itself) of ``predicted`` under root/pred."""
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 1
    for name in ("a", "b", "c"):
        for t in range(frames):
            write_label_png(root / "DAVIS" / "Annotations" / "480p" / name / f"{t:05d}.png", mask)
            if name in predicted:
                write_label_png(root / "pred" / name / f"{t:05d}.png", mask)
    (root / "DAVIS" / "ImageSets" / "2017").mkdir(parents=True)
    (root / "DAVIS" / "ImageSets" / "2017" / "val.txt").write_text("b\nc\n")
    (root / "DAVIS" / "ImageSets" / "2017" / "train.txt").write_text("a\n")


def test_vosrt_eval_of_a_split_names_every_unpredicted_sequence_and_scores_the_listed_ones(tmp_path, capsys):
    # DAVIS's Annotations/480p holds train and val; predictions of val were refused naming one sequence at a
    # time, and nothing scored a split short of copying its annotations into a folder of their own
    import shlex

    _davis_root(tmp_path)
    gt = tmp_path / "DAVIS" / "Annotations" / "480p"
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"no predictions for 1 of the 3 sequence(s) of --gt {gt} (a;" in err and "--sequences FILE" in err
    command = shlex.split(err.split("`")[1])
    assert command[:2] == ["vosrt", "eval"] and command[-2:] == ["--sequences", str(gt.parent.parent / "ImageSets" /
                                                                                    "2017" / "val.txt")]
    assert main(command[1:] + ["--csv", str(tmp_path / "val.csv"), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "val.csv")))
    assert [r["sequence"] for r in rows] == ["b", "c", "b", "c", "all"] and rows[-1]["J&F"] == "1.000000"
    # a list naming a sequence the ground truth lacks
    (tmp_path / "list.txt").write_text("b\nzebra\n")
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--sequences", str(tmp_path / "list.txt")]) == 2
    assert f"--sequences {tmp_path / 'list.txt'}: 1 of its 2 sequence(s) are not in --gt {gt} (zebra;" in \
        capsys.readouterr().err


def test_vosrt_eval_refuses_missing_predictions_of_every_sequence_before_scoring_any(tmp_path, capsys):
    # a frame missing in the last sequence was found only after every earlier one was scored (minutes on a
    # dataset), and then one file at a time
    _davis_root(tmp_path, predicted=("a", "b", "c"))
    (tmp_path / "pred" / "b" / "00001.png").unlink()
    (tmp_path / "pred" / "c" / "00002.png").unlink()
    gt = tmp_path / "DAVIS" / "Annotations" / "480p"
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert f"missing {tmp_path / 'pred' / 'b' / '00001.png'}" in err and "and 1 more predicted PNG(s)" in err
    assert "scoring" not in err   # refused before the first sequence was scored


@pytest.mark.parametrize("flags, gone", [(["--all-frames"], "c/00003.png"),
                                         (["--task", "unsupervised"], "c/00000.png")], ids=["all-frames", "unsupervised"])
def test_vosrt_eval_refuses_a_missing_first_or_last_frame_its_flags_score_before_scoring_any(tmp_path, capsys, flags,
                                                                                              gone):
    # the first and last frames were left to the scoring, so with --all-frames (the last) or the unsupervised task
    # (both) a missing one was found after every earlier sequence had been scored
    _davis_root(tmp_path, predicted=("a", "b", "c"))
    (tmp_path / "pred" / gone).unlink()
    gt = tmp_path / "DAVIS" / "Annotations" / "480p"
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(gt), *flags]) == 2
    err = capsys.readouterr().err
    assert f"missing {tmp_path / 'pred' / gone}" in err and "scoring" not in err, err
    # without those flags DAVIS's semi-supervised protocol leaves the frame out, and it needs no PNG
    if flags == ["--all-frames"]:
        assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--no-progress"]) == 0


def test_vosrt_eval_given_a_dataset_s_top_folder_says_which_folder_holds_its_sequences(tmp_path, capsys):
    # davis2017-evaluation is given the DAVIS root; vosrt eval said only "no PNG masks in it"
    _davis_root(tmp_path, predicted=("a", "b", "c"))
    for gt in (tmp_path / "DAVIS", tmp_path / "DAVIS" / "Annotations"):
        assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(gt)]) == 2
        hinted = tmp_path / "DAVIS" / "Annotations" / "480p"
        assert f"its sequence folders are in {hinted}: give --gt {hinted}" in capsys.readouterr().err


def test_hidden_folders_of_pngs_are_no_sequences(tmp_path, capsys):
    # a Jupyter .ipynb_checkpoints folder of PNG copies in the ground truth was a sequence: "no predictions for
    # sequence .ipynb_checkpoints"
    import shutil

    _davis_root(tmp_path, predicted=("a", "b", "c"))
    gt = tmp_path / "DAVIS" / "Annotations" / "480p"
    shutil.copytree(gt / "a", gt / ".ipynb_checkpoints")
    shutil.copytree(tmp_path / "pred" / "a", tmp_path / "pred" / ".hidden")
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--no-progress",
                 "--csv", str(tmp_path / "m.csv")]) == 0
    rows = [line.split(",")[0] for line in (tmp_path / "m.csv").read_text().splitlines()[1:]]
    assert not any(row.startswith(".") for row in rows) and {"a", "b", "c"} <= set(rows), rows


def test_the_foreground_protocol_scores_a_clip_whose_first_annotated_frame_shows_no_foreground():
    # the object was taken from the first frame: with none there, the clip was left out of the 3dc-seg score
    # (vosrt demo, training validation) without a word, where DAVIS 2016's evaluation scores every inner frame
    truth = [np.zeros((20, 30), np.uint8) for _ in range(6)]
    for t in range(2, 6):
        truth[t][5:12, 8:20] = 255
    predicted = [(t > 0).astype(np.uint8) for t in truth]
    predicted[3][:] = 0   # one inner frame missed
    (score,) = score_sequence("3dc-seg", predicted, truth, name="late")
    assert score.j == [1.0, 1.0, 0.0, 1.0]   # frames 1..4 (the first and last left out); frame 1 empty in both
