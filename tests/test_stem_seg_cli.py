"""`vosrt run` on a stem-seg package (track-id PNGs, overlay video) and `vosrt eval --task unsupervised|vis|mots`."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vosrt.cli import main
from vosrt.sdk.masks import read_label_png, write_label_png

from sdk_packages import colour_embedding_package
from media import video_frames
from test_stem_seg_session import scene


@pytest.fixture(scope="module")
def colour_package(tmp_path_factory):
    return colour_embedding_package(tmp_path_factory.mktemp("colour") / "pkg")


def test_run_writes_track_id_pngs_and_an_overlay_video(colour_package, tmp_path):
    frames, masks = scene(13, {"red": (0, 12, 4, 0, 2), "green": (6, 12, 40, 16, 0)})
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / "frames" / f"{t:05d}.png"), frame[:, :, ::-1])     # BGR on disk
    code = main(["run", str(colour_package), "--source", str(tmp_path / "frames"), "--out", str(tmp_path / "out"),
                 "--video", str(tmp_path / "overlay.avi"), "--no-progress", "--overlap", "6"])
    assert code == 0
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(13)]
    for t, png in enumerate(pngs):
        labels = read_label_png(png)
        assert np.array_equal(labels == 1, masks["red"][t])
        assert np.array_equal(labels == 2, masks["green"][t] if t >= 6 else np.zeros((64, 64), bool))
    assert video_frames(tmp_path / "overlay.avi") == 13


def _write_frames(folder, frames):
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{t:05d}.png"), frame[:, :, ::-1])     # BGR on disk


def test_run_writes_vis_and_mots_results_that_eval_scores(colour_package, tmp_path, capsys):
    # `vosrt eval --task vis|mots` had no command that wrote its inputs: an application had to call the
    # instance_metrics functions itself. Two videos into one results JSON, one KITTI-MOTS file per sequence.
    pytest.importorskip("pycocotools")
    pytest.importorskip("trackeval")
    from pycocotools import mask as mask_utils

    def rle(mask):
        out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": out["size"], "counts": out["counts"].decode()}

    videos = {3: scene(13, {"red": (0, 12, 4, 0, 2), "green": (6, 12, 40, 16, 0)}),
              4: scene(9, {"green": (0, 12, 8, 28, 0)})}
    gt = {"videos": [], "categories": [{"id": 1, "name": "thing"}], "annotations": []}
    (tmp_path / "gt_mots").mkdir()
    for video_id, (frames, masks) in videos.items():
        _write_frames(tmp_path / f"v{video_id}", frames)
        gt["videos"].append({"id": video_id, "height": 64, "width": 64, "length": len(frames)})
        lines = []
        for k, name in enumerate(masks, 1):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "video_id": video_id, "category_id": 1,
                                      "segmentations": [rle(m) if m is not None else None for m in masks[name]]})
            lines += [f"{t} {1000 + k} 1 64 64 {rle(m)['counts']}" for t, m in enumerate(masks[name]) if m is not None]
        (tmp_path / "gt_mots" / f"{video_id:04d}.txt").write_text("\n".join(sorted(lines, key=lambda l: int(l.split()[0]))) + "\n")
        code = main(["run", str(colour_package), "--source", str(tmp_path / f"v{video_id}"), "--no-progress",
                     "--overlap", "6", "--vis", str(tmp_path / "results.json"), "--video-id", str(video_id),
                     "--mots", str(tmp_path / "mots" / f"{video_id:04d}.txt"), "--mots-filter", "none"])
        assert code == 0
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(e["video_id"] for e in results) == [3, 3, 4]          # both videos kept in one file
    assert all(len(e["segmentations"]) == len(videos[e["video_id"]][0]) for e in results)
    capsys.readouterr()
    assert main(["eval", "--task", "vis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "   AP   1.000" in out and "AR10   1.000" in out, out
    assert main(["eval", "--task", "mots", "--gt", str(tmp_path / "gt_mots"), "--pred", str(tmp_path / "mots")]) == 0
    rows = (tmp_path / "mots" / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("car,1.000000")                          # HOTA 1: every track found and kept
    # the published post-processing, a stem-seg package's default, leaves out these 64x64 scenes' small objects
    capsys.readouterr()
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v4"), "--no-progress", "--overlap", "6",
                 "--mots", str(tmp_path / "filtered.txt")]) == 0
    assert "the KITTI-MOTS post-processing left out 9 of 9 detections" in capsys.readouterr().err
    assert (tmp_path / "filtered.txt").read_text() == ""

    # a second run of video 3 replaces its entries, not adds to them
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v3"), "--no-progress", "--max-frames", "8",
                 "--vis", str(tmp_path / "results.json"), "--video-id", "3"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert sorted(e["video_id"] for e in again) == [3, 3, 4]
    # every frame of the video has its slot, those after --max-frames null
    assert all(len(e["segmentations"]) == 13 and e["segmentations"][8:] == [None] * 5 for e in again if e["video_id"] == 3)
    assert [e for e in again if e["video_id"] == 4] == [e for e in results if e["video_id"] == 4]


def _vis_truth(video_id, masks, length, size=64):
    from pycocotools import mask as mask_utils

    def rle(mask):
        out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": out["size"], "counts": out["counts"].decode()}

    return {"videos": [{"id": video_id, "height": size, "width": size, "length": length}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": k, "video_id": video_id, "category_id": 1,
                             "segmentations": [rle(m) if m is not None else None for m in masks[name]]}
                            for k, name in enumerate(masks, 1)]}


def test_vis_keeps_a_null_slot_for_an_unreadable_frame_so_eval_scores_the_video(colour_package, tmp_path, capsys):
    # A corrupt image in a YouTube-VIS video folder was skipped and the video's segmentations came out one
    # short (and every later frame one slot early): vosrt eval refused the file and the only advice was to
    # repair a dataset frame. The frame keeps its slot, as null (no prediction there).
    pytest.importorskip("pycocotools")
    frames, masks = scene(11, {"red": (0, 10, 4, 0, 2)})
    _write_frames(tmp_path / "v", frames)
    (tmp_path / "v" / "00004.png").write_bytes(b"not an image")
    (tmp_path / "gt.json").write_text(json.dumps(_vis_truth(5, masks, 11)))
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v"), "--no-progress", "--overlap", "6",
                 "--vis", str(tmp_path / "results.json"), "--video-id", "5"]) == 0
    assert "00004" in capsys.readouterr().err
    [entry] = json.loads((tmp_path / "results.json").read_text())
    assert len(entry["segmentations"]) == 11
    assert entry["segmentations"][4] is None
    assert all(entry["segmentations"][t] is not None for t in range(11) if t != 4)
    assert main(["eval", "--task", "vis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "AP50   1.000" in out, out


def test_vis_finds_the_video_id_and_its_frames_in_the_dataset_json(colour_package, tmp_path, capsys):
    # A YouTube-VIS video folder (every 5th frame, one missing): --videos valid.json looks the video up by the
    # folder's name (its id had to be found by hand for --video-id) and gives every listed frame its slot.
    pytest.importorskip("pycocotools")
    frames, masks = scene(8, {"red": (0, 7, 4, 0, 2)})
    folder = tmp_path / "valid" / "JPEGImages" / "0b6db1c6fd"
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        if t != 6:   # a listed frame that is not in the folder
            cv2.imwrite(str(folder / f"{5 * t:05d}.png"), frame[:, :, ::-1])
    listed = [f"0b6db1c6fd/{5 * t:05d}.jpg" for t in range(8)]
    dataset = {"videos": [{"id": 2, "file_names": ["aaaa/00000.jpg"], "length": 1, "height": 64, "width": 64},
                          {"id": 7, "file_names": listed, "length": 8, "height": 64, "width": 64}]}
    (tmp_path / "valid.json").write_text(json.dumps(dataset))
    assert main(["run", str(colour_package), "--source", str(folder), "--no-progress", "--overlap", "6",
                 "--vis", str(tmp_path / "results.json"), "--videos", str(tmp_path / "valid.json")]) == 0
    assert "video 7's tracks" in capsys.readouterr().out
    [entry] = json.loads((tmp_path / "results.json").read_text())
    assert entry["video_id"] == 7 and len(entry["segmentations"]) == 8 and entry["segmentations"][6] is None
    truth = _vis_truth(7, {"red": [m if t != 6 else None for t, m in enumerate(masks["red"])]}, 8)
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    assert main(["eval", "--task", "vis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "results.json")]) == 0
    assert "AP50   1.000" in capsys.readouterr().out
    (folder / "99999.png").write_bytes((folder / "00000.png").read_bytes())   # a frame the dataset does not list
    assert main(["run", str(colour_package), "--source", str(folder), "--no-progress", "--vis",
                 str(tmp_path / "results.json"), "--videos", str(tmp_path / "valid.json")]) == 2
    assert "holds 1 image(s) it does not list (99999)" in capsys.readouterr().err


def test_vis_note_tells_skipped_frames_from_those_after_max_frames(colour_package, tmp_path, capsys):
    # it called every null slot skipped: "the 4 skipped frame(s) are null" for one unreadable frame and three
    # that --max-frames left out
    frames, _ = scene(8, {"red": (0, 7, 4, 0, 2)})
    folder = tmp_path / "JPEGImages" / "0b6db1c6fd"
    _write_frames(folder, frames)
    (folder / "00002.png").write_bytes(b"not an image")
    listed = [f"0b6db1c6fd/{t:05d}.jpg" for t in range(8)]
    (tmp_path / "valid.json").write_text(json.dumps({"videos": [{"id": 3, "file_names": listed, "length": 8}]}))
    assert main(["run", str(colour_package), "--source", str(folder), "--no-progress", "--max-frames", "4",
                 "--vis", str(tmp_path / "results.json"), "--videos", str(tmp_path / "valid.json")]) == 0
    err = capsys.readouterr().err
    assert "the 4 frame(s) without a prediction (1 skipped, 3 after --max-frames) are null" in err, err


def test_vis_of_a_folder_with_max_frames_keeps_a_slot_for_every_frame_of_the_video(colour_package, tmp_path, capsys):
    # with --video-id (no --videos) the list had the --max-frames frames only: the official API's video IoU zips the
    # lists, so the ground truth's later frames were dropped and the run scored higher than its predictions
    frames, _ = scene(6, {"red": (0, 7, 4, 0, 2)})
    folder = tmp_path / "JPEGImages" / "vid"
    _write_frames(folder, frames)
    assert main(["run", str(colour_package), "--source", str(folder), "--no-progress", "--max-frames", "3",
                 "--vis", str(tmp_path / "results.json"), "--video-id", "1"]) == 0
    entries = json.loads((tmp_path / "results.json").read_text())
    assert entries and all(len(e["segmentations"]) == 6 and e["segmentations"][3:] == [None] * 3 for e in entries)
    assert "3 after --max-frames" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--vis", "r.json"], "--vis: needs the video's id in the dataset: --videos valid.json .* or --video-id N"),
    (["--vis", "r.json", "--videos", "dataset.json", "--video-id", "3"], "--video-id and --videos both name the video"),
    (["--videos", "dataset.json"], "--videos: .* give --vis JSON too"),
    (["--vis", "r.json", "--videos", "dataset.json"],
     r"--videos dataset.json: none of its 1 video\(s\) has its frames in a folder named 'v' .*e.g. other\)"),
    (["--vis", "r.json", "--videos", "not_results.json"], "--videos not_results.json: expected the dataset's"),
    (["--video-id", "2"], "--video-id: .* give --vis JSON too"),
    (["--mots-class", "2"], "--mots-class: .* give --mots TXT too"),
    (["--mots-filter", "none"], "--mots-filter: .* give --mots TXT too"),
    (["--vis", "r.txt", "--video-id", "1"], "--vis: .*r.txt: give a .json file name"),
    (["--mots", "m.json"], "--mots: .*m.json: give a .txt file name"),
    (["--vis", "not_results.json", "--video-id", "1"], "--vis: .*not a list of results entries"),
    (["--vis-categories", "1=5"], "--vis-categories: .* give --vis JSON too"),
    (["--vis", "r.json", "--video-id", "1", "--vis-categories", "1:5"],
     r"--vis-categories 1:5: expected MODEL=DATASET pairs .*got '1:5'"),
    (["--vis", "r.json", "--video-id", "1", "--vis-categories", "1=5,0=2"], r"got '0=2'"),
    (["--vis", "r.json", "--video-id", "1", "--vis-categories", "1=5,1=6"], "model category 1 is mapped twice"),
    (["--vis", "r.json", "--videos", "labelled.json", "--vis-categories", "1=9"],
     r"--vis-categories: category id\(s\) 9 are not among the categories of --videos labelled.json \(4, 5\)"),
])
def test_bad_result_file_flags_are_refused_before_the_run(colour_package, tmp_path, capsys, monkeypatch, flags, message):
    pytest.importorskip("pycocotools")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_results.json").write_text(json.dumps({"videos": []}))   # a ground truth, given by mistake
    (tmp_path / "dataset.json").write_text(json.dumps({"videos": [{"id": 3, "file_names": ["other/00000.jpg"]}]}))
    (tmp_path / "labelled.json").write_text(json.dumps({"videos": [{"id": 3, "file_names": ["v/00000.jpg"]}],
                                                        "categories": [{"id": 4}, {"id": 5}]}))
    frames, _ = scene(3, {"red": (0, 12, 4, 0, 2)})
    _write_frames(tmp_path / "v", frames)
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v"), "--no-progress", *flags]) == 2
    import re
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert json.loads((tmp_path / "not_results.json").read_text()) == {"videos": []}


def test_track_ids_beyond_255_survive_the_png_round_trip(tmp_path):
    labels = np.zeros((8, 8), np.uint32)
    labels[2:4, 2:4] = 300
    labels[5:, 5:] = 7
    write_label_png(tmp_path / "wide.png", labels)
    back = read_label_png(tmp_path / "wide.png")
    assert back.dtype == np.uint16 and np.array_equal(back, labels)


def _squares(*items, shape=(40, 40)):
    labels = np.zeros(shape, np.uint8)
    for label, top, left, size in items:
        labels[top:top + size, left:left + size] = label
    return labels


def test_eval_unsupervised_on_png_folders(tmp_path, capsys):
    for t in range(3):
        write_label_png(tmp_path / "gt" / "seq" / f"{t:05d}.png", _squares((1, 2, 2, 8), (2, 20, 20, 10)))
        # proposals: 9 = object 2 exactly, 4 = object 1 exactly, 6 = nothing
        write_label_png(tmp_path / "pred" / "seq" / f"{t:05d}.png", _squares((4, 2, 2, 8), (9, 20, 20, 10), (6, 32, 2, 4)))
    code = main(["eval", "--task", "unsupervised", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")])
    assert code == 0
    rows = (tmp_path / "pred" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "sequence,object,J,F,J&F,J-Recall,J-Decay,F-Recall,F-Decay"
    assert rows[-1] == "all,mean,1.000000,1.000000,1.000000,1.000000,0.000000,1.000000,0.000000"


def test_eval_unsupervised_names_the_objects_that_enter_after_the_first_frame(tmp_path, capsys):
    # the protocol scores the first frame's objects 1..K: object 2, entering on frame 1, was left out without a
    # word, and a prediction that never found it scored 1.0
    for t in range(3):
        write_label_png(tmp_path / "gt" / "seq" / f"{t:05d}.png",
                        _squares((1, 2, 2, 8), *([(2, 20, 20, 10)] if t else [])))
        write_label_png(tmp_path / "pred" / "seq" / f"{t:05d}.png", _squares((1, 2, 2, 8)))
    code = main(["eval", "--task", "unsupervised", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")])
    assert code == 0
    err = capsys.readouterr().err
    assert "object(s) 2 enter after the first ground-truth frame (00000.png, objects 1..1)" in err
    assert "not scored" in err


@pytest.mark.parametrize("annotations", ["missing", None])
def test_eval_vis_on_a_valid_split_without_annotations_says_where_it_is_scored(tmp_path, capsys, annotations):
    # YouTube-VIS and OVIS publish no ground truth for valid/test: their valid.json has videos and categories
    # but no (or null) annotations. The README's own example (--gt valid.json) then failed with "expected
    # 'videos' with 'id', 'height' and 'width', ... (TypeError: 'NoneType' object is not iterable)".
    gt = {"videos": [{"id": 1, "height": 40, "width": 40, "length": 2, "file_names": ["a/00000.jpg", "a/00005.jpg"]}],
          "categories": [{"id": 1, "name": "person"}]}
    if annotations != "missing":
        gt["annotations"] = annotations
    (tmp_path / "valid.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text("[]")
    assert main(["eval", "--task", "vis", "--gt", str(tmp_path / "valid.json"), "--pred", str(tmp_path / "results.json")]) == 2
    err = capsys.readouterr().err
    assert "valid.json has no annotations" in err and "evaluation server" in err, err


def test_eval_vis_and_mots_read_their_files(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    pytest.importorskip("trackeval")
    from pycocotools import mask as mask_utils

    def rle(labels, k):
        out = mask_utils.encode(np.asfortranarray((labels == k).astype(np.uint8)))
        return {"size": out["size"], "counts": out["counts"].decode()}
    frames = [_squares((1, 2, 2, 8), (2, 20, 20, 10)) for _ in range(2)]
    gt = {"videos": [{"id": 1, "height": 40, "width": 40}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": k, "video_id": 1, "category_id": 1, "segmentations": [rle(f, k) for f in frames]}
                          for k in (1, 2)]}
    results = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [rle(f, 1) for f in frames]}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    assert main(["eval", "--task", "vis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json")]) == 0
    out = capsys.readouterr().out
    assert "AP50   0.505" in out and "AR1   0.500" in out     # recall 1/2: 51 of the 101 recall points

    for folder, ids in (("gtm", (1001, 1002)), ("predm", (3, 4))):
        lines = [f"{t} {i} 1 40 40 {rle(f, k)['counts']}" for t, f in enumerate(frames) for k, i in zip((1, 2), ids)]
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "0007.txt").write_text("\n".join(lines) + "\n")
    assert main(["eval", "--task", "mots", "--gt", str(tmp_path / "gtm"), "--pred", str(tmp_path / "predm")]) == 0
    assert "car" in capsys.readouterr().out
    rows = (tmp_path / "predm" / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("car,1.000000")


def test_eval_vis_with_a_bad_file_is_a_user_error(tmp_path, capsys):
    (tmp_path / "gt.json").write_text("{not json")
    assert main(["eval", "--task", "vis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "gt.json")]) == 2
    assert "--gt" in capsys.readouterr().err


def test_eval_vis_names_the_file_of_a_malformed_result_and_warns_of_unknown_categories(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils

    labels = _squares((1, 2, 2, 8))
    segment = mask_utils.encode(np.asfortranarray((labels == 1).astype(np.uint8)))
    segment["counts"] = segment["counts"].decode()
    gt = {"videos": [{"id": 1, "height": 40, "width": 40, "length": 2}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": [segment] * 2}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([{"video_id": 1, "category_id": 1, "score": 0.9,
                                                    "segmentations": [segment] * 3}]))
    args = ["eval", "--task", "vis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json")]
    assert main(args) == 2
    assert f"error: --pred {tmp_path / 'res.json'}: result 0 (video_id 1): 3 segmentations" in capsys.readouterr().err
    (tmp_path / "res.json").write_text(json.dumps([{"video_id": 1, "category_id": 0, "score": 0.9,
                                                    "segmentations": [segment] * 2}]))
    assert main(args) == 0
    assert "category_id(s) 0, which the ground truth does not define" in capsys.readouterr().err


def test_demo_runs_a_stem_seg_package_and_scores_instances(colour_package, tmp_path, capsys):
    assert main(["demo", "--family", "stem-seg", "--package", str(colour_package), "--frames", "10",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "instances" in out and "J&F" in out
    assert len(list((tmp_path / "masks").glob("*.png"))) == 10 and (tmp_path / "overlay.mp4").is_file()


def test_vis_of_a_video_file_longer_than_the_dataset_lists_warns_with_the_max_frames_fix(colour_package, tmp_path,
                                                                                       capsys):
    pytest.importorskip("pycocotools")
    frames, _ = scene(8, {"red": (0, 7, 4, 0, 2)})
    path = tmp_path / "0b6db1c6fd.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame[:, :, ::-1])
    writer.release()
    listed = [f"0b6db1c6fd/{t:05d}.jpg" for t in range(6)]   # the dataset's video has 6 frames, the file 8
    (tmp_path / "valid.json").write_text(json.dumps({"videos": [{"id": 4, "file_names": listed}]}))
    assert main(["run", str(colour_package), "--source", str(path), "--no-progress", "--overlap", "6",
                 "--vis", str(tmp_path / "results.json"), "--videos", str(tmp_path / "valid.json")]) == 0
    err = capsys.readouterr().err
    assert "2 frame(s) of --source" in err and "after the 6 that video 4 lists" in err and "--max-frames 6" in err
    [entry] = json.loads((tmp_path / "results.json").read_text())
    assert len(entry["segmentations"]) == 8 and all(s is not None for s in entry["segmentations"])
    assert main(["run", str(colour_package), "--source", str(path), "--no-progress", "--overlap", "6", "--max-frames",
                 "6", "--vis", str(tmp_path / "results.json"), "--videos", str(tmp_path / "valid.json")]) == 0
    assert "--max-frames" not in capsys.readouterr().err
    [entry] = json.loads((tmp_path / "results.json").read_text())
    assert len(entry["segmentations"]) == 6


def test_vis_categories_writes_the_dataset_s_category_ids(colour_package, tmp_path):
    # The model's categories could be renumbered in code only (VisWriter(categories=)); a model trained
    # with other category numbers than the dataset's wrote results scored against the wrong categories.
    pytest.importorskip("pycocotools")
    frames, _ = scene(6, {"red": (0, 5, 4, 0, 2), "green": (0, 5, 40, 16, 0)})
    _write_frames(tmp_path / "v", frames)
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v"), "--no-progress", "--overlap", "6",
                 "--vis", str(tmp_path / "results.json"), "--video-id", "2", "--vis-categories", "1=7"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 2 and {e["category_id"] for e in results} == {7}


def test_eval_unsupervised_says_when_it_scores_only_20_of_a_sequence_s_proposals(tmp_path, capsys):
    # davis2017-evaluation refuses a sequence with ids above 20; eval keeps the 20 largest proposals, which
    # changes the scores the official evaluation would give (or not give): it did so without a word
    for t in range(3):
        write_label_png(tmp_path / "gt" / "seq" / f"{t:05d}.png", _squares((1, 2, 2, 8)))
        write_label_png(tmp_path / "pred" / "seq" / f"{t:05d}.png", _squares((1, 2, 2, 8), (23, 30, 30, 2)))
        write_label_png(tmp_path / "few" / "seq" / f"{t:05d}.png", _squares((1, 2, 2, 8), (20, 30, 30, 2)))
    code = main(["eval", "--task", "unsupervised", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")])
    assert code == 0
    err = capsys.readouterr().err
    assert f"--pred {tmp_path / 'pred' / 'seq'}: ids up to 23 (2 in use)" in err
    assert "the 20 covering the most pixels are scored" in err
    code = main(["eval", "--task", "unsupervised", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "few")])
    assert code == 0
    assert "proposals" not in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
@pytest.mark.parametrize("flags", [["--mots", "/proc/tracks.txt"], ["--vis", "/proc/results.json", "--video-id", "1"]])
def test_a_result_file_in_a_folder_that_takes_no_file_is_refused_before_the_run(colour_package, tmp_path, capsys,
                                                                               flags):
    # --mots / --vis files are written when the stream ends: a folder where no file can be created (read-only,
    # no permission; /proc here, which refuses even root) ran the whole video, then died with a traceback from
    # tempfile.mkstemp and nothing written.
    pytest.importorskip("pycocotools")
    frames, _ = scene(3, {"red": (0, 2, 4, 0, 2)})
    _write_frames(tmp_path / "v", frames)
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v"), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert f"error: {flags[0]}: cannot write files in /proc" in err, err
    assert " frames in " not in err


@pytest.mark.parametrize("writer", ["mots", "vis"])
def test_a_result_file_that_cannot_be_written_at_the_end_is_a_user_error(tmp_path, writer):
    # The folder gone by the time the stream ends (a full disk reads alike): an OSError traceback, no flag named.
    pytest.importorskip("pycocotools")
    import shutil

    from vosrt.sdk.errors import UserError
    from vosrt.sdk.instance_metrics import MotsWriter, VisWriter

    folder = tmp_path / "results"
    sink = (MotsWriter(folder / "t.txt") if writer == "mots" else VisWriter(folder / "r.json", 1))
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 1
    sink(0, "00000", None, labels)
    shutil.rmtree(folder)
    with pytest.raises(UserError, match=f"--{writer}: cannot write {folder}"):
        sink.close()


def test_the_mots_file_is_written_as_frames_finish_and_renamed_at_the_end(tmp_path):
    # The lines were kept in memory until the stream ended: without bound on a camera (one line per instance
    # and frame). They go to a hidden file beside the result as each frame finishes; close() renames it.
    pytest.importorskip("pycocotools")
    from vosrt.sdk.instance_metrics import MotsWriter

    folder = tmp_path / "results"
    writer = MotsWriter(folder / "t.txt")
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 1
    for t in range(50):
        writer(t, f"{t:06d}", None, labels)
    (partial,) = folder.glob(".t.partial-*.txt")
    writer._file.flush()
    assert len(partial.read_text().splitlines()) == 50 and not (folder / "t.txt").exists()
    writer.close()
    lines = (folder / "t.txt").read_text().splitlines()
    assert len(lines) == 50 and lines[7].startswith("7 1 1 8 8 ") and list(folder.iterdir()) == [folder / "t.txt"]
    writer.close()   # once
    # a writer dropped without close() leaves nothing behind, and one that saw no frame writes an empty file
    dropped = MotsWriter(folder / "u.txt")
    dropped(0, "000000", None, labels)
    del dropped
    assert sorted(p.name for p in folder.iterdir()) == ["t.txt"]
    empty = MotsWriter(folder / "e.txt")
    empty.close()
    assert (folder / "e.txt").read_text() == ""


def test_run_with_overlap_0_says_that_no_track_is_linked_across_clips(colour_package, tmp_path, capsys):
    # With no frame shared by consecutive clips, every clip's instances take new ids (the red square is 1 on
    # frames 0..7 and another id on 8..15); the run said nothing of it.
    frames, _ = scene(16, {"red": (0, 15, 4, 0, 0)})
    _write_frames(tmp_path / "v", frames)
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v"), "--no-progress", "--overlap", "0",
                 "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "note: --overlap 0: consecutive clips share no frame, so no track is linked across clips" in err, err
    ids = [set(np.unique(read_label_png(tmp_path / "out" / f"{t:05d}.png")).tolist()) - {0} for t in (0, 15)]
    assert ids[0] != ids[1]                      # what the note says: the track did not keep its id
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v"), "--no-progress", "--overlap", "1"]) == 0
    assert "no track is linked" not in capsys.readouterr().err


def test_run_takes_the_clip_families_settings_as_flags_and_limits_the_vis_tracks(colour_package, tmp_path, capsys):
    # threshold, min_seediness, foreground_threshold, max_instances and link_iou were session settings that
    # `vosrt run` had no flag for ("unrecognized arguments: --threshold 0.6"); --vis wrote every track, where the
    # published YouTube-VIS output keeps the 10 that live longest
    frames, _ = scene(12, {"red": (0, 11, 4, 0, 0), "green": (4, 11, 40, 16, 0), "blue": (0, 5, 40, 40, 0)})
    _write_frames(tmp_path / "v", frames)
    args = ["run", str(colour_package), "--source", str(tmp_path / "v"), "--no-progress"]
    vis = ["--video-id", "1", "--vis"]
    assert main([*args, *vis, str(tmp_path / "all.json"), "--vis-max-tracks", "0"]) == 0
    assert main([*args, *vis, str(tmp_path / "two.json"), "--vis-max-tracks", "2"]) == 0
    everything, two = (json.loads((tmp_path / name).read_text()) for name in ("all.json", "two.json"))
    assert len(everything) == 3 and len(two) == 2
    lives = [sum(s is not None for s in e["segmentations"]) for e in two]
    assert sorted(lives) == [8, 12]                                 # blue (frames 0-5) is the one left out
    assert "wrote the 2 tracks that live longest of 3 (--vis-max-tracks 0 writes every one)" in capsys.readouterr().err
    # one instance per clip: a single track, whichever colour seeds first
    assert main([*args, "--out", str(tmp_path / "one"), "--max-instances", "1", "--link-iou", "0.5",
                 "--min-seediness", "0.5", "--foreground-threshold", "0.5"]) == 0
    found = [{int(i) for i in np.unique(read_label_png(p)) if i} for p in sorted((tmp_path / "one").glob("*.png"))]
    assert len(found) == 12 and all(len(ids) == 1 for ids in found)   # three objects in view, one instance a clip
    capsys.readouterr()
    assert main([*args, "--threshold", "0.6"]) == 2
    err = capsys.readouterr().err
    assert "--threshold: not a setting of stem-seg packages (they take --overlap, --min-seediness, " in err, err
    assert main([*args, "--min-seediness", "1.5"]) == 2
    assert "--min-seediness: expected a probability in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(["run", str(colour_package), "--source", str(tmp_path / "v"), "--vis-max-tracks", "2"]) == 2
    assert "--vis-max-tracks: limits the tracks of a --vis results file; give --vis JSON too" in capsys.readouterr().err


def test_the_vis_track_limit_is_stem_seg_s_only(tmp_path):
    # the default of 10 applied to every family: an stcn run given 12 objects wrote 10 of them, without a word
    import argparse

    from vosrt.sdk import families
    from vosrt.sdk.cli_run import VIS_MAX_TRACKS, _result_writers, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["pkg", "--source", "v", "--vis", str(tmp_path / "r.json"), "--video-id", "1"])
    args.vis_category_map = None
    limits = {name: _result_writers(args, None, families.get(name))[0].max_tracks for name in ("stcn", "3dc-seg", "stem-seg")}
    assert limits == {"stcn": None, "3dc-seg": None, "stem-seg": VIS_MAX_TRACKS}
    args.vis_max_tracks = 12
    assert _result_writers(args, None, families.get("stcn"))[0].max_tracks == 12
