"""Reading model package manifests: what a valid package needs, and clear errors for what is wrong."""
import json
import re

import pytest

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.backends import resolve_backend_name
from vosrt.sdk.package import load_package


def make_package(root, **changes):
    manifest = {"format_version": 1, "family": "stcn", "variant": "stcn-lite",
                "resolution": {"height": 64, "width": 96, "stride": 16},
                "graphs": {g: {"portable": f"{g}.portable.onnx", "plugin": f"{g}.plugin.onnx"}
                           for g in ("encode_key", "encode_value", "segment")},
                "streaming": {"mem_every": 3}, "source": {"checkpoint": None}}
    manifest.update(changes)
    root.mkdir(parents=True, exist_ok=True)
    for forms in manifest.get("graphs", {}).values():
        for name in forms.values():
            (root / name).write_bytes(b"")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_a_valid_manifest_gives_family_resolution_graphs_and_streaming_defaults(tmp_path):
    package = load_package(make_package(tmp_path / "pkg"))
    assert package.family == "stcn" and (package.height, package.width, package.stride) == (64, 96, 16)
    assert package.forms == ["portable", "plugin"]
    assert package.graph_path("segment", "plugin").name == "segment.plugin.onnx"
    assert package.streaming == {"mem_every": 3, "top_k": 20, "memory_capacity": 20, "max_objects": 32}
    assert package.checkpoint is None and package.engines == {}
    assert load_package(tmp_path / "pkg" / "manifest.json").path == package.path


@pytest.mark.parametrize("changes, message", [
    ({"family": "yolo"}, "unknown family 'yolo'"),
    ({"format_version": 9}, "format_version 9"),
    ({"resolution": {"height": 60, "width": 96}}, "not a positive multiple of 16"),
    ({"resolution": {"height": "tall", "width": 96}}, r"resolution\.height should be a whole number"),
    ({"graphs": {"encode_key": {"portable": "encode_key.portable.onnx"}}}, "needs graph 'encode_value'"),
])
def test_bad_manifests_are_refused_with_the_reason(tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        load_package(make_package(tmp_path / "pkg", **changes))


def test_a_listed_graph_file_that_is_missing_is_reported(tmp_path):
    root = make_package(tmp_path / "pkg")
    for form in ("portable", "plugin"):
        (root / f"segment.{form}.onnx").unlink()
    with pytest.raises(UserError, match="graph 'segment' is listed"):
        load_package(root)


def test_missing_folder_manifest_and_invalid_json_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_package(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no manifest.json"):
        load_package(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_package(tmp_path / "empty")


@pytest.mark.parametrize("given", [None, 3, ["stcn-lite"]])
def test_a_package_that_is_not_a_path_is_a_user_error_naming_what_arrived(given):
    # vosrt.sdk.load(None) raised TypeError from pathlib ("expected str, bytes or os.PathLike object")
    import vosrt.sdk

    with pytest.raises(UserError, match=rf"model package: expected a folder path or a shipped package's name "
                                        rf"\(str or Path\), got {type(given).__name__} {re.escape(repr(given))}"):
        vosrt.sdk.load(given)


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_shipped_name_hidden_by_something_of_that_name_in_the_working_folder_says_where_the_shipped_one_is(
        tmp_path, monkeypatch, kind):
    # load("stcn-lite") in a folder holding an unrelated stcn-lite said only "not a model package"
    from vosrt.sdk.package import SHIPPED_DIR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "stcn-lite").mkdir() if kind == "folder" else (tmp_path / "stcn-lite").write_text("x")
    with pytest.raises(UserError, match=rf"the shipped package 'stcn-lite' is {re.escape(str(SHIPPED_DIR))}/stcn-lite "
                                        r"\(the 'stcn-lite' in the working folder hides it\)"):
        load_package("stcn-lite")
    with pytest.raises(UserError) as refused:           # a path, not a bare name: nothing about shipped packages
        load_package(tmp_path / "stcn-lite")
    assert "shipped package" not in str(refused.value)


def test_a_form_the_package_lacks_is_named(tmp_path):
    package = load_package(make_package(tmp_path / "pkg", graphs={
        g: {"portable": f"{g}.portable.onnx"} for g in ("encode_key", "encode_value", "segment")}))
    with pytest.raises(UserError, match="no 'plugin' form"):
        package.graph_path("segment", "plugin")


def test_auto_backend_is_onnxruntime_without_engines(tmp_path):
    assert resolve_backend_name(load_package(make_package(tmp_path / "pkg")), "auto") == "onnxruntime"
    with pytest.raises(UserError, match="backend"):
        resolve_backend_name(load_package(tmp_path / "pkg"), "caffe")


def test_torch_backend_without_a_checkpoint_says_how_to_give_one(tmp_path):
    with pytest.raises(UserError, match="checkpoint=PATH"):
        vosrt.sdk.load(make_package(tmp_path / "pkg"), backend="torch")


def test_onnxruntime_reports_a_graph_file_it_cannot_open(tmp_path):
    with pytest.raises(UserError, match="ONNX Runtime cannot open"):
        vosrt.sdk.load(make_package(tmp_path / "pkg"), backend="onnxruntime")


def test_a_replaced_file_reaches_the_disk_before_its_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    # Checkpoints, graphs, engines and manifests were renamed into place without an fsync: after a power cut
    # the final name could hold an empty or half-written file (ext4 and xfs may commit the rename first).
    import os

    from vosrt.sdk.package import replace_file

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(handle):
        events.append(("fsync", os.fstat(handle).st_ino))
        return real_fsync(handle)

    def replace(src, dst):
        events.append(("rename", os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "manifest.json"
    replace_file(path, lambda tmp: tmp.write_text("{}"))
    assert path.read_text() == "{}"
    file, folder = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file), ("rename", file), ("fsync", folder)], events
