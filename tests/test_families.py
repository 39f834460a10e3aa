"""The family table: a throwaway family registered in the table alone flows through every layer
(vosrt.sdk.load, stream, `vosrt run`, manifest checks, engine profiles), the proof that a new family is
one more entry; and the shipped rows stay consistent with the code that reads them."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import vosrt.sdk
from vosrt.cli import main as cli
from vosrt.sdk import UserError, families
from vosrt.sdk.letterbox import check_image
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.session import SegmentedFrame, Session
from vosrt.sdk.streaming import stream

TOY = "toy-brightness"
H, W = 32, 48


class ToySession(Session):
    """Segments bright pixels; each frame's object gets a new id from 300 on (ids that need 16 bits)."""

    label_dtype = np.uint16

    def __init__(self, backend, package, threshold: float = 0.5, color: str = "bgr"):
        super().__init__(backend, package, color)
        self.threshold = float(threshold)
        self.reset()

    def push(self, frame, mask=None, objects=None):
        self._refuse_mask(mask, objects)
        image = check_image(frame)
        box = self._letterbox(image.shape[:2])
        prob = self.backend.download(self.backend.run("brightness", {"image": box.image(image, self.color)})["prob"])
        prob = box.probabilities_back(prob[0])[0]
        self.index += 1
        labels = np.where(prob > self.threshold, 300 + self.index, 0).astype(self.label_dtype)
        return [SegmentedFrame(self.index, labels, prob)]

    def reset(self):
        self.index = -1

    @property
    def frames_in(self):
        return self.index + 1


@pytest.fixture
def toy_family():
    families.register(families.Family(
        name=TOY, task="toy: bright pixels", session=f"{__name__}:ToySession",
        graphs={"brightness": families.GraphIO({"image": families.IMAGE}, ("prob",))},
        streaming={}, settings=("threshold", "color"), models=(), takes_mask=False, in_graph=("mean",)))
    yield families.get(TOY)
    families.unregister(TOY)


def _toy_package(folder):
    folder.mkdir()
    node = helper.make_node("ReduceMean", ["image", "axes"], ["prob"], keepdims=1)
    graph = helper.make_graph(
        [node], "brightness", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, H, W])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1, H, W])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(folder / "brightness.portable.onnx"))
    manifest = {"format_version": 1, "family": TOY, "resolution": {"height": H, "width": W, "stride": 16},
                "graphs": {"brightness": {"portable": "brightness.portable.onnx"}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _frames(count=4):
    frames = []
    for t in range(count):
        frame = np.full((H, W, 3), 20, np.uint8)
        frame[4:12, 5 + 4 * t:15 + 4 * t] = 250          # a bright square moving right
        frames.append(frame)
    return frames


def test_a_family_registered_in_the_table_alone_loads_and_streams(toy_family, tmp_path):
    package = _toy_package(tmp_path / "pkg")
    session = vosrt.sdk.load(package, threshold=0.6)
    assert isinstance(session, ToySession) and session.threshold == 0.6
    frames = _frames()
    stats = stream(session, frames, keep_results=True)
    assert stats.frames == 4 and [d.index for d in stats.results] == [0, 1, 2, 3]
    for t, done in enumerate(stats.results):
        expected = np.where(frames[t].mean(-1) / 255 > 0.6, 300 + t, 0)
        assert done.labels.dtype == np.uint16 and np.array_equal(done.labels, expected)
    with pytest.raises(UserError, match="mem_every: not a setting of toy-brightness packages"):
        vosrt.sdk.load(package, mem_every=3)
    with pytest.raises(UserError, match="unsupervised"):
        session.push(frames[0], mask=np.ones((H, W), np.uint8))


def test_vosrt_run_streams_a_table_only_family_and_keeps_ids_beyond_255(toy_family, tmp_path):
    import cv2

    package = _toy_package(tmp_path / "pkg")
    source = tmp_path / "frames"
    source.mkdir()
    for t, frame in enumerate(_frames()):
        cv2.imwrite(str(source / f"{t:05d}.png"), frame)
    assert cli(["run", str(package), "--source", str(source), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    for t in range(4):
        labels = read_label_png(tmp_path / "out" / f"{t:05d}.png")
        assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 300 + t}
    assert cli(["run", str(package), "--source", str(source), "--mask", str(tmp_path / "out" / "00000.png")]) == 2


def test_manifest_checks_and_engine_profiles_read_the_table(toy_family, tmp_path):
    from vosrt.export.trt_build import comparison_inputs
    from vosrt.sdk.package import load_package

    package = _toy_package(tmp_path / "pkg")
    loaded = load_package(package)
    assert loaded.family == TOY and loaded.forms == ["portable"]
    image = comparison_inputs(loaded, "brightness")["image"]
    assert image.shape == (1, 3, H, W) and 0 <= image.min() and image.max() <= 1
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["graphs"] = {"other": {"portable": "brightness.portable.onnx"}}
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="needs graph 'brightness'"):
        load_package(package)


def test_an_unknown_family_is_a_user_error_listing_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="unknown family 'nope': expected one of stcn, 3dc-seg"):
        families.get("nope")
    with pytest.raises(UserError, match="unknown model 'nope-lite'"):
        families.of_model("nope-lite")


def test_the_shipped_rows_match_the_graphs_their_models_export():
    import torch

    from vosrt.training.graphs import graphs_for
    from vosrt.training.models import build_model

    torch.manual_seed(0)
    for family in families.all_families():
        for name in family.models:
            if name.endswith("-lite"):
                specs = graphs_for(build_model(name))
                assert list(specs) == list(family.graph_names)
                for graph, spec in specs.items():
                    assert spec.input_names == family.graphs[graph].input_names
                    assert spec.output_names == family.graphs[graph].output_names
