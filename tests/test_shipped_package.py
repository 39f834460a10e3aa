"""The shipped stcn-lite package: opened by name, both forms and its checkpoint, every command works on it,
and the README's Python snippets run as written."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import vosrt.sdk
from vosrt.cli import main
from vosrt.sdk import UserError
from vosrt.sdk.package import SHIPPED_DIR, load_package, shipped_packages

README = Path(__file__).resolve().parents[1] / "README.md"


def test_shipped_packages_are_opened_by_name():
    assert "stcn-lite" in shipped_packages()
    tracker = vosrt.sdk.load("stcn-lite", threads=1)
    assert tracker.package.path == (SHIPPED_DIR / "stcn-lite").resolve()
    assert tracker.package.variant == "stcn-lite"


def test_a_path_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stcn-lite").mkdir()
    with pytest.raises(UserError, match="no manifest.json"):
        vosrt.sdk.load("stcn-lite")


def test_an_unknown_name_lists_the_shipped_packages():
    with pytest.raises(UserError, match=r"not-a-model.*shipped packages: .*stcn-lite"):
        vosrt.sdk.load("not-a-model")


def test_the_shipped_package_has_both_forms_and_its_checkpoint():
    package = load_package("stcn-lite")
    assert package.forms == ["portable", "plugin"]
    assert package.checkpoint == package.path / "checkpoint.pth" and package.checkpoint.is_file()


def test_the_shipped_checkpoint_is_the_one_its_graphs_give_back():
    # training.json's recovery command, run here: the weights of the portable graphs are the shipped
    # checkpoint's, tensor for tensor.
    from vosrt.export.recover import recover_model
    from vosrt.training.models import read_checkpoint

    model, config = recover_model(SHIPPED_DIR / "stcn-lite")
    shipped_config, shipped = read_checkpoint(SHIPPED_DIR / "stcn-lite" / "checkpoint.pth")
    assert config == shipped_config
    recovered = model.state_dict()
    assert set(recovered) == set(shipped)
    for key, value in shipped.items():
        assert torch.equal(recovered[key], value), key
    record = json.loads((SHIPPED_DIR / "stcn-lite" / "training.json").read_text())
    assert any("vosrt.export.recover" in c for c in record["checkpoint"]["commands"])


def test_vosrt_check_passes_on_the_shipped_package(capsys):
    assert main(["check", "stcn-lite"]) == 0
    out = capsys.readouterr()
    assert "check passed" in out.out
    assert "check segment" in out.err          # a line per graph while it works


def test_vosrt_check_failure_on_the_shipped_package_re_exports_into_the_shipped_folder(tmp_path, capsys,
                                                                                          monkeypatch):
    # A failed `vosrt check stcn-lite` offered `vosrt export ... --out stcn-lite`: run as given, that wrote a new
    # package into ./stcn-lite of the working folder, which then hid the shipped one from `vosrt check
    # stcn-lite`, and the shipped graphs the check had found wrong stayed as they were.
    import shlex

    monkeypatch.chdir(tmp_path)
    assert main(["check", "stcn-lite", "--tolerance", "1e-12"]) == 1   # the shipped graphs agree to about 4e-7
    last = capsys.readouterr().out.strip().splitlines()[-1]
    export = last.split("`")[1]
    assert export.startswith("vosrt export stcn-lite --checkpoint "), last
    args = shlex.split(export)
    out = Path(args[args.index("--out") + 1])
    assert out.is_absolute() and out.resolve() == (SHIPPED_DIR / "stcn-lite").resolve(), last
    assert not (tmp_path / "stcn-lite").exists()


def test_vosrt_bench_compares_the_shipped_package_with_torch(capsys):
    assert main(["bench", "stcn-lite", "--frames", "2", "--warmup", "0", "--compare", "torch"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"FPS\s+[\d.]+\s+[\d.]+\s+[\d.]+x", out), out


def test_vosrt_build_on_the_shipped_package_gets_past_the_plugin_form_check(capsys):
    # Without TensorRT the build must say so (and nothing about the plugin form or library).
    pytest.importorskip("vosrt.export.trt_build")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: tests/test_trt_build.py builds engines")
    except ImportError:
        pass
    assert main(["build", "stcn-lite"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT" in err and "plugin form" not in err and "libvosrt_plugins" not in err


@pytest.mark.parametrize("command", ["run", "live", "check", "bench", "build", "quantize"])
def test_each_command_that_takes_a_package_says_in_its_help_that_a_shipped_name_will_do(command, capsys):
    # The README: the first argument of these commands is "a package folder or a shipped package's name";
    # the --help of run, check, bench, build and quantize said "model package folder" only.
    with pytest.raises(SystemExit):
        main([command, "--help"])
    positional = capsys.readouterr().out.split("positional arguments:")[1].split("options:")[0]
    assert "shipped" in positional and "stcn-lite" in positional, positional

def _python_snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_python_snippet_runs_as_written(tmp_path, monkeypatch):
    from vosrt.sdk.masks import write_label_png
    from vosrt.sdk.synthetic import generate_sequence, write_video

    snippets = _python_snippets()
    assert snippets
    sequence = generate_sequence(4, num_frames=8, height=120, width=216, num_objects=2)
    write_video(tmp_path / "video.mp4", sequence)
    write_label_png(tmp_path / "first_frame.png", sequence.labels[0])
    monkeypatch.chdir(tmp_path)
    for code in snippets:
        namespace = {}
        exec(compile(code, str(README), "exec"), namespace)
        labels = namespace["labels"]
        assert labels.shape == (120, 216) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert namespace["tracker"].frame_index == 7       # every frame of the video went through
