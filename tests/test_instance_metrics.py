"""Instance metrics against hand computations: DAVIS unsupervised J&F, YouTube-VIS video AP, KITTI-MOTS HOTA."""
import numpy as np
import pytest

from vosrt.sdk.errors import UserError
from vosrt.sdk.instance_metrics import (evaluate_unsupervised_sequence, instances_to_vis_results, mots_metrics,
                                        vis_average_precision, write_kitti_mots)
from vosrt.sdk.metrics import summarize
from vosrt.sdk.session import SegmentedFrame

pycocotools = pytest.importorskip("pycocotools")


def square(top, left, size, shape=(40, 40)):
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


A, B, C, D = square(2, 2, 8), square(20, 20, 10), square(2, 30, 6), square(32, 2, 6)


def label_map(*pairs):
    labels = np.zeros((40, 40), np.int32)
    for label, mask in pairs:
        labels[mask] = label
    return labels


GTS = [label_map((1, A), (2, B), (3, C))] * 2


def test_unsupervised_matching_with_more_proposals_than_objects_and_a_missed_object():
    # proposals: 5 = A on both frames (J = F = 1); 7 = B on frame 0 only (J, F: 1 then 0); 9 = D, far from
    # everything. C (object 3) overlaps no proposal: whichever it is given, J = F = 0.
    preds = [label_map((5, A), (7, B), (9, D)), label_map((5, A), (9, D))]
    scores = evaluate_unsupervised_sequence(preds, GTS, "seq")
    assert [s.object_id for s in scores] == [1, 2, 3]
    assert [s.j for s in scores] == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert [s.f for s in scores] == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert summarize(scores) == {"J": 0.5, "F": 0.5, "J&F": 0.5}


def test_unsupervised_unmatched_objects_score_zero_where_visible():
    preds = [label_map((4, A))] * 2
    scores = evaluate_unsupervised_sequence(preds, GTS, "seq")
    assert [s.j_mean for s in scores] == [1.0, 0.0, 0.0]
    assert summarize(scores)["J&F"] == pytest.approx(1 / 3)


def test_unsupervised_matching_maximises_the_total_not_each_object_greedily():
    # A: 8×8; B: 4×4 beside it. Proposal 1 = 40 pixels of A plus all of B: J(1, A) = 40/80 = 0.5 is the
    # best single pair, J(1, B) = 16/56. Proposal 2 = the other 24 pixels of A: J(2, A) = 24/64, J(2, B) = 0.
    # Greedy (A ← 1) totals 0.5; the optimum (A ← 2, B ← 1) 0.375 + 0.286.
    a, b = square(2, 2, 8), square(2, 10, 4)
    pred = np.zeros((40, 40), np.int32)
    pred[a | b] = 1
    pred[2:10, 2:5] = 2
    scores = evaluate_unsupervised_sequence([pred], [label_map((1, a), (2, b))], "seq")
    assert scores[0].j == [24 / 64] and scores[1].j == [16 / 56]


def test_unsupervised_keeps_the_20_largest_proposals():
    gts = [label_map((1, A))]
    pred = np.zeros((40, 40), np.int32)
    pred[A] = 30                     # the right proposal, but the smallest when 21 exist
    pred[A & ~square(2, 2, 1)] = 0
    pred[2, 2] = 30
    for k in range(20):
        pred[12 + k // 10 * 10: 14 + k // 10 * 10, 2 * (k % 10): 2 * (k % 10) + 2] = k + 1   # 4 pixels each
    assert evaluate_unsupervised_sequence([pred], gts, "seq")[0].j_mean == 0.0
    assert evaluate_unsupervised_sequence([pred], gts, "seq", max_proposals=21)[0].j_mean == pytest.approx(1 / 64)


def rle(mask):
    from pycocotools import mask as mask_utils
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode()
    return out


def test_vis_average_precision_equals_the_hand_computation():
    # One video, two frames, category 1. Ground truth: A on both frames; B with 6 pixels on frame 0 and 2 on frame 1.
    b0 = np.zeros((40, 40), bool)
    b0[20, 20:26] = True             # 6 pixels
    b1 = np.zeros((40, 40), bool)
    b1[30, 30:32] = True             # 2 pixels
    gt = {"videos": [{"id": 1, "height": 40, "width": 40, "length": 2}],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [rle(A), rle(A)]},
                          {"id": 2, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [rle(b0), rle(b1)]}]}
    p2 = np.zeros((40, 40), bool)
    p2[20, 20:25] = True             # 5 of B's frame-0 pixels, nothing on frame 1: video IoU 5 / 8 = 0.625
    results = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [rle(A), rle(A)]},
               {"video_id": 1, "category_id": 1, "score": 0.8, "segmentations": [rle(p2), None]},
               {"video_id": 1, "category_id": 1, "score": 0.7, "segmentations": [rle(D), rle(D)]}]
    # IoU thresholds 0.50, 0.55, 0.60 match both: TP TP FP → precision 1 at every recall: AP 1.
    # The 7 thresholds 0.65 … 0.95 match only A: recall 0.5; the 51 recall points 0, 0.01 … 0.5 have precision 1.
    ap_high = 51 / 101
    expected = {"AP": (3 + 7 * ap_high) / 10, "AP50": 1.0, "AP75": ap_high,
                "AR1": 0.5,                       # one detection per video: A only
                "AR10": (3 * 1.0 + 7 * 0.5) / 10}
    got = vis_average_precision(gt, results)
    assert got == pytest.approx(expected)


def test_vis_polygons_far_outside_the_frame_are_refused_before_pycocotools_rasterises_them():
    # pycocotools rasterises along a polygon's edges: a 117-byte results file with coordinates of 2e7 took 2.4 GB,
    # one of 2e8 crashed the process (signal 11)
    pytest.importorskip("pycocotools")
    gt = {"videos": [{"id": 1, "height": 40, "width": 40, "length": 1}], "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [rle(A)]}]}
    far = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [[[0, 0, 2e8, 0, 2e8, 2e8]]]}]
    with pytest.raises(UserError, match=r"a polygon reaches \(2e\+08, 2e\+08\), far outside the 40x40 frame"):
        vis_average_precision(gt, far)
    bad = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [[[0, 0, 5]]]}]
    with pytest.raises(UserError, match="a polygon must be a list of x, y coordinates"):
        vis_average_precision(gt, bad)
    inside = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [[[2, 2, 30, 2, 30, 30, 2, 30]]]}]
    assert 0 <= vis_average_precision(gt, inside)["AP"] <= 1


def test_vis_results_from_segmented_frames_round_trip():
    frames = [SegmentedFrame(t, label_map((3, A), (8, B)).astype(np.uint32), None,
                             {3: {"score": 0.6 + 0.1 * t, "category": 2}, 8: {"score": 0.9, "category": 1}})
              for t in range(2)]
    results = instances_to_vis_results(7, frames, categories={1: 11, 2: 12})
    assert [(r["category_id"], round(r["score"], 6)) for r in results] == [(12, 0.65), (11, 0.9)]
    gt = {"videos": [{"id": 7, "height": 40, "width": 40}], "categories": [{"id": 11}, {"id": 12}],
          "annotations": [{"id": 1, "video_id": 7, "category_id": 12, "segmentations": [rle(A)] * 2},
                          {"id": 2, "video_id": 7, "category_id": 11, "segmentations": [rle(B)] * 2}]}
    assert vis_average_precision(gt, results)["AP"] == pytest.approx(1.0)


def test_vis_writer_gives_a_frame_the_dataset_does_not_list_a_slot_of_its_own_after_the_listed_ones():
    # After a skipped listed frame, a frame with an unlisted name (a video file longer than the dataset lists)
    # took the running count as its slot: that is a listed frame's slot, whose mask it replaced.
    from vosrt.sdk.instance_metrics import VisWriter

    writer = VisWriter(None, 1, frame_names=["00000", "00001", "00002"])
    for index, (name, mask) in enumerate([("00000", A), ("00002", A), ("00003", B)]):   # 00001 was skipped
        writer(index, name, None, label_map((1, mask)))
    [entry] = writer.results()
    assert writer.unlisted == 1 and writer.slots == 4
    assert [s is None for s in entry["segmentations"]] == [False, True, False, False]
    assert entry["segmentations"][2] == rle(A) and entry["segmentations"][3] == rle(B)


trackeval = pytest.importorskip("trackeval")


def mots_files(folder, frames_by_track, cls=1):
    """Write a KITTI-MOTS txt: frames_by_track {track id: {frame: mask}}."""
    lines = []
    for track, frames in frames_by_track.items():
        for t, mask in frames.items():
            r = rle(mask)
            lines.append((t, f"{t} {track} {cls} 40 40 {r['counts']}"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0000.txt").write_text("\n".join(line for _, line in sorted(lines)) + "\n")


def test_mots_perfect_tracker_scores_one(tmp_path):
    gt = {1001: {t: A for t in range(4)}, 1002: {t: B for t in range(4)}}
    mots_files(tmp_path / "gt", gt)
    mots_files(tmp_path / "pred", {5: gt[1001], 6: gt[1002]})
    car = mots_metrics(tmp_path / "gt", tmp_path / "pred", classes=("car",))["car"]
    assert car == pytest.approx({"HOTA": 1.0, "DetA": 1.0, "AssA": 1.0, "sMOTSA": 1.0, "MOTSA": 1.0, "IDF1": 1.0})


def test_mots_half_missed_track_matches_the_hand_computation(tmp_path):
    # One car on 4 frames, found (exactly) on 2 of them with one id: TP 2, FN 2, FP 0, no switches.
    # DetA = 2/4; every TP has TPA 2, FNA 2 → AssA = 1/2; HOTA = sqrt(DetA·AssA) = 1/2;
    # MOTSA = 1 − (FN + FP + IDSW)/GT = 1/2; sMOTSA = (soft TP − FP − IDSW)/GT = 2/4; IDF1 = 2·2/(4 + 2) = 2/3.
    mots_files(tmp_path / "gt", {1001: {t: A for t in range(4)}})
    mots_files(tmp_path / "pred", {9: {0: A, 1: A}})
    car = mots_metrics(tmp_path / "gt", tmp_path / "pred", classes=("car",))["car"]
    assert car == pytest.approx({"HOTA": 0.5, "DetA": 0.5, "AssA": 0.5, "sMOTSA": 0.5, "MOTSA": 0.5, "IDF1": 2 / 3})


def test_mots_predictions_numbered_past_the_ground_truth_are_said(tmp_path, capsys):
    # a 1-based tracker file against 0-based KITTI-MOTS truth was scored without a word (the frame after the truth's
    # last as false positives, every other against the wrong truth); trackeval itself refuses frames past a seqmap
    gt = {1001: {t: A for t in range(4)}}
    mots_files(tmp_path / "gt", gt)
    mots_files(tmp_path / "pred", {5: {t + 1: A for t in range(4)}})
    mots_metrics(tmp_path / "gt", tmp_path / "pred", classes=("car",))
    err = capsys.readouterr().err
    assert "1 predicted frame(s) after the ground truth's last annotated frame 3 (up to 4)" in err, err
    mots_files(tmp_path / "pred", {5: gt[1001]})
    mots_metrics(tmp_path / "gt", tmp_path / "pred", classes=("car",))
    assert "after the ground truth's last" not in capsys.readouterr().err


def test_mots_and_vis_writers_say_what_the_official_loaders_refuse(tmp_path, capsys):
    # a category other than 1 and 2 in a --mots file stopped mots_tools ("Unknown object class"); an empty --vis list
    # made the official ytvos loadRes fail (IndexError); both were written without a word
    pytest.importorskip("pycocotools")
    from vosrt.sdk.instance_metrics import MotsWriter, VisWriter

    writer = MotsWriter(tmp_path / "0000.txt")
    writer(0, "000000", None, label_map((1, A)), {1: {"category": 7}})
    writer.close()
    assert "the model's category 7 is no KITTI-MOTS class" in capsys.readouterr().err
    vis = VisWriter(tmp_path / "results.json", 1)
    vis(0, "00000", None, np.zeros((40, 40), np.uint16))
    vis.close()
    assert "no instance was found, so the results list is empty" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "[]"


def test_mots_ground_truth_with_blank_lines_or_tabs_is_read_as_the_predictions_are(tmp_path):
    # vosrt read such a ground truth, but handed trackeval the file as it was, which refused it ("cannot be read
    # because it is either not present or invalidly formatted"); the same blank line in --pred was fine
    gt = {1001: {t: A for t in range(3)}}
    mots_files(tmp_path / "gt", gt)
    mots_files(tmp_path / "pred", {5: gt[1001]})
    text = (tmp_path / "gt" / "0000.txt").read_text()
    (tmp_path / "gt" / "0000.txt").write_text(text.replace(" ", "\t", 3) + "\n\n")
    car = mots_metrics(tmp_path / "gt", tmp_path / "pred", classes=("car",))["car"]
    assert car == pytest.approx({"HOTA": 1.0, "DetA": 1.0, "AssA": 1.0, "sMOTSA": 1.0, "MOTSA": 1.0, "IDF1": 1.0})


def test_write_kitti_mots_writes_what_trackeval_reads(tmp_path):
    mots_files(tmp_path / "gt", {1001: {t: A for t in range(3)}})
    frames = [SegmentedFrame(t, label_map((4, A)).astype(np.uint32)) for t in range(3)]
    write_kitti_mots(tmp_path / "pred" / "0000.txt", frames)
    assert mots_metrics(tmp_path / "gt", tmp_path / "pred", classes=("car",))["car"]["HOTA"] == pytest.approx(1.0)


def test_unsupervised_matching_counts_the_empty_proposals_as_davis2017_evaluation_does():
    # One proposal, two objects; object 2 (B) is visible on frame 0 only. The proposal is B on frame 0 and
    # half of A on frame 1: J(p, A) = [0, 1/2], J(p, B) = [1, 0]; an empty proposal gives J(∅, A) = [0, 0],
    # J(∅, B) = [0, 1] (both empty on frame 1). Giving the proposal to B (its best object) totals 1/2;
    # the official matching, over the proposals padded with empty ones, gives it to A: 1/4 + 1/2.
    half_a = A.copy()
    half_a[6:] = False
    gts = [label_map((1, A), (2, B)), label_map((1, A))]
    preds = [label_map((1, B)), label_map((1, half_a))]
    scores = evaluate_unsupervised_sequence(preds, gts, "seq")
    assert [s.j for s in scores] == [[0.0, 0.5], [0.0, 1.0]]


def test_unsupervised_objects_are_those_of_the_first_ground_truth_frame():
    # davis2017-evaluation scores ids 1..K, K the largest id of the first annotated frame (void read as 0)
    first = label_map((1, A))
    first[30:, 30:] = 255
    gts = [first, label_map((1, A), (2, B))]
    scores = evaluate_unsupervised_sequence([label_map((1, A))] * 2, gts, "seq")
    assert [s.object_id for s in scores] == [1] and scores[0].j == [1.0, 1.0]


def test_unsupervised_leaves_void_pixels_out_as_davis2017_evaluation_does():
    # davis2017-evaluation's unsupervised task passes the ground truth's 255 pixels as void to J and F: a
    # proposal covering them is neither right nor wrong there. Object 1 is A (64 pixels); B (100 pixels) is
    # void; the one proposal is A plus B. Without B, proposal and object are the same: J = F = 1. (Read as
    # background, B would give J = 64/164 and an extra, unmatched boundary.)
    truth = label_map((1, A), (255, B))
    scores = evaluate_unsupervised_sequence([label_map((1, A | B))], [truth], "seq")
    assert scores[0].j == [1.0] and scores[0].f == [1.0]
    # the void pixels are left out of both masks: a proposal of B alone is an empty proposal (J = F = 0)
    scores = evaluate_unsupervised_sequence([label_map((1, B))], [truth], "seq")
    assert scores[0].j == [0.0] and scores[0].f == [0.0]


def test_mots_leaves_out_a_class_neither_annotated_nor_predicted(tmp_path):
    gt = {1001: {t: A for t in range(3)}}            # cars only (class 1 in the KITTI-MOTS ids)
    mots_files(tmp_path / "gt", gt)
    mots_files(tmp_path / "pred", {5: gt[1001]})
    results = mots_metrics(tmp_path / "gt", tmp_path / "pred")
    assert list(results) == ["car"] and results["car"]["HOTA"] == pytest.approx(1.0)


def test_vis_refuses_results_of_the_wrong_length_or_size_instead_of_scoring_them():
    # three frames; a result with one segmentation was cut to one frame by the IoU's zip and scored AP 1, and
    # a mask at twice the resolution met nothing and scored 0, without a word
    gt = {"videos": [{"id": 1, "height": 40, "width": 40, "length": 3}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": [rle(A)] * 3}]}
    good = {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [rle(A)] * 3}
    assert vis_average_precision(gt, [good])["AP"] == pytest.approx(1.0)
    big = np.zeros((80, 80), bool)
    big[4:20, 4:20] = True
    for change, message in (({"segmentations": [rle(A)]}, "1 segmentations, but the video has 3 frames"),
                            ({"segmentations": [rle(big)] * 3}, "80x80 pixels, but the video is 40x40"),
                            ({"score": None}, "'score' must be a number"),
                            ({"video_id": "1"}, "video_id '1' is not a video")):
        with pytest.raises(UserError, match=message):
            vis_average_precision(gt, [good, {**good, **change}])
    with pytest.raises(UserError, match="result 0 has no 'segmentations'"):
        vis_average_precision(gt, [{"video_id": 1, "category_id": 1, "score": 0.5}])
    # ground truth without annotations was a KeyError
    with pytest.raises(UserError, match="lists of 'categories' and 'annotations'"):
        vis_average_precision({k: v for k, v in gt.items() if k != "annotations"}, [good])
    # without 'length' the ground truth's own segmentations give the number of frames
    del gt["videos"][0]["length"]
    with pytest.raises(UserError, match="result 0 \\(video_id 1\\): 2 segmentations, but the video has 3 frames"):
        vis_average_precision(gt, [{**good, "segmentations": [rle(A), None]}])


def test_mots_bad_files_are_one_line_errors_naming_file_and_line(tmp_path):
    # each was a traceback (ValueError from int(), trackeval's exceptions, an AssertionError for another size)
    gt = {1001: {t: A for t in range(3)}}
    mots_files(tmp_path / "gt", gt)
    good = (tmp_path / "gt" / "0000.txt").read_text().splitlines()
    other_size = rle(np.pad(A, ((0, 40), (0, 40))))["counts"]
    for name, lines, message in (
            ("columns", [line.rsplit(" ", 1)[0] for line in good], "0000.txt, line 1: expected 'frame track_id"),
            ("frame", ["x" + good[0][1:]], "line 1: expected 'frame track_id class_id height width rle'"),
            ("size", [f"0 5 1 80 80 {other_size}"], "frame 0 has a mask of 80x80 pixels, but the ground truth's "
                                                     "images are 40x40"),
            ("overlap", [good[0], good[0].replace(" 1001 ", " 7 ")], "overlapping masks")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0000.txt").write_text("\n".join(lines) + "\n")
        with pytest.raises(UserError, match=message):
            mots_metrics(tmp_path / "gt", tmp_path / name, classes=("car",))
    # blank lines (a file ending in an empty line, an empty prediction written as one newline) are no error
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "0000.txt").write_text("\n".join(good[:1]) + "\n\n")
    assert mots_metrics(tmp_path / "gt", tmp_path / "blank", classes=("car",))["car"]["DetA"] == pytest.approx(1 / 3)


def test_mots_predictions_of_classes_kitti_mots_does_not_score_are_named_not_dropped_silently(tmp_path, capsys):
    # trackeval leaves class ids other than 1 (car) and 2 (pedestrian) out: a tracker counting classes from 0
    # scored 0 with no word
    gt = {1001: {t: A for t in range(4)}}
    mots_files(tmp_path / "gt", gt)
    mots_files(tmp_path / "zero-based", {5: gt[1001]}, cls=0)
    with pytest.raises(UserError, match=r"--pred .*zero-based: no prediction has a class KITTI-MOTS scores .*"
                                        r"0000.txt: class id\(s\) 0 in 4 row\(s\).*adds 1"):
        mots_metrics(tmp_path / "gt", tmp_path / "zero-based", classes=("car",))
    # some rows of another class: scored without them, and a warning names the file and the classes
    lines = (tmp_path / "gt" / "0000.txt").read_text().splitlines()
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "0000.txt").write_text("\n".join(
        [line.replace(" 1001 1 ", " 5 1 ") for line in lines[:2]] + [line.replace(" 1001 1 ", " 5 3 ") for line in
                                                                       lines[2:]]) + "\n")
    capsys.readouterr()
    car = mots_metrics(tmp_path / "gt", tmp_path / "mixed", classes=("car",))["car"]
    assert car["DetA"] == pytest.approx(0.5)
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: --pred ") and "mixed/0000.txt: 2 row(s) of class id(s) 3 are not scored" in err
    assert "\n" not in err


def test_mots_folders_that_do_not_fit_say_what_to_give(tmp_path):
    # A KITTI-MOTS download's instances_txt/ holds all 21 training sequences; a run of the validation ones was
    # refused with "no 0000.txt (predictions for every ground-truth sequence)" and no way forward. The file of one
    # sequence, or the instances/ PNG folder, as --gt was "no KITTI-MOTS <sequence>.txt files".
    track = {t: A for t in range(3)}
    mots_files(tmp_path / "instances_txt", {1001: track})
    (tmp_path / "instances_txt" / "0002.txt").write_text((tmp_path / "instances_txt" / "0000.txt").read_text())
    (tmp_path / "instances_txt" / "0006.txt").write_text((tmp_path / "instances_txt" / "0000.txt").read_text())
    mots_files(tmp_path / "tracker_txts", {3: track})
    (tmp_path / "tracker_txts" / "0000.txt").rename(tmp_path / "tracker_txts" / "0002.txt")
    with pytest.raises(UserError, match=r"--pred .*tracker_txts: no 0000.txt, 0006.txt \(2 of the 3 sequences of --gt "
                                        r".*\).*vosrt run PKG --source <the sequence's frames> --mots .*0000.txt.*"
                                        r"only the sequences to score"):
        mots_metrics(tmp_path / "instances_txt", tmp_path / "tracker_txts")
    with pytest.raises(UserError, match=r"--gt .*0002.txt is a file: give the folder of the <sequence>.txt files"):
        mots_metrics(tmp_path / "instances_txt" / "0002.txt", tmp_path / "tracker_txts")
    with pytest.raises(UserError, match=r"--pred .*0002.txt is a file: give the folder of the <sequence>.txt files"):
        mots_metrics(tmp_path / "instances_txt", tmp_path / "tracker_txts" / "0002.txt")
    (tmp_path / "instances" / "0002").mkdir(parents=True)
    (tmp_path / "instances" / "0002" / "000000.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"--gt .*instances: no KITTI-MOTS <sequence>.txt files.*instances_txt"):
        mots_metrics(tmp_path / "instances", tmp_path / "tracker_txts")


def test_rle_counts_that_do_not_cover_the_mask_are_refused_naming_file_and_line_not_scored_or_hung(tmp_path):
    # pycocotools trusts an RLE's runs to cover height x width pixels: runs of a smaller mask were scored as some
    # other mask, and runs of a larger one (a mask encoded at another resolution under the video's 'size') made
    # its IoU loop without end, so `vosrt eval` never returned
    from pycocotools import mask as mask_utils

    def counts(mask):
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()

    small, large = counts(A[:20]), counts(np.pad(A, ((0, 40), (0, 0))))
    gt = {1001: {t: A for t in range(2)}}
    mots_files(tmp_path / "gt", gt)
    for name, rle_text, message in (("junk", "!!!!", "characters outside '0'..'o'"),
                                    ("cut", counts(A)[:-1] + "a", "ends inside a run length"),
                                    ("small", small, "runs cover 800 pixels, but a mask of 40x40 has 1600"),
                                    ("large", large, "runs cover 3200 pixels, but a mask of 40x40 has 1600")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0000.txt").write_text(f"0 5 1 40 40 {counts(A)}\n1 5 1 40 40 {rle_text}\n")
        with pytest.raises(UserError, match=rf"--pred .*{name}/0000.txt, line 2: .*{message}"):
            mots_metrics(tmp_path / "gt", tmp_path / name, classes=("car",))
    video = {"videos": [{"id": 1, "height": 40, "width": 40, "length": 2}], "categories": [{"id": 1}],
             "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": [rle(A)] * 2}]}
    for rle_counts, message in ((small, "runs cover 800 pixels"), ([700, 1000], "runs cover 1700 pixels"),
                                ([1600, -4, 4], "negative run length"), (large, "runs cover 3200 pixels")):
        results = [{"video_id": 1, "category_id": 1, "score": 0.9,
                    "segmentations": [rle(A), {"size": [40, 40], "counts": rle_counts}]}]
        with pytest.raises(UserError, match=rf"results: result 0 \(video_id 1\), frame 1: .*{message}"):
            vis_average_precision(video, results)
    # well-formed RLEs, compressed and not, of empty, full and partial masks pass
    full = {"size": [40, 40], "counts": [0, 1600]}
    results = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [rle(A), {"size": [40, 40], "counts": [1600]}]},
               {"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [full, rle(np.zeros((40, 40), bool))]}]
    assert vis_average_precision(video, results) == pytest.approx(
        {"AP": 0.1, "AP50": 1.0, "AP75": 0.0, "AR1": 0.1, "AR10": 0.1})   # IoU 64 / 128 = 0.5: a match at 0.5 only


def test_vis_an_empty_list_of_polygons_is_an_absent_frame_as_the_youtube_vis_api_reads_it():
    # the API's `if a:` / `if d and g` read [] as no mask on that frame; here pycocotools raised an IndexError
    polygon = [[2, 2, 10, 2, 10, 10, 2, 10]]           # A's square, 8x8 pixels, as a polygon
    gt = {"videos": [{"id": 1, "height": 40, "width": 40, "length": 3}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": [polygon, [], None]}]}
    results = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [rle(A), None, []]}]
    assert vis_average_precision(gt, results) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR1": 1.0,
                                                                "AR10": 1.0})
    results[0]["segmentations"][1] = rle(A)             # a mask where the ground truth has none: IoU 64 / 128
    assert vis_average_precision(gt, results)["AP75"] == pytest.approx(0.0)


def test_an_exact_tie_in_the_unsupervised_matching_is_broken_as_davis2017_evaluation_breaks_it():
    # Proposals 1 and 2 give object 2 the same J&F (J 0.2 and F 54/55, against J 10/55 and F 1): the matching took
    # the other one than davis2017-evaluation's scipy linear_sum_assignment, so J-Mean and F-Mean differed from its
    # (0.205263 / 0.960297 against 0.196172 / 0.969388) at the same J&F
    pytest.importorskip("scipy")
    from vosrt.sdk.metrics import region_similarity

    gt = np.array([[2, 0, 2, 2, 2, 1], [1, 1, 0, 1, 0, 0], [2, 0, 0, 2, 0, 2], [0, 1, 2, 0, 0, 2],
                   [2, 2, 0, 2, 0, 2], [1, 2, 2, 1, 2, 2]], np.uint8)
    pred = np.array([[3, 3, 3, 0, 2, 0], [3, 3, 2, 1, 2, 2], [3, 1, 0, 3, 2, 3], [3, 3, 2, 3, 3, 2],
                     [3, 2, 1, 3, 0, 1], [3, 1, 3, 2, 1, 1]], np.uint8)
    scores = evaluate_unsupervised_sequence([pred], [gt], "tie")
    void = np.zeros(gt.shape, bool)
    assert scores[1].j == [region_similarity(pred == 2, gt == 2, void)]   # davis2017-evaluation: proposal 2
    summary = summarize(scores)
    assert summary["J"] == pytest.approx(0.196172, abs=1e-6) and summary["F"] == pytest.approx(0.969388, abs=1e-6)


def test_a_mots_prediction_numbered_far_past_the_ground_truth_is_refused_before_scoring(tmp_path):
    # trackeval keeps a list per frame up to the sequence's last: a 76-byte prediction naming frame 300000000 took
    # about 7 GB before anything was said
    mots_files(tmp_path / "gt", {1001: {t: A for t in range(4)}})
    mots_files(tmp_path / "pred", {5: {300_000_000: A}})
    with pytest.raises(UserError, match=r"frame 300000000 is more than 100000 frames past the ground truth's last "
                                        r"annotated frame 3"):
        mots_metrics(tmp_path / "gt", tmp_path / "pred", classes=("car",))


def _evidence(area, category, categories=10, votes=None):
    """An InstanceSegmenter frame's details of a track: ``area`` 1/4-scale pixels, whose log-probabilities sum
    highest for ``category``, ``votes`` per category (default: all for ``category``)."""
    log_sum = np.full(categories, -5.0 * area)
    log_sum[category - 1] = -1.0 * area
    votes = np.bincount([category - 1], minlength=categories) * area if votes is None else np.asarray(votes)
    return {"area": area, "log_prob_sum": log_sum, "votes": votes}


def test_vis_writer_scores_and_categorises_tracks_as_the_published_output_does():
    # the score was the mean of the frames' best category probability, the category the most frequent per-frame
    # one: a large object scored 0.517 against the published 1.0, a small one 0.91 against 0.102, and an object
    # came out as category 9 where the published output (argmax of its summed category logits) says 5
    from vosrt.sdk.instance_metrics import VisWriter

    writer = VisWriter(None, 3)
    for t in range(4):
        big = dict(_evidence(80 if t < 3 else 20, 5), score=0.5, category=9 if t else 5)   # per frame: 9, 9, 9, 5
        small = dict(_evidence(13, 2), score=0.9, category=2)
        writer(t, f"{t:05d}", None, label_map((1, A), (2, C)), {1: big, 2: small})
    entries = {e["category_id"]: e for e in writer.results()}
    assert set(entries) == {5, 2}
    assert entries[5]["score"] == 1.0 and entries[2]["score"] == pytest.approx(52 / 260)
    # without the session's evidence (objects from elsewhere) the per-frame rule stands
    writer = VisWriter(None, 3)
    for t in range(4):
        writer(t, f"{t:05d}", None, label_map((1, A)), {1: {"score": 0.5, "category": 9 if t else 5}})
    assert [(e["category_id"], e["score"]) for e in writer.results()] == [(9, 0.5)]


def test_vis_writer_keeps_the_tracks_that_live_longest_as_the_published_output_does():
    from vosrt.sdk.instance_metrics import VisWriter

    writer = VisWriter(None, 3, max_tracks=2)
    lives = {1: (0, 1), 2: (0, 5), 3: (2, 5), 4: (1, 5)}   # track: first, last frame; lifetimes 1, 5, 3, 4
    for t in range(6):
        present = [(k, square(2 + 9 * (k - 1), 2, 6)) for k, (a, b) in lives.items() if a <= t <= b]
        writer(t, f"{t:05d}", None, label_map(*present), {k: dict(_evidence(9, 1)) for k, _ in present})
    entries = writer.results()
    assert len(entries) == 2
    kept = [[s is not None for s in e["segmentations"]] for e in entries]
    assert kept == [[True] * 6, [False, True, True, True, True, True]]   # tracks 2 and 4, in track order
    assert [e["score"] for e in entries] == [1.0, pytest.approx(5 / 6)]
    with pytest.raises(UserError, match=r"--vis-max-tracks: expected a positive whole number, got 0"):
        VisWriter(None, 3, max_tracks=0)


def test_mots_writer_gives_each_track_the_class_most_of_its_pixels_vote_for(tmp_path, capsys):
    # each frame took its clip's category: a track was written as car on frames 0-7 and pedestrian on 8-19 (a
    # class switch within one track), where the published output gives it the class of most of its pixels
    from vosrt.sdk.instance_metrics import MotsWriter

    writer = MotsWriter(tmp_path / "0001.txt")
    for t in range(20):
        car = t < 8
        one = dict(_evidence(30 if car else 10, 1 if car else 2, categories=2), category=1 if car else 2)
        two = dict(_evidence(5, 2, categories=2, votes=[1, 4]), category=1)
        writer(t, f"{t:06d}", None, label_map((1, A), (2, C)), {1: one, 2: two})
    writer.close()
    rows = [line.split(" ")[:3] for line in (tmp_path / "0001.txt").read_text().splitlines()]
    assert len(rows) == 40
    assert {cls for _, track, cls in rows if track == "1"} == {"1"}    # 240 votes for car, 120 for pedestrian
    assert {cls for _, track, cls in rows if track == "2"} == {"2"}
    assert "no KITTI-MOTS class" not in capsys.readouterr().err
    assert not list(tmp_path.glob(".*"))                                  # no hidden file left behind
    # a model category that wins a track's votes but is no KITTI-MOTS class is said once, at the end
    writer = MotsWriter(tmp_path / "0002.txt")
    writer(0, "000000", None, label_map((1, A)), {1: dict(_evidence(9, 3, categories=3), category=1)})
    writer.close()
    assert "the model's categories [3] are no KITTI-MOTS class" in capsys.readouterr().err
    assert (tmp_path / "0002.txt").read_text().split(" ")[2] == "3"


def test_a_ctrl_c_while_the_mots_file_is_finished_leaves_it_for_another_close(tmp_path):
    # close() set itself done before rewriting the classes: a Ctrl-C there lost the --mots file
    from interrupts import ctrl_c_at
    from vosrt.sdk.instance_metrics import MotsWriter

    writer = MotsWriter(tmp_path / "0003.txt")
    for t in range(3):
        writer(t, f"{t:06d}", None, label_map((1, A)), {1: dict(_evidence(9, 2, categories=2), category=1)})
    with pytest.raises(KeyboardInterrupt), ctrl_c_at(MotsWriter._rewrite, "os.replace(") as fired:
        writer.close()
    assert fired and not (tmp_path / "0003.txt").exists()
    writer.close()
    assert [line.split(" ")[2] for line in (tmp_path / "0003.txt").read_text().splitlines()] == ["2"] * 3
    assert not list(tmp_path.glob(".*"))


def test_the_published_kitti_mots_post_processing_leaves_out_small_sparse_short_and_broken_tracks(tmp_path, capsys):
    # STEm-Seg's output generator filters its KITTI-MOTS results when it saves them (kitti_mots_postprocessing.py);
    # the writer wrote every detection
    from vosrt.sdk.instance_metrics import KITTI_MOTS_FILTERS, MotsWriter

    def square(labels, track, top, left, side):
        labels[top:top + side, left:left + side] = track

    def ring(labels, track, top, left, side):      # 4 * (side - 1) pixels in a side x side box
        labels[top, left:left + side] = labels[top + side - 1, left:left + side] = track
        labels[top:top + side, left] = labels[top:top + side, left + side - 1] = track

    # track: (class, frames, shape drawn on each)
    plan = {1: (1, range(20), lambda l: square(l, 1, 0, 0, 13)),              # 169 px: a car that stays
            2: (1, range(20), lambda l: square(l, 2, 0, 20, 12)),             # 144 px < 150: left out
            3: (1, range(20), lambda l: ring(l, 3, 0, 40, 50)),               # 196 px filling 0.08 of its box
            4: (2, range(9), lambda l: square(l, 4, 60, 0, 16)),              # 9 detections < 10: left out
            5: (1, range(0, 20, 2), lambda l: square(l, 5, 60, 20, 13)),      # 9 breaks in 10 > 0.3: left out
            6: (2, [*range(6), *range(8, 14)], lambda l: square(l, 6, 60, 40, 16)),   # 1 break in 12: stays
            7: (3, range(20), lambda l: square(l, 7, 80, 0, 16))}             # no KITTI-MOTS class: left out
    for filters, name in ((KITTI_MOTS_FILTERS, "filtered"), (None, "raw")):
        writer = MotsWriter(tmp_path / f"{name}.txt", filters=filters)
        for t in range(20):
            labels, objects = np.zeros((100, 100), np.uint8), {}
            for track, (cls, frames, draw) in plan.items():
                if t in frames:
                    draw(labels)
                    objects[track] = {"category": cls}
            writer(t, f"{t:06d}", None, labels, objects)
        writer.close()
    kept = {}
    for line in (tmp_path / "filtered.txt").read_text().splitlines():
        number, track, cls = line.split()[:3]
        kept.setdefault(int(track), []).append((int(number), int(cls)))
    assert sorted(kept) == [1, 6]
    assert kept[1] == [(t, 1) for t in range(20)] and [t for t, _ in kept[6]] == list(plan[6][1])
    total = sum(len(frames) for _, frames, _ in plan.values())
    assert len((tmp_path / "raw.txt").read_text().splitlines()) == total
    assert f"left out {total - 32} of {total} detections" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*"))


def test_write_kitti_mots_keeps_its_class_for_objects_that_name_none(tmp_path):
    from vosrt.sdk.instance_metrics import write_kitti_mots

    frames = [SegmentedFrame(t, label_map((1, A)), None, {1: {"score": 0.9}}) for t in range(2)]
    write_kitti_mots(tmp_path / "0004.txt", frames, class_id=2)
    assert [line.split(" ")[2] for line in (tmp_path / "0004.txt").read_text().splitlines()] == ["2", "2"]
