"""Every command a message suggests is run here and works; old and new spellings of the CLI mean the same;
file errors are one line that says what is wrong (no traceback, never torch's weights_only=False advice)."""
import argparse
import dataclasses
import json
import re
import shlex
import shutil

import pytest
import torch

from vosrt.cli import main
from vosrt.sdk import UserError
from vosrt.sdk.package import load_package
from vosrt.sdk.synthetic import generate_dataset

from media import suggested_commands
from sdk_packages import tiny_package

TINY_STCN = dict(value_widths=[8, 16, 32], value_dim=16, f16_thin_dim=16, decoder_dims=[16, 8, 8], key_dim=8)


@pytest.mark.slow
def test_the_build_hint_for_a_package_without_the_plugin_form_is_a_command_that_adds_it(tmp_path):
    from vosrt.export.trt_build import _plugin_graphs

    folder = tmp_path / "pkg"
    shutil.copytree(tiny_package("stcn"), folder)
    package = load_package(folder)
    assert package.forms == ["portable"]
    with pytest.raises(UserError) as err:
        _plugin_graphs(package)
    command = suggested_commands(str(err.value))[-1]
    assert "--forms" in command and command[command.index("--forms") + 1] == "plugin,portable"
    assert main(command + ["--no-check"]) == 0
    rebuilt = load_package(folder)
    assert rebuilt.forms == ["portable", "plugin"] and (rebuilt.height, rebuilt.width) == (32, 32)
    assert _plugin_graphs(rebuilt).keys() == set(rebuilt.graphs)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, 2, seed=5, num_frames=8, height=48, width=64)
    return root


@pytest.fixture(scope="module")
def tiny_train_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps({"model": "stcn-lite", "model_overrides": TINY_STCN, "size": [32, 32], "batch_size": 1,
                                "iterations": 1, "num_workers": 0, "save_every": 1, "log_every": 1, "image_every": 1}))
    return path


def _trained_config(run):
    return torch.load(run / "last.pth", weights_only=True)["train_config"]


@pytest.mark.slow
def test_train_takes_a_model_name_and_the_older_family_plus_model_spelling(data_dir, tiny_train_config, tmp_path):
    common = ["--data", str(data_dir), "--config", str(tiny_train_config), "--no-progress"]
    assert main(["train", "stcn-lite", "--out", str(tmp_path / "new")] + common) == 0
    assert main(["train", "stcn", "--model", "stcn-lite", "--out", str(tmp_path / "old")] + common) == 0
    new, old = _trained_config(tmp_path / "new"), _trained_config(tmp_path / "old")
    assert new == old and new["model"] == "stcn-lite"


@pytest.mark.slow
def test_train_without_config_on_cpu_warns_with_an_estimate_and_its_suggested_run_works(data_dir, tmp_path, capsys):
    from vosrt.training import cli_train
    from vosrt.training.train import default_config

    if torch.cuda.is_available():
        pytest.skip("the warning is for CPU-only machines")
    args = argparse.Namespace(family="stcn", data=[str(data_dir)], out=str(tmp_path / "run"))
    cli_train.warn_cpu_time(default_config("stcn"), args)
    err = capsys.readouterr().err
    assert re.search(r"would take roughly \d+ days", err), err
    # The suggested CPU-sized run, shortened to one step with tiny crops so that the test stays short.
    command = shlex.split(err.strip().splitlines()[-1])[1:]
    assert command[:2] == ["train", "stcn"] and "--config" in command
    assert main(command + ["--iterations", "1", "--size", "32", "32", "--batch-size", "1", "--workers", "0",
                           "--no-progress"]) == 0
    assert command[command.index("--out") + 1] == str(tmp_path / "run-cpu")  # not the run's own folder
    assert _trained_config(tmp_path / "run-cpu")["model"] == "stcn-lite"


def test_export_size_and_the_older_height_width_spelling_agree(tmp_path, capsys):
    from vosrt.export import cli_export

    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    spelled = {"--size 32 48": (32, 48), "--size 32 48 --height 32": (32, 48), "--height 32 --width 48": (32, 48),
               "": (None, None)}
    for flags, size in spelled.items():
        args = parser.parse_args(["stcn-lite", "--random-weights", "--out", "x", *flags.split()])
        assert cli_export.resolution(args) == size, flags
    with pytest.raises(UserError, match="--height without --width"):   # it took the default width without a word
        cli_export.resolution(parser.parse_args(["stcn-lite", "--random-weights", "--out", "x", "--height", "64"]))
    # (a real export with --size: the build hint's command, above)
    assert main(["export", "stcn-lite", "--random-weights", "--out", str(tmp_path / "b"), "--size", "32", "48",
                 "--height", "64"]) == 2
    assert "disagrees" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_failed_export_leaves_no_folder_behind(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    out = tmp_path / "deep" / "pkg"
    assert main(["export", "stcn-lite", "--checkpoint", str(bad), "--out", str(out)]) == 2
    assert not out.exists()
    assert "not a PyTorch checkpoint" in capsys.readouterr().err


def test_a_checkpoint_with_python_objects_is_read_without_advising_weights_only_false(tmp_path, capsys):
    # its objects are left out (training/models/inert_pickle.py); the weights that remain are judged as any
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, path)
    assert main(["check", str(tiny_package("stcn")), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Python objects" in err and "weights_only" not in err and "Traceback" not in err
    assert "a state_dict of no known model (first keys: w)" in err
    assert len(err.strip().splitlines()) <= 3   # what check does, the note on the objects, the error


@pytest.mark.parametrize("content", [b"garbage", None])
def test_train_resume_on_a_bad_file_is_one_clear_line(tmp_path, capsys, content, data_dir, tiny_train_config):
    run = tmp_path / "run"
    run.mkdir()
    if content is None:
        torch.save({"w": torch.zeros(1)}, run / "last.pth")       # a readable file, but not a training state
    else:
        (run / "last.pth").write_bytes(content)
    code = main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(run), "--config", str(tiny_train_config),
                 "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "weights_only" not in err
    assert ("not a PyTorch checkpoint" if content else "not a training checkpoint") in err


def test_check_reads_the_checkpoint_a_manifest_records_from_the_package_not_the_working_folder(tmp_path,
                                                                                             monkeypatch, capsys):
    # the shipped package records "checkpoint.pth", relative to itself; an unrelated file of that name in
    # the working folder must not be taken instead
    (tmp_path / "checkpoint.pth").write_bytes(b"not a checkpoint")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "stcn-lite"]) == 0
    assert "check passed" in capsys.readouterr().out


def test_check_on_tensorrt_refuses_a_checkpoint_it_would_not_load(capsys):
    # engines are compared with ONNX Runtime: --checkpoint was silently ignored there
    from sdk_packages import tiny_checkpoint

    package, checkpoint = tiny_package("stcn"), str(tiny_checkpoint("stcn"))
    assert main(["check", str(package), "--backend", "tensorrt", "--checkpoint", checkpoint]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --checkpoint:") and "\n" not in err, err
    command = suggested_commands(err)[-1]
    assert command == ["check", str(package), "--checkpoint", checkpoint]
    assert main(command) == 0
    assert "check passed" in capsys.readouterr().out


def test_train_without_config_on_cpu_warns_for_a_family_without_a_measured_cpu_config(tmp_path, capsys):
    # stem-seg has no CPU-sized config to scale a time from: it started a 480x864 schedule without a word
    from vosrt.sdk import families
    from vosrt.training import cli_train
    from vosrt.training.train import default_config

    if torch.cuda.is_available():
        pytest.skip("the warning is for CPU-only machines")
    assert families.get("stem-seg").cpu_reference is None
    config = default_config("stem-seg-lite")
    cli_train.warn_cpu_time(config, argparse.Namespace(family="stem-seg", data=["generated"], out=str(tmp_path)))
    err = capsys.readouterr().err
    assert err.startswith(f"warning: no GPU: stem-seg-lite without --config runs its published GPU-sized schedule "
                          f"({config.iterations} steps of batch {config.batch_size} at "
                          f"{config.size[0]}x{config.size[1]}), far too long for a CPU; give a smaller one with "
                          f"--config FILE")
    small = dataclasses.replace(config, iterations=2, size=[80, 96], batch_size=1)   # sized by the flags
    cli_train.warn_cpu_time(small, argparse.Namespace(family="stem-seg", data=["generated"], out=str(tmp_path)))
    assert capsys.readouterr().err == ""


def test_train_without_config_on_cpu_does_not_warn_for_a_run_shorter_than_the_cpu_sized_one(data_dir, tmp_path, capsys):
    # a run sized with the flags (one step of 32x32) was told it "would take roughly 0 min" and offered the
    # CPU-sized config, a run hundreds of times longer
    if torch.cuda.is_available():
        pytest.skip("the warning is for CPU-only machines")
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--iterations", "1",
                 "--size", "32", "32", "--batch-size", "1", "--workers", "0", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    from vosrt.training import cli_train
    from vosrt.training.train import default_config

    args = argparse.Namespace(family="stcn", data=[str(data_dir)], out=str(tmp_path / "long"))
    cli_train.warn_cpu_time(default_config("stcn-lite", iterations=5000), args)   # longer than the CPU-sized run
    assert re.search(r"would take roughly \d+ hours", capsys.readouterr().err)


def test_train_cpu_hint_is_a_command_that_runs_for_folders_with_spaces_and_keeps_the_stage(data_dir, tmp_path, capsys):
    # the suggested CPU-sized run joined the paths unquoted (a --data folder "my data" became two folders, "my"
    # and "data") and left out --stage: a static pre-training was offered a main-stage run
    if torch.cuda.is_available():
        pytest.skip("the warning is for CPU-only machines")
    from vosrt.training import cli_train
    from vosrt.training.train import default_config

    spaced = tmp_path / "my data"
    shutil.copytree(data_dir, spaced)
    args = argparse.Namespace(family="stcn", data=[str(spaced)], out=str(tmp_path / "my run"), stage="static")
    cli_train.warn_cpu_time(default_config("stcn", "static"), args)
    command = shlex.split(capsys.readouterr().err.strip().splitlines()[-1])
    assert command[command.index("--data") + 1] == str(spaced)
    assert command[command.index("--out") + 1] == str(tmp_path / "my run-cpu")
    assert command[command.index("--stage") + 1] == "static"
    # the suggested run, shortened to one step with tiny crops so that the test stays short
    assert main(command[1:] + ["--iterations", "1", "--size", "32", "32", "--batch-size", "1", "--workers", "0",
                               "--no-progress"]) == 0
    trained = _trained_config(tmp_path / "my run-cpu")
    assert trained["stage"] == "static" and trained["model"] == "stcn-lite"


def test_train_size_and_stage_errors_name_their_flag_and_what_to_give(data_dir, tmp_path, capsys):
    # "size: expected [height, width], both multiples of 16" and "stage: 3dc-seg has the stage(s) main" named
    # neither --size / --stage nor a value that works
    common = ["--data", str(data_dir), "--iterations", "1", "--batch-size", "1", "--workers", "0", "--no-progress"]
    assert main(["train", "stcn-lite", "--out", str(tmp_path / "odd"), "--size", "30", "40"] + common) == 2
    err = capsys.readouterr().err
    assert "size (--size or \"size\" in the --config file): expected a height and a width, both multiples of 16, " \
           "got [30, 40]" in err
    suggested = shlex.split(err.split("e.g. ")[1])
    assert suggested == ["--size", "32", "48"]
    assert main(["train", "stcn-lite", "--out", str(tmp_path / "fit")] + suggested + common) == 0
    capsys.readouterr()
    assert main(["train", "3dc-seg-lite", "--stage", "static", "--out", str(tmp_path / "3dc")] + common) == 2
    assert "stage (--stage or \"stage\" in the --config file): 3dc-seg has the stage(s) main, got 'static'; leave " \
           "--stage out" in capsys.readouterr().err


def test_train_cpu_hint_is_not_given_for_generated_clips_the_family_refuses(tmp_path, capsys):
    # vosrt train 3dc-seg --data generated warned "A CPU-sized run: vosrt train 3dc-seg --data generated ..." (a
    # command refused as this one was, on the next line), saying the run "saves its first step" in --out
    if torch.cuda.is_available():
        pytest.skip("the warning is for CPU-only machines")
    assert main(["train", "3dc-seg", "--data", "generated", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "warning: no GPU" not in err and "clips generated on the fly feed stcn main training and stem-seg" in err
