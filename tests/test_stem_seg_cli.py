"""`vosrt run` on a stem-seg package (track-id PNGs, overlay video) and `vosrt eval --task unsupervised|vis|mots`."""
import json

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
    assert rows[-1] == "all,mean,1.000000,1.000000,1.000000"


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
