"""Training: losses, one optimisation step per family, exact resumption, torchrun (gloo) on CPU."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vosrt.sdk.errors import UserError
from vosrt.sdk.synthetic import generate_dataset
from vosrt.training.losses import bootstrap_fraction, bootstrapped_cross_entropy, lovasz_hinge
from vosrt.training.models import build_model
from vosrt.training.steps import ClipTrainStep, STCNTrainStep
from vosrt.training.train import _collate, build_dataset, default_config, load_config_file, train

# the smallest STCN the registry builds: fast enough for several steps in a test
TINY_STCN = dict(value_widths=[8, 16, 32], value_dim=16, f16_thin_dim=16, decoder_dims=[16, 8, 8], key_dim=8)
TINY_3DC = dict(depths=[1, 1, 1, 1], planes=[4, 8, 16, 32], stem_width=8, mdim=16, gc_width=16)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: a second thread only adds synchronisation, and costs much more on a shared machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, 4, seed=5, num_frames=8, height=48, width=64)
    return root


def tiny_config(**overrides):
    options = dict(model_overrides=TINY_STCN, size=[32, 32], batch_size=2, iterations=2, lr=1e-3, num_workers=0,
                   save_every=1, log_every=1, image_every=1, seed=3)
    options.update(overrides)
    return default_config("stcn-lite", **options)


def test_bootstrapped_cross_entropy_is_plain_before_warm_up_and_top_p_after():
    torch.manual_seed(0)
    logits, target = torch.randn(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8))
    loss, p = bootstrapped_cross_entropy(logits, target, step=0, start_warm=10, end_warm=20, top_p=0.25)
    assert p == 1.0 and torch.allclose(loss, F.cross_entropy(logits, target))
    loss, p = bootstrapped_cross_entropy(logits, target, step=30, start_warm=10, end_warm=20, top_p=0.25)
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten().sort(descending=True).values
    assert p == 0.25 and torch.allclose(loss, per_pixel[:16].mean())
    assert bootstrap_fraction(15, 10, 20, 0.25) == pytest.approx(0.625)


def test_lovasz_hinge_is_zero_for_confident_correct_logits_and_one_for_zero_logits():
    truth = (torch.rand(2, 1, 4, 8, 8) > 0.5).float()
    assert lovasz_hinge(5 * (2 * truth - 1), truth).item() == 0.0
    # every hinge error is 1: the loss is the Jaccard loss of predicting everything wrong
    assert lovasz_hinge(torch.zeros_like(truth), truth).item() == pytest.approx(1.0)


def _loss_decreases(step_module, inputs, params, steps=4):
    optimizer = torch.optim.Adam(params, lr=1e-3)
    before = step_module(*inputs)[0].item()
    for _ in range(steps):
        loss = step_module(*inputs)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, step_module(*inputs)[0].item()


def test_one_stcn_training_step_reduces_the_loss_on_a_fixed_batch(data_dir):
    torch.manual_seed(0)
    config = tiny_config()
    dataset = build_dataset(config, [data_dir])
    batch = _collate([dataset[0], dataset[1]])
    model = build_model("stcn-lite", **TINY_STCN).eval()
    step = STCNTrainStep(model)
    inputs = (batch["images"], batch["masks"], batch["labels"], batch["selector"], 0)
    before, after = _loss_decreases(step, inputs, list(model.parameters()))
    assert after < before


def test_one_3dc_seg_training_step_reduces_the_loss_on_a_fixed_batch(data_dir):
    pytest.importorskip("vosrt.training.models.c3dseg")
    torch.manual_seed(0)
    config = default_config("3dc-seg-lite", size=[32, 32], clip_length=4, max_window=6, seed=0)
    dataset = build_dataset(config, [data_dir])
    batch = _collate([dataset[0]])
    model = build_model("3dc-seg-lite", **TINY_3DC).eval()
    step = ClipTrainStep(model)
    before, after = _loss_decreases(step, (batch["images"], batch["foreground"]),
                                    [p for p in model.parameters() if p.requires_grad])
    assert after < before


def test_resumed_run_continues_with_the_same_step_optimizer_state_and_rng(data_dir, tmp_path):
    config = tiny_config(iterations=3, repeat=1)
    straight = train([data_dir], tmp_path / "straight", config, progress=False)
    # split inside an epoch (two steps each): each new DataLoader drew its workers' seed from the global
    # torch RNG, so the resumed run's RNG states differed from the straight run's
    train([data_dir], tmp_path / "split", tiny_config(iterations=1), progress=False)
    resumed = train([data_dir], tmp_path / "split", config, resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 3
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    for slot_a, slot_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.allclose(slot_a["exp_avg"], slot_b["exp_avg"], atol=1e-6)
        assert torch.equal(slot_a["step"], slot_b["step"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["rng"]["numpy"]["keys"], b["rng"]["numpy"]["keys"])


def _bn_changes(before: dict, after: dict) -> tuple[int, int, int]:
    """(BatchNorm weights or biases changed, running statistics changed, BatchNorm layers) between two state_dicts."""
    layers = {k.rsplit(".", 1)[0] for k in before if k.endswith(".running_mean")}
    affine = sum(not torch.equal(before[f"{l}.{p}"], after[f"{l}.{p}"]) for l in layers for p in ("weight", "bias"))
    stats = sum(not torch.equal(before[f"{l}.{p}"], after[f"{l}.{p}"]) for l in layers for p in ("running_mean", "running_var"))
    return affine, stats, len(layers)


@pytest.mark.parametrize("bn_affine", [None, False])
def test_stcn_trains_batchnorm_weight_and_bias_in_eval_mode_as_published(data_dir, tmp_path, bn_affine):
    # STCN stays in eval() mode (running statistics as loaded) and gives Adam every parameter (model/model.py):
    # its BatchNorm weight and bias train. They stayed as loaded in every run of the published schedule.
    from vosrt.training.models import save_checkpoint

    start = build_model("stcn-lite", **TINY_STCN)
    save_checkpoint(tmp_path / "start.pth", start, {"model": "stcn-lite", **TINY_STCN})
    config = tiny_config(iterations=1) if bn_affine is None else tiny_config(iterations=1, bn_affine=bn_affine)
    assert config.freeze_bn and config.bn_affine is (bn_affine is None)   # the published schedule's: True
    train([data_dir], tmp_path / "run", config, init=tmp_path / "start.pth", progress=False)
    after = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["state_dict"]
    affine, stats, layers = _bn_changes(start.state_dict(), after)
    assert layers > 10 and stats == 0
    assert affine > layers if bn_affine is None else affine == 0


def test_a_run_saved_before_bn_affine_freeze_stages_and_davis_weight_resumes_as_it_trained():
    # the published schedule's bn_affine (True for STCN) would have given a resumed older run more weights to train
    # than its optimizer state holds
    from vosrt.training.train import resumed_config

    stored = tiny_config().to_dict()
    del stored["bn_affine"], stored["freeze_stages"], stored["stcn"]["davis_weight"], stored["stcn"]["static_weights"]
    config = resumed_config(tiny_config(), {"train_config": stored})
    assert (config.bn_affine, config.freeze_stages, config.davis_weight, config.static_weights) == (False, 0, 1, {})
    stored = tiny_config().to_dict()
    assert resumed_config(tiny_config(), {"train_config": stored}).davis_weight == 5


@pytest.fixture
def on_optimizer_step():
    """``on_optimizer_step(n, action)``: run ``action()`` right after the n-th optimizer update from now,
    inside that training step, before the schedule and the step count follow."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    actions, count = {}, [0]

    def hook(optimizer, args, kwargs):
        count[0] += 1
        if count[0] in actions:
            actions.pop(count[0])()

    handle = register_optimizer_step_post_hook(hook)
    yield lambda n, action: actions.__setitem__(count[0] + n, action)
    handle.remove()


def test_a_stop_signal_saves_the_last_complete_step_and_resume_continues_exactly(data_dir, tmp_path, on_optimizer_step,
                                                                                 capsys):
    # Ctrl-C (and SIGTERM / SIGHUP under `vosrt train`) lost every step since the last save (save_every
    # 1000 by default); a checkpoint saved where the signal struck would hold updated weights with the
    # previous step count. The signal now waits for the step to complete, which is saved.
    import signal

    config = tiny_config(iterations=3, save_every=1000)
    train([data_dir], tmp_path / "straight", config, progress=False)
    on_optimizer_step(2, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        train([data_dir], tmp_path / "split", config, progress=False)
    assert "stopped at step 2 of 3" in capsys.readouterr().err
    assert torch.load(tmp_path / "split" / "last.pth", weights_only=True)["step"] == 2
    assert train([data_dir], tmp_path / "split", config, resume=True, progress=False)["step"] == 3
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_an_error_between_steps_saves_the_last_complete_step_and_resume_continues_exactly(data_dir, tmp_path,
                                                                                          on_optimizer_step, capsys):
    # a frame that could not be read lost every step since the last save (save_every 1000 by default)
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    config = tiny_config(iterations=3, save_every=1000)
    train([data], tmp_path / "straight", config, progress=False)

    def damage():
        for frame in (data / "JPEGImages" / "480p").glob("*/*.jpg"):
            frame.write_bytes(b"not a jpeg")

    on_optimizer_step(1, damage)
    with pytest.raises(UserError, match="cannot read frame"):
        train([data], tmp_path / "split", config, progress=False)
    assert "holds step 1, the last complete one: once the error below is fixed, continue with the same command " \
           "and --resume" in capsys.readouterr().err
    assert torch.load(tmp_path / "split" / "last.pth", weights_only=True)["step"] == 1
    shutil.rmtree(data)
    shutil.copytree(data_dir, data)
    assert train([data], tmp_path / "split", config, resume=True, progress=False)["step"] == 3
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_a_data_loading_worker_leaves_sigterm_to_the_training_process(data_dir, tmp_path, on_optimizer_step):
    # systemd and Slurm send SIGTERM to every process of the job: a worker it killed ended the run with
    # "DataLoader worker ... is killed by signal" instead of the training process stopping cleanly
    import multiprocessing

    def terminate_workers():  # from another process, as systemd or slurmstepd would
        pids = [str(worker.pid) for worker in multiprocessing.active_children()]
        assert pids
        subprocess.run(["kill", "-TERM", *pids], check=True)

    on_optimizer_step(1, terminate_workers)
    summary = train([data_dir], tmp_path / "run", tiny_config(iterations=2, batch_size=1, num_workers=1), progress=False)
    assert summary["step"] == 2


def test_resume_from_a_damaged_checkpoint_names_resume_and_gives_the_kept_checkpoint_to_go_on_from(data_dir, tmp_path,
                                                                                                 capsys):
    # the error named the file's fault only, neither --resume nor what could be done
    import shlex
    import subprocess as sp

    from vosrt.cli import main

    run = tmp_path / "run"
    train([data_dir], run, tiny_config(iterations=2, keep_every=1), progress=False)
    data = (run / "last.pth").read_bytes()
    (run / "last.pth").write_bytes(data[:len(data) // 2])
    command = ["train", "stcn-lite", "--data", str(data_dir), "--out", str(run), "--resume", "--no-progress"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: {run / 'last.pth'} is not a PyTorch checkpoint that can be read safely: ")
    copy = err.split("resume from the last checkpoint kept (keep_every): `")[1].split("`")[0]
    assert copy == shlex.join(["cp", str(run / "checkpoints" / "step_0000002.pth"), str(run / "last.pth")])
    sp.run(shlex.split(copy), check=True)
    assert main(command + ["--iterations", "3"]) == 0
    assert torch.load(run / "last.pth", weights_only=True)["step"] == 3
    (run / "last.pth").write_bytes(b"")
    for kept in (run / "checkpoints").iterdir():
        kept.unlink()
    assert main(command) == 2
    assert capsys.readouterr().err.endswith("(0 bytes); start a new run in another --out folder\n")


def test_a_large_seed_trains_and_resumes(data_dir, tmp_path):
    # torch's generators take 64 bits: seed 2**50 (any from about 1.8e13, as seed * 1000003 seeds the batch order)
    # ended in "ValueError: Overflow when unpacking long long"
    config = tiny_config(iterations=2, seed=2**70)
    train([data_dir], tmp_path / "run", tiny_config(iterations=1, seed=2**70), progress=False)
    assert train([data_dir], tmp_path / "run", config, resume=True, progress=False)["step"] == 2


def test_a_training_into_the_folder_of_a_running_one_is_refused_and_the_folder_is_free_after_it(data_dir, tmp_path):
    # Two trainings into one --out both wrote last.pth, config.json and the logs: a second `vosrt train` started
    # before the first one's first save, or with --resume, went on beside it. The running trainings are played
    # here by a second process holding the runs' locks as a running `vosrt train` does: "run" has saved a step,
    # "starting" has not saved yet.
    import subprocess
    import sys

    run, starting = tmp_path / "run", tmp_path / "starting"
    train([data_dir], run, tiny_config(iterations=1), progress=False)
    starting.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        "held = [open(os.path.join(folder, '.vosrt-train.lock'), 'a+') for folder in sys.argv[1:]]\n"
        "for f in held:\n"
        "    fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); f.truncate(); f.write(f'{os.getpid()}\\n'); f.flush()\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()"), str(run), str(starting)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (run / "last.pth").read_bytes()
        with pytest.raises(UserError, match=f"^--out {run} is in use by another training \\(process {holder.pid}\\)"
                                            ".*stop that run \\(or wait for it to end\\), then resume$"):
            train([data_dir], run, tiny_config(iterations=2), resume=True, progress=False)
        assert (run / "last.pth").read_bytes() == before
        with pytest.raises(UserError, match=f"^--out {starting} is in use by another training.*give another --out"):
            train([data_dir], starting, tiny_config(iterations=1), progress=False)
        assert not (starting / "config.json").exists() and not (starting / "last.pth").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the lock ends with the process that held it: the run goes on
    assert train([data_dir], run, tiny_config(iterations=2), resume=True, progress=False)["step"] == 2


def test_resume_without_a_checkpoint_is_a_user_error(data_dir, tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train([data_dir], tmp_path / "empty", tiny_config(), resume=True, progress=False)


def test_a_new_run_into_a_folder_holding_a_config_json_of_the_user_s_is_refused(data_dir, tmp_path):
    # only a folder holding last.pth was refused: a config.json of the user's there was replaced by the run's
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "config.json").write_text('{"lr": 0.5}\n')
    with pytest.raises(UserError, match=r"holds a config.json that is not a vosrt train run's"):
        train([data_dir], out, tiny_config(iterations=1), progress=False)
    assert (out / "config.json").read_text() == '{"lr": 0.5}\n' and sorted(p.name for p in out.iterdir()) == ["config.json"]
    # a run's own config.json (one that stopped before its first checkpoint) is taken over by the new run
    (out / "config.json").write_text(json.dumps(tiny_config(iterations=5).to_dict()))
    train([data_dir], out, tiny_config(iterations=1), progress=False)
    assert json.loads((out / "config.json").read_text())["iterations"] == 1 and (out / "last.pth").is_file()


def test_generated_with_dataset_folders_or_beside_a_folder_of_that_name_is_said(data_dir, tmp_path, capsys,
                                                                               monkeypatch):
    # `--data generated davis` said "dataset folder not found: generated"; with a dataset folder named generated in
    # the working folder, `--data generated` trained on generated clips and never read it, without a word
    with pytest.raises(UserError, match=r"^--data: generated trains alone \(clips generated on the fly, not combined "
                                        r"with dataset folders\); give --data generated only, or ./generated for a "
                                        r"folder of that name$"):
        build_dataset(tiny_config(), ["generated", data_dir])
    monkeypatch.chdir(tmp_path)
    build_dataset(tiny_config(), ["generated"])
    assert "note:" not in capsys.readouterr().err
    (tmp_path / "generated").mkdir()
    build_dataset(tiny_config(), ["generated"])
    assert ("note: --data generated trains on clips generated on the fly, not on the folder ./generated here; give "
            "--data ./generated to train on that folder") in capsys.readouterr().err


def test_davis_at_full_resolution_is_named_with_the_set_training_reads(data_dir, tmp_path):
    # its JPEGImages/Full-Resolution was taken for a YouTube-VOS video: "no annotated videos found (looked in
    # ROOT/Annotations)"
    import shutil

    full = tmp_path / "DAVIS"
    for kind in ("JPEGImages", "Annotations"):
        shutil.copytree(data_dir / kind / "480p", full / kind / "Full-Resolution")
    with pytest.raises(UserError, match=r"^--data .*DAVIS: holds DAVIS at Full-Resolution \(JPEGImages/Full-Resolution\), but "
                                        r"training reads its 480p frames .*DAVIS-2017-trainval-480p\.zip"):
        build_dataset(tiny_config(), [full])


def test_config_file_overrides_defaults_and_rejects_unknown_options(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"lr": 0.5, "size": [64, 96]}))
    config = load_config_file(good, default_config("stcn"))
    assert config.lr == 0.5 and config.size == [64, 96] and config.batch_size == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 0.5}))
    with pytest.raises(UserError, match="learning_rate"):
        load_config_file(bad, default_config("stcn"))
    # an unknown model in the file did not name the file
    unknown = tmp_path / "model.json"
    unknown.write_text(json.dumps({"model": 7}))
    with pytest.raises(UserError, match=r'^--config .*model\.json: "model": unknown model \'7\': expected one of'):
        load_config_file(unknown, default_config("stcn"))
    # a folder was "file not found", of a folder that is there
    with pytest.raises(UserError, match=r"^--config: is a folder, not a JSON file: .*; give a JSON file"):
        load_config_file(tmp_path, default_config("stcn"))
    with pytest.raises(UserError, match=r"^--config: file not found: .*missing\.json; give a JSON file"):
        load_config_file(tmp_path / "missing.json", default_config("stcn"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_trains_and_checkpoints(data_dir, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": "stcn-lite", "model_overrides": TINY_STCN, "size": [32, 32],
                                  "batch_size": 1, "iterations": 2, "num_workers": 0, "save_every": 2}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "vosrt.cli", "train", "stcn", "--data", str(data_dir),
         "--out", str(tmp_path / "run"), "--config", str(config), "--no-progress"],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert checkpoint["step"] == 2
    assert "trained stcn-lite to step 2" in result.stdout


@pytest.mark.slow
def test_two_process_torchrun_ends_when_one_rank_fails_alone(tmp_path):
    # the failing rank waited in a barrier while the other waited in the gradients' all-reduce: the job hung
    # until the collective timeout (30 min) instead of ending with the rank's error
    root = tmp_path / "data"
    generate_dataset(root, 2, seed=5, num_frames=4, height=48, width=64)
    for frame in (root / "JPEGImages" / "480p" / "synth-5-0001").glob("*.jpg"):  # rank 1's shard of epoch 0
        frame.write_bytes(b"not a jpeg")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": "stcn-lite", "model_overrides": TINY_STCN, "size": [32, 32], "seed": 3,
                                  "batch_size": 1, "iterations": 2, "num_workers": 0}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "vosrt.cli", "train", "stcn-lite", "--data", str(root),
         "--out", str(tmp_path / "run"), "--config", str(config), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, stderr = job.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, 9)  # torchrun and both ranks, which a hang leaves behind
        job.communicate()
        raise
    assert job.returncode != 0
    assert "error: cannot read frame " in stderr


# one rank of a two-process gloo group (RANK, WORLD_SIZE, MASTER_* in the environment): trains with validation every
# step; a program that goes on after the error (here: rank 0 stays for minutes) rather than exiting at once
_RANK_WITH_VALIDATION = """
import os, sys, time
import torch
from vosrt.training.train import default_config, train
torch.set_num_threads(1)
root = sys.argv[1]
config = default_config("stcn-lite", model_overrides=%r, size=[32, 32], seed=3, batch_size=1, iterations=3,
                        num_workers=0, val_every=1, val_size=[48, 64])
try:
    train([root + "/data"], root + "/run", config, val_data=root + "/val", progress=False)
except Exception as err:
    print(type(err).__name__ + ": " + str(err), flush=True)
    if os.environ["RANK"] == "0":
        time.sleep(600)
""" % (TINY_STCN,)


@pytest.mark.slow
def test_every_rank_ends_with_the_error_of_a_validation_that_fails_on_rank_0(tmp_path):
    # rank 0 validates while the others wait in a barrier: when its validation failed, they waited there for as long
    # as its process lived on (torchrun ends them once it exits), up to the collective timeout (30 min)
    generate_dataset(tmp_path / "data", 2, seed=5, num_frames=4, height=48, width=64)
    generate_dataset(tmp_path / "val", 1, seed=6, num_frames=4, height=48, width=64)
    for frame in sorted((tmp_path / "val" / "JPEGImages" / "480p").glob("*/*.jpg"))[2:]:
        frame.write_bytes(b"not a jpeg")
    port = _free_port()
    ranks = [subprocess.Popen([sys.executable, "-c", _RANK_WITH_VALIDATION, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                                   "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for rank in range(2)]
    try:
        output, _ = ranks[1].communicate(timeout=120)
    finally:
        for rank in ranks:
            rank.kill()
            rank.communicate()
    frame = tmp_path / "val" / "JPEGImages" / "480p" / "synth-6-0000" / "00002.jpg"
    assert f"UserError: validation failed on rank 0: cannot read frame {frame}" in output


def test_validation_session_takes_objects_on_the_frame_they_appear():
    # training validation streams through the shipped Tracker (torch backend, model in memory)
    from vosrt.sdk.streaming import stream
    from vosrt.sdk.synthetic import generate_sequence
    from vosrt.training.validate import session_for

    torch.manual_seed(0)
    seq = generate_sequence(2, num_frames=8, height=32, width=48, num_objects=2, appear_later=True)
    start = seq.first_frame_of(2)
    annotations = {0: seq.labels[0], start: np.where(seq.labels[start] == 2, 2, 0).astype(np.uint8)}
    model = build_model("stcn-lite", **TINY_STCN).eval()
    session = session_for(model, tiny_config(val_size=[32, 48], mem_every=2, top_k=4))
    assert (session.mem_every, session.top_k) == (2, 4)
    predicted = [d.labels for d in stream(session, seq.frames, masks=annotations, keep_results=True).results]
    assert len(predicted) == 8
    assert np.array_equal(predicted[0], seq.labels[0])
    assert not (predicted[start - 1] == 2).any()
    assert np.array_equal(predicted[start] == 2, seq.labels[start] == 2)


@pytest.mark.slow
def test_training_validation_j_and_f_equals_vosrt_run_and_eval(tmp_path):
    # the J&F training reports is the shipped SDK's: export the same checkpoint, stream each video with
    # `vosrt run --backend torch`, score with `vosrt eval`
    import csv

    from vosrt.cli import main as cli
    from vosrt.training.data.folders import VideoFolder

    root = tmp_path / "data"
    generate_dataset(root, 2, seed=11, num_frames=6, height=48, width=64, appear_later_fraction=0.0)
    summary = train([root], tmp_path / "run", tiny_config(iterations=1, val_videos=2, val_size=[48, 64]),
                    val_data=root, progress=False)
    package = tmp_path / "pkg"
    assert cli(["export", "stcn-lite", "--checkpoint", str(tmp_path / "run" / "last.pth"), "--out", str(package),
                "--forms", "portable", "--height", "48", "--width", "64", "--no-check"]) == 0
    for video in VideoFolder(root).videos:
        assert cli(["run", str(package), "--source", str(root / "JPEGImages" / "480p" / video), "--backend", "torch",
                    "--out", str(tmp_path / "pred" / video), "--no-progress"]) == 0
    assert cli(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(root / "Annotations" / "480p"),
                "--csv", str(tmp_path / "eval.csv")]) == 0
    rows = {(r["sequence"], r["object"]): r for r in csv.DictReader(open(tmp_path / "eval.csv"))}
    assert float(rows[("all", "mean")]["J&F"]) == pytest.approx(summary["validation"]["J&F"], abs=1e-6)


@pytest.mark.slow   # about 10 s of CPU on a 2-core machine: training runs with validation
def test_training_with_a_validation_folder_reports_j_and_f(data_dir, tmp_path):
    summary = train([data_dir], tmp_path / "run", tiny_config(iterations=1, val_videos=1), val_data=data_dir,
                    progress=False)
    assert set(summary["validation"]) == {"J", "F", "J&F"}
    assert 0.0 <= summary["validation"]["J&F"] <= 1.0


def test_a_data_folder_that_is_not_there_is_named_with_its_flag(data_dir, tmp_path, capsys):
    # it said "dataset folder not found: X": not which flag, nor what --data takes
    from vosrt.cli import main

    missing = tmp_path / "DAVIS2017"
    assert main(["train", "stcn-lite", "--data", str(data_dir), str(missing), "--out", str(tmp_path / "run")]) == 2
    assert f"error: --data: {missing}: no such file or folder" in capsys.readouterr().err
    with pytest.raises(UserError, match=rf"^--data: {missing}: no such file or folder; give a dataset folder .*"
                                        r"or 'generated'"):
        build_dataset(tiny_config(), [data_dir, missing])
    assert not (tmp_path / "run" / "last.pth").exists()


def test_a_validation_folder_or_size_that_cannot_work_is_refused_before_the_first_step(data_dir, tmp_path):
    # both failed the first validation: after every step before it (at the end, with val_every 0)
    with pytest.raises(UserError, match="^--val: dataset folder not found: "):
        train([data_dir], tmp_path / "a", tiny_config(iterations=1), val_data=tmp_path / "missing", progress=False)
    with pytest.raises(UserError, match=r"val_size: expected \[height, width\], both multiples of 16, got \[40, 56\]"):
        train([data_dir], tmp_path / "b", tiny_config(iterations=1, val_size=[40, 56]), val_data=data_dir,
              progress=False)
    assert not (tmp_path / "a" / "last.pth").exists() and not (tmp_path / "b" / "last.pth").exists()


def test_validation_session_options_the_session_refuses_are_refused_before_the_first_step(data_dir, tmp_path):
    # mem_every 0 or a clip overlap of a whole clip failed when the first validation opened its session: after
    # every step (at the end, with val_every 0), naming a session setting ("overlap") rather than the option
    with pytest.raises(UserError) as error:
        train([data_dir], tmp_path / "a", tiny_config(iterations=1, stcn={"mem_every": 0}), val_data=data_dir,
              progress=False)
    assert str(error.value) == ('--val: the validation session refuses the stcn options {"mem_every": 0, "top_k": 20} '
                                '("stcn" in the --config file): mem_every: expected a positive whole number of frames, '
                                'got 0')
    config = default_config("3dc-seg-lite", model_overrides=TINY_3DC, size=[32, 32], batch_size=1, iterations=1,
                            num_workers=0, **{"3dc-seg": {"clip_overlap": 8}})
    with pytest.raises(UserError, match=r'^--val: the validation session refuses the 3dc-seg options '
                                        r'\{"clip_overlap": 8\} .*: overlap: expected an integer in 0\.\.7'):
        train([data_dir], tmp_path / "b", config, val_data=data_dir, progress=False)
    assert not (tmp_path / "a" / "last.pth").exists() and not (tmp_path / "b" / "last.pth").exists()


@pytest.mark.parametrize("model", ["stcn", "3dc-seg", "3dc-seg-lite", "stem-seg", "stem-seg-lite"])
def test_the_published_schedule_s_training_size_is_one_training_accepts(data_dir, model):
    # 3dc-seg's was 480x854, refused by the multiple-of-16 check: `vosrt train 3dc-seg --data DAVIS2017/ --out RUN`
    # (the README's command, no --size) stopped with "size: ... got [480, 854]"
    config = default_config(model)
    assert all(s % 16 == 0 for s in config.size)
    assert len(build_dataset(config, [data_dir])) > 0


def test_a_dataset_smaller_than_a_batch_names_the_flag_and_the_config_key_to_change(data_dir, tmp_path):
    # "lower batch_size or raise repeat": neither is the command line's spelling, and repeat has no flag
    with pytest.raises(UserError, match=r"4 samples, fewer than one batch of 8 .*--batch-size.*\"repeat\" in the "
                                        r"--config file"):
        train([data_dir], tmp_path / "a", tiny_config(iterations=1, batch_size=8), progress=False)


def test_static_pre_training_takes_repeat_samples_of_each_image_per_epoch(tmp_path):
    # the static stage ignored "repeat": two image/mask pairs stayed two samples, and a batch of 4 was
    # refused with the hint to raise repeat, which changed nothing
    import cv2

    from vosrt.sdk.masks import write_label_png
    from vosrt.sdk.synthetic import generate_sequence

    clip = generate_sequence(1, num_frames=2, height=48, width=64, num_objects=1)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), clip.frames[i][..., ::-1])
        write_label_png(tmp_path / f"img{i}.png", clip.labels[i])
    config = tiny_config(stage="static", batch_size=4, repeat=2, iterations=1)
    dataset = build_dataset(config, [tmp_path])
    assert len(dataset) == 4 and dataset[1]["video"] == dataset[3]["video"] == "img1"
    assert not torch.equal(dataset[1]["images"], dataset[3]["images"])  # another draw of the same image
    assert train([tmp_path], tmp_path / "run", config, progress=False)["step"] == 1


def test_static_pre_training_refuses_an_empty_or_missing_pair_folder_among_others(tmp_path):
    # an empty or mistyped folder beside one with pairs was skipped without a word; alone, the error showed a
    # Python list ("no image/mask pairs found in [PosixPath('...')]") and did not say what a folder should hold
    import cv2

    from vosrt.sdk.masks import write_label_png
    from vosrt.sdk.synthetic import generate_sequence

    pairs, empty = tmp_path / "pairs", tmp_path / "empty"
    pairs.mkdir()
    empty.mkdir()
    clip = generate_sequence(1, num_frames=1, height=48, width=64, num_objects=1)
    cv2.imwrite(str(pairs / "img.jpg"), clip.frames[0][..., ::-1])
    write_label_png(pairs / "img.png", clip.labels[0])
    config = tiny_config(stage="static", batch_size=1, iterations=1)
    for folder, found in ((empty, f"{empty}: holds no image/mask pairs"),
                          (tmp_path / "typo", f"--data: {tmp_path / 'typo'}: no such file or folder")):
        with pytest.raises(UserError, match=f"^{found}; expected NAME.jpg images with NAME.png masks"):
            train([pairs, folder], tmp_path / "run", config, progress=False)
    assert train([pairs], tmp_path / "run", config, progress=False)["step"] == 1


def test_generated_clips_too_few_for_a_batch_name_samples_per_epoch_and_repeat_is_refused(tmp_path):
    # on --data generated the hint said to raise repeat, which generated clips ignore (silently, when given):
    # their epoch's length is samples_per_epoch
    generated = dict(generated_clip_size=[48, 64], generated_frames=4, iterations=1)
    with pytest.raises(UserError, match=r"1 samples, fewer than one batch of 2 .*--batch-size.* raise samples_per_epoch "
                                        r"\(clips generated per epoch: \"samples_per_epoch\" under \"stcn\""):
        train(["generated"], tmp_path / "a", tiny_config(samples_per_epoch=1, **generated), progress=False)
    with pytest.raises(UserError, match=r"^repeat: --data generated draws a new clip for every sample, so repeat \(2\) "
                                        r"would be ignored; set the epoch's length with \"samples_per_epoch\""):
        train(["generated"], tmp_path / "b", tiny_config(samples_per_epoch=1, repeat=2, **generated), progress=False)
    assert not (tmp_path / "b" / "last.pth").exists()
    assert train(["generated"], tmp_path / "c", tiny_config(samples_per_epoch=2, **generated), progress=False)["step"] == 1


@pytest.mark.slow
def test_training_that_does_not_take_generated_clips_gives_the_command_that_writes_them(tmp_path, capsys, monkeypatch):
    # it said "write a dataset with vosrt.sdk.synthetic.generate_dataset", a function of required arguments
    import shlex

    from vosrt.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "3dc-seg-lite", "--data", "generated", "--out", "run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    command = shlex.split(err.split("write them as a dataset folder with `")[1].split("`")[0])
    assert command[:2] == ["python", "-c"] and err.strip().endswith("and give --data synthetic")
    subprocess.run([sys.executable, *command[1:]], check=True, cwd=tmp_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": "3dc-seg-lite", "model_overrides": TINY_3DC, "size": [32, 32],
                                  "batch_size": 2, "iterations": 1, "num_workers": 0}))
    assert main(["train", "3dc-seg-lite", "--data", "synthetic", "--out", "run", "--config", str(config),
                 "--no-progress"]) == 0


def test_an_out_folder_that_cannot_be_written_is_a_user_error_naming_it(data_dir, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="^--out .*file is a file; give a folder"):
        train([data_dir], tmp_path / "file", tiny_config(iterations=1), progress=False)
    with pytest.raises(UserError, match="^--out .*file/run: cannot write the run folder \\(Not a directory"):
        train([data_dir], tmp_path / "file" / "run", tiny_config(iterations=1), progress=False)


def test_init_weights_of_another_model_are_a_short_user_error_saying_what_the_file_holds(data_dir, tmp_path):
    # torch's load_state_dict message was passed on whole: every key, ~15-20 kB in one error
    from vosrt.training.models import save_checkpoint

    save_checkpoint(tmp_path / "c3d.pth", build_model("3dc-seg-lite", **TINY_3DC))
    with pytest.raises(UserError) as error:
        train([data_dir], tmp_path / "a", tiny_config(iterations=1), init=tmp_path / "c3d.pth", progress=False)
    assert str(error.value) == (f"--init {tmp_path / 'c3d.pth'} holds a 3dc-seg model (3dc-seg-lite), not a stcn one: "
                                f"start stcn-lite from stcn weights, or train 3dc-seg-lite from these")
    save_checkpoint(tmp_path / "wide.pth", build_model("stcn-lite", **{**TINY_STCN, "value_dim": 24}))
    with pytest.raises(UserError) as error:
        train([data_dir], tmp_path / "b", tiny_config(iterations=1), init=tmp_path / "wide.pth", progress=False)
    message = str(error.value)
    assert ": 15 of another shape (decoder.compress.conv1.weight: [16, 40, 3, 3] in the file, [16, 32, 3, 3] here, " in message
    assert message.endswith('the file holds a stcn-lite with model_overrides {"value_widths": [8, 16, 32], '
                            '"value_dim": 24, "f16_thin_dim": 16, "decoder_dims": [16, 8, 8], "key_dim": 8}: give the '
                            "run the file's model and model_overrides, in the --config file: "
                            '{"model": "stcn-lite", "model_overrides": {"value_widths": [8, 16, 32], "value_dim": 24, '
                            '"f16_thin_dim": 16, "decoder_dims": [16, 8, 8], "key_dim": 8}}')
    assert len(message) < 1000 and "\n" not in message


def test_init_weights_of_another_configuration_say_the_config_file_options_that_take_them(data_dir, tmp_path, capsys):
    # the error said "give the run the file's model and model_overrides", and no flag gives model_overrides
    from vosrt.cli import main
    from vosrt.training.models import save_checkpoint

    save_checkpoint(tmp_path / "wide.pth", build_model("stcn-lite", **{**TINY_STCN, "value_dim": 24}))
    options = tiny_config(iterations=1).to_dict()
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(options))
    command = ["train", "stcn-lite", "--data", str(data_dir), "--config", str(config), "--init",
               str(tmp_path / "wide.pth"), "--no-progress", "--out"]
    assert main(command + [str(tmp_path / "a")]) == 2
    given = json.loads(capsys.readouterr().err.split("in the --config file: ")[1])
    config.write_text(json.dumps({**options, **given}))
    assert main(command + [str(tmp_path / "b")]) == 0   # the options it gives take the file's weights


def test_an_init_file_that_is_not_weights_is_a_one_line_error_naming_init_and_the_fault(data_dir, tmp_path, capsys):
    # 3dc-seg printed torch's multi-line advice to load with weights_only=False (which runs the file's code) for
    # a file that is no checkpoint, and every key of its encoder (hundreds) for weights of another network;
    # stcn said a JSON file "holds Python objects"
    from vosrt.cli import main

    (tmp_path / "options.json").write_text('{"lr": 0.001}')
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pth")
    common = ["--data", str(data_dir), "--iterations", "1", "--size", "32", "32", "--batch-size", "1", "--workers",
              "0", "--no-progress"]
    expected = {
        ("3dc-seg-lite", "options.json"): "is not a PyTorch checkpoint that can be read safely: its content is not what "
                                          "torch.save writes",
        ("stcn-lite", "options.json"): "is not a PyTorch checkpoint that can be read safely: its content is not what "
                                       "torch.save writes",
        ("3dc-seg-lite", "other.pth"): "backbone weights do not fit the encoder (ir-CSN depths [3, 4, 6, 3]): 265 "
                                       "missing (layer1.0.bn1.bias, layer1.0.bn1.running_mean, "
                                       "layer1.0.bn1.running_var, ...); 1 unexpected (w)",
    }
    for (model, name), message in expected.items():
        path = tmp_path / name
        assert main(["train", model, "--init", str(path), "--out", str(tmp_path / "run"), *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: --init: {path}") and message in err, err
        assert "weights_only" not in err and "Python objects" not in err
    # a package's or a run's folder was "file not found", of a folder that is there
    shipped = Path(__file__).resolve().parents[1] / "sdk" / "models" / "stcn-lite"
    for folder, hint in ((shipped, f"give the checkpoint in it: --init {shipped / 'checkpoint.pth'}"),
                         (tmp_path, "give a checkpoint file (a run's last.pth")):
        assert main(["train", "stcn-lite", "--init", str(folder), "--out", str(tmp_path / "run"), *common]) == 2
        err = capsys.readouterr().err
        assert f"error: --init {folder} is a folder, not a checkpoint file; {hint}" in err, err
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.slow   # about 7 s of CPU on a 2-core machine: a 3dc-seg training run with validation
def test_3dc_seg_training_clips_of_another_length_than_the_model_s_are_refused(data_dir, tmp_path):
    # 4-frame training clips trained an 8-frame model (its exports and sessions run 8) without a word
    config = default_config("3dc-seg-lite", model_overrides=TINY_3DC, size=[32, 32], clip_length=4, max_window=6,
                            batch_size=1, iterations=1, num_workers=0, seed=0)
    with pytest.raises(UserError, match=r'3dc-seg option clip_length: 3dc-seg-lite runs clips of 8 frames .* got 4; '
                                        r'give "3dc-seg": \{"clip_length": 8\} .*"model_overrides": \{"clip_length": 4\}'):
        train([data_dir], tmp_path / "run", config, progress=False)
    assert not (tmp_path / "run" / "last.pth").exists()


def test_batchnorm_settings_a_3dc_seg_model_has_no_use_for_are_said_to_change_nothing(data_dir, tmp_path, capsys):
    # its BatchNorms are frozen constants, as published: freeze_bn false or bn_affine true changed nothing silently
    config = default_config("3dc-seg-lite", model_overrides=dict(TINY_3DC, clip_length=4), size=[32, 32],
                            clip_length=4, max_window=6, batch_size=1, iterations=1, num_workers=0, seed=0,
                            bn_affine=True)
    train([data_dir], tmp_path / "run", config, progress=False)
    assert "note: bn_affine true: 3dc-seg-lite has no BatchNorm that trains" in capsys.readouterr().err
    train([data_dir], tmp_path / "stcn", tiny_config(iterations=1, bn_affine=True), progress=False)
    assert "has no BatchNorm that trains" not in capsys.readouterr().err


def test_3dc_seg_training_run_checkpoints_and_validates(data_dir, tmp_path):
    pytest.importorskip("vosrt.training.models.c3dseg")
    config = default_config("3dc-seg-lite", model_overrides=dict(TINY_3DC, clip_length=4), size=[32, 32], clip_length=4,
                            max_window=6, batch_size=1, iterations=1, num_workers=0, val_videos=1, clip_overlap=1, seed=0)
    summary = train([data_dir], tmp_path / "run", config, val_data=data_dir, progress=False)
    assert summary["step"] == 1 and "grad_norm" in summary["logs"]
    assert 0.0 <= summary["validation"]["J&F"] <= 1.0
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["config"]["model"] == "3dc-seg-lite"


def test_a_new_run_into_a_folder_holding_a_run_is_refused_and_leaves_it_intact(data_dir, tmp_path):
    config = tiny_config(iterations=1)
    train([data_dir], tmp_path / "run", config, progress=False)
    before = (tmp_path / "run" / "last.pth").read_bytes()
    with pytest.raises(UserError, match="--resume"):
        train([data_dir], tmp_path / "run", config, progress=False)
    assert (tmp_path / "run" / "last.pth").read_bytes() == before


def test_keep_every_keeps_its_steps_when_save_every_does_not_divide_them(data_dir, tmp_path):
    # the kept checkpoints were written only inside save_every's schedule: keep_every 2 with save_every 3
    # kept step 4 (the last) but never step 2
    train([data_dir], tmp_path / "run", tiny_config(iterations=4, save_every=3, keep_every=2), progress=False)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step_0000002.pth", "step_0000004.pth"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "step_0000002.pth", weights_only=True)["step"] == 2


def test_static_pre_training_on_a_dataset_folder_takes_its_training_videos_only(tmp_path):
    # the static stage took every annotated video of a DAVIS folder, its val split (what --val scores)
    # included, and searched a YouTube-VOS folder (train/JPEGImages) for image/mask pairs, refusing it
    import shutil

    davis = tmp_path / "davis"
    train_names = generate_dataset(davis, 2, seed=5, num_frames=4, height=48, width=64)
    generate_dataset(davis, 1, seed=6, num_frames=4, height=48, width=64, split="val")
    config = tiny_config(stage="static", batch_size=1, iterations=1)
    taken = {name.split("/")[0] for _, name in build_dataset(config, [davis]).items}
    assert taken == set(train_names)
    youtube = tmp_path / "youtube" / "train"
    youtube.mkdir(parents=True)
    shutil.copytree(davis / "JPEGImages" / "480p", youtube / "JPEGImages")
    shutil.copytree(davis / "Annotations" / "480p", youtube / "Annotations")
    assert len(build_dataset(config, [tmp_path / "youtube"])) == 3 * 4
    assert train([tmp_path / "youtube"], tmp_path / "run", config, progress=False)["step"] == 1


def test_main_training_on_a_folder_listing_its_splits_in_imagesets_2016_takes_the_train_split_only(tmp_path):
    # DAVIS 2016 ships ImageSets/2016/{train,val}.txt; training looked for lists in 2017 and 480p only and took
    # every video, the val ones that validation (which reads 2016's lists) scores included
    davis = tmp_path / "davis"
    train_names = generate_dataset(davis, 2, seed=5, num_frames=4, height=48, width=64)
    val_names = generate_dataset(davis, 1, seed=6, num_frames=4, height=48, width=64, split="val")
    lists = davis / "ImageSets"
    (lists / "2016").mkdir()
    for split in ("train", "val"):
        (lists / "2017" / f"{split}.txt").rename(lists / "2016" / f"{split}.txt")
    config = tiny_config(batch_size=1, iterations=1)
    taken = {video for _, video in build_dataset(config, [davis]).items}
    assert taken == set(train_names) and not taken & set(val_names)


@pytest.mark.parametrize("options, message", [
    ({"size": 64}, "size should be \\[height, width\\]"),
    ({"iterations": "100"}, "iterations should be an integer ≥ 1, got \"100\""),
    ({"save_every": 0}, "save_every should be an integer ≥ 1, got 0"),
    ({"batch_size": 0}, "batch_size should be an integer ≥ 1"),
    ({"lr": "1e-4"}, "lr should be a number"),
    ({"lr_steps": 1000}, "lr_steps should be a list of integers"),
    ({"model_overrides": [1]}, "model_overrides should be an object"),
    # the model's own fields (a TypeError or RuntimeError traceback from the model's constructor before)
    ({"model_overrides": {"value_dim": "64"}}, "model_overrides: value_dim should be an integer ≥ 1, got \"64\""),
    ({"model_overrides": {"decoder_dims": [16, -8, 8]}}, "model_overrides: decoder_dims should be a list of integers ≥ 1"),
    ({"model_overrides": {"valu_dim": 64}}, "model_overrides: unknown config field\\(s\\) valu_dim of stcn;"),
    ({"stcn": {"top_p": "high"}}, "stcn option top_p should be a number"),
    ({"stcn": {"skip_curriculum": []}}, "stcn option skip_curriculum should be a non-empty list"),
    # an IndexError / ValueError traceback from the sampler or the loss before
    ({"model": "3dc-seg-lite", "3dc-seg": {"clip_length": 0}}, "3dc-seg option clip_length should be a number of "
                                                               "frames ≥ 1, got 0"),
    ({"model": "stem-seg-lite", "stem-seg": {"max_instances": 0}}, "stem-seg option max_instances should be ≥ 1, got 0"),
    ({"model": "3dc-seg-lite", "3dc-seg": {"bce_weight": -1}}, "3dc-seg option bce_weight should be ≥ 0"),  # ignored
    # accepted: bootstrapped on one pixel after end_warm; at the first generated sample, naming the generator's arguments
    ({"stcn": {"top_p": 0}}, "stcn option top_p should be a fraction of the pixels in \\(0, 1\\], got 0"),
    ({"stcn": {"generated_clip_size": [8, 64]}}, "stcn option generated_clip_size should be \\[height, width\\], both "
                                                 "≥ 16, got \\[8, 64\\]"),
    ({"stcn": {"generated_frames": 0}}, "stcn option generated_frames should be ≥ 1, got 0"),
    # a misspelt loss weight was ignored without a word, a string one ended in a TypeError at the first step
    ({"model": "stem-seg-lite", "stem-seg": {"weights": {"lovaz": 2}}}, "stem-seg option weights should map some of "
                                                                        "lovasz, smoothness, .* got {\"lovaz\": 2}"),
    ({"model": "stem-seg-lite", "stem-seg": {"weights": {"seediness": "x"}}}, "stem-seg option weights should map"),
])
def test_config_values_of_the_wrong_type_or_range_are_user_errors_naming_the_file(tmp_path, options, message):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(options))
    with pytest.raises(UserError, match=f"--config {path}: {message}"):
        load_config_file(path, default_config("stcn"))


def test_vosrt_train_rejects_a_config_file_that_is_not_an_object_and_a_zero_batch_size(data_dir, tmp_path, capsys):
    from vosrt.cli import main

    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    common = ["train", "stcn-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(common + ["--config", str(listed)]) == 2
    assert "expected a JSON object of training options" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model_overrides": TINY_STCN, "size": [32, 32], "iterations": 1}))
    assert main(common + ["--config", str(good), "--batch-size", "0"]) == 2
    assert "--batch-size: batch_size should be an integer ≥ 1, got 0" in capsys.readouterr().err


def test_an_unreadable_frame_read_in_a_worker_is_a_one_line_error_naming_the_file(tmp_path):
    root = tmp_path / "data"
    generate_dataset(root, 1, seed=2, num_frames=4, height=48, width=64)
    for frame in (root / "JPEGImages" / "480p").glob("*/*.jpg"):
        frame.write_bytes(b"not a jpeg")
    with pytest.raises(UserError) as error:
        train([root], tmp_path / "run", tiny_config(batch_size=1, num_workers=1), progress=False)
    message = str(error.value)
    assert message.startswith("cannot read frame ") and message.endswith(".jpg") and "\n" not in message


def test_resume_with_options_that_differ_from_the_run_is_refused_instead_of_ignoring_them(data_dir, tmp_path, capsys):
    from vosrt.cli import main

    train([data_dir], tmp_path / "run", tiny_config(iterations=1), progress=False)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(iterations=1).to_dict()))
    common = ["train", "stcn-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--config", str(config),
              "--resume", "--no-progress"]
    assert main(common + ["--lr", "0.5", "--iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (the run has 0.001)" in err and "--iterations 2 (the run" not in err  # iterations may change
    assert main(["train", "3dc-seg-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--resume",
                 "--no-progress"]) == 2
    assert "is a run of stcn-lite, not of a 3dc-seg model" in capsys.readouterr().err
    assert main(common) == 0  # the same options: nothing to do, the run is at its last step
    assert "already at step 1" in capsys.readouterr().out


def test_resume_on_other_data_than_the_run_s_is_refused_naming_both(data_dir, tmp_path, capsys, monkeypatch):
    # --resume --data OTHER went on training the run on another dataset without a word
    from vosrt.cli import main

    other = tmp_path / "other"
    generate_dataset(other, 2, seed=6, num_frames=4, height=48, width=64)
    train([data_dir], tmp_path / "run", tiny_config(iterations=1), progress=False)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(iterations=1).to_dict()))
    command = ["train", "stcn-lite", "--out", str(tmp_path / "run"), "--config", str(config), "--resume",
               "--iterations", "2", "--no-progress", "--data"]
    assert main(command + [str(other)]) == 2
    err = capsys.readouterr().err
    assert f"this command gives others: --data {other} (the run has {data_dir}). Continue it with `vosrt train " \
           f"stcn-lite --data {data_dir} --out " in err and err.count("\n") == 1
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["step"] == 1
    with pytest.raises(UserError) as error:  # the API too; and "generated" is other data
        train(["generated"], tmp_path / "run", tiny_config(iterations=2), resume=True, progress=False)
    assert str(error.value) == (f"--resume: the run in {tmp_path / 'run'} trains on --data {data_dir}, not generated: "
                                f"resume it with --data {data_dir}, or start a new run in another --out folder (--init "
                                f"{tmp_path / 'run' / 'last.pth'} starts it from this run's weights)")
    monkeypatch.chdir(data_dir.parent)  # the same folder, named relative to another working directory
    assert main(command + [data_dir.name]) == 0
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["step"] == 2


def test_resume_on_a_dataset_moved_to_another_folder_goes_on_with_it(data_dir, tmp_path, capsys):
    # a dataset moved (say to a faster disk) was other data: the refusal named a folder no longer there
    import shutil

    from vosrt.cli import main

    old, copy, moved, renamed = (tmp_path / d / "davis" for d in ("old", "copy", "moved", "renamed"))
    shutil.copytree(data_dir, old)
    train([old], tmp_path / "run", tiny_config(iterations=1), progress=False)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(iterations=1).to_dict()))
    command = ["train", "stcn-lite", "--out", str(tmp_path / "run"), "--config", str(config), "--resume",
               "--iterations", "2", "--no-progress", "--data"]
    shutil.copytree(old, copy)
    assert main(command + [str(copy)]) == 2  # a copy of a folder still there is another dataset
    assert f"--data {copy} (the run has {old})" in capsys.readouterr().err
    moved.parent.mkdir()
    old.rename(moved)
    shutil.copytree(moved, renamed.with_name("other"))
    assert main(command + [str(renamed.with_name("other"))]) == 2  # another name: not taken for the moved folder
    assert (f"(the run has {old}) ({old} is not there any more: a moved dataset folder is taken for the run's when "
            f"it keeps its name)") in capsys.readouterr().err
    assert main(command + [str(moved)]) == 0
    assert f"--resume: {old} is not there any more; the run goes on with {moved}" in capsys.readouterr().err
    payload = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert payload["step"] == 2 and payload["data"] == [str(moved)]


def test_resume_naming_another_model_of_the_family_gives_the_command_that_continues_the_run(data_dir, tmp_path, capsys):
    # `vosrt train stcn --resume` on a stcn-lite run said "Leave them out" of MODEL, which cannot be left out
    import shlex

    from vosrt.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(iterations=1).to_dict()))
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--config", str(config),
                 "--no-progress"]) == 0
    assert main(["train", "stcn", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--resume", "--lr", "0.5",
                 "--iterations", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "MODEL stcn (the run has stcn-lite)" in err and "--lr 0.5 (the run has 0.001)" in err
    assert "Leave them out" not in err and err.count("\n") == 1
    command = err.split("Continue it with `")[1].split("`")[0]
    assert command == shlex.join(["vosrt", "train", "stcn-lite", "--data", str(data_dir), "--out",
                                  str(tmp_path / "run"), "--resume", "--iterations", "2"])
    assert main(shlex.split(command)[1:] + ["--no-progress"]) == 0  # the command it gives continues the run
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["step"] == 2


def test_resume_naming_another_family_gives_the_whole_command_that_continues_the_run(data_dir, tmp_path, capsys):
    # `vosrt train 3dc-seg-lite --resume` on a stcn-lite run said "resume it with `vosrt train stcn-lite --resume ...`"
    import shlex

    from vosrt.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(iterations=1).to_dict()))
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--config", str(config),
                 "--no-progress"]) == 0
    assert main(["train", "3dc-seg-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--resume",
                 "--iterations", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a run of stcn-lite, not of a 3dc-seg model" in err and "..." not in err
    command = err.split("continue it with `")[1].split("`")[0]
    assert command == shlex.join(["vosrt", "train", "stcn-lite", "--data", str(data_dir), "--out",
                                  str(tmp_path / "run"), "--resume", "--iterations", "2"])
    assert main(shlex.split(command)[1:] + ["--no-progress"]) == 0  # the command it gives continues the run
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["step"] == 2


def test_vosrt_train_resume_reads_the_run_checkpoint_once_and_does_not_keep_it(data_dir, tmp_path, monkeypatch):
    # the CLI read last.pth to compare the options, then train() read it again (a full model with its
    # optimizer state: twice the time, and train() kept the copy for the whole run)
    from vosrt.cli import main

    train([data_dir], tmp_path / "run", tiny_config(iterations=1), progress=False)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(iterations=1).to_dict()))
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--config", str(config),
                 "--resume", "--iterations", "2", "--no-progress"]) == 0
    assert reads == [str(tmp_path / "run" / "last.pth")]
    from vosrt.training.train import read_resume_checkpoint
    payload = read_resume_checkpoint(tmp_path / "run")
    assert train([data_dir], tmp_path / "run", tiny_config(iterations=2), resume=payload, progress=False)["step"] == 2
    assert payload == {}


def test_a_bare_resume_continues_the_run_to_its_own_last_step_not_the_published_schedule_s(data_dir, tmp_path,
                                                                                              on_optimizer_step, capsys):
    # `vosrt train MODEL --data D --out RUN --resume` without --iterations (or the run's --config) took the
    # published schedule's 150,000 steps as the run's end: a stopped 3-step run trained on, far past its plan
    import signal

    from vosrt.cli import main

    run = tmp_path / "run"
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_config(iterations=3, save_every=2).to_dict()))
    on_optimizer_step(1, lambda: signal.raise_signal(signal.SIGINT))
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(run), "--config",
                 str(tmp_path / "tiny.json"), "--no-progress"]) == 130
    assert "stopped at step 1 of 3" in capsys.readouterr().err
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "to step 3 " in capsys.readouterr().out
    assert torch.load(run / "last.pth", weights_only=False)["train_config"]["save_every"] == 2
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(run), "--resume", "--iterations", "4",
                 "--no-progress"]) == 0  # given on the command line, it still changes
    assert "to step 4 " in capsys.readouterr().out


def test_resuming_a_finished_run_keeps_its_config_and_prints_the_validation_asked_for(data_dir, tmp_path, capsys):
    # config.json took the lower --iterations of a resume that trained nothing, and --val's J&F was
    # computed but not printed
    from vosrt.cli import main

    config = tiny_config(iterations=2, val_videos=1, val_size=[48, 64])
    train([data_dir], tmp_path / "run", config, progress=False)
    before = (tmp_path / "run" / "config.json").read_text()
    (tmp_path / "tiny.json").write_text(json.dumps(config.to_dict()))
    assert main(["train", "stcn-lite", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--config",
                 str(tmp_path / "tiny.json"), "--resume", "--iterations", "1", "--val", str(data_dir),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the run in" in out and "already at step 2" in out and "validation: J " in out
    assert (tmp_path / "run" / "config.json").read_text() == before


def test_a_diverging_loss_is_a_user_error_and_keeps_the_last_finite_checkpoint(data_dir, tmp_path):
    with pytest.raises(UserError, match=r"loss became nan at step \d+: lower the learning rate \(lr 1e\+30\)"):
        train([data_dir], tmp_path / "run", tiny_config(lr=1e30, iterations=6), progress=False)
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_validation_of_a_davis_folder_scores_its_val_split_not_its_training_videos(tmp_path):
    # --val DAVIS2017/ (the folder --data trains on, through its train split) scored its first videos by
    # name, training videos among them
    from vosrt.training.validate import validate

    trained = generate_dataset(tmp_path, 1, seed=5, num_frames=4, height=32, width=48)
    generate_dataset(tmp_path, 1, seed=6, num_frames=4, height=32, width=48, split="val")
    for frame in (tmp_path / "JPEGImages" / "480p" / trained[0]).glob("*.jpg"):
        frame.write_bytes(b"a training video validation must not read")
    model = build_model("stcn-lite", **TINY_STCN).eval()
    result = validate(model, tiny_config(val_size=[32, 48]), tmp_path)
    assert set(result) == {"J", "F", "J&F"}


def test_validation_shows_its_progress_over_the_frames(tmp_path, capsys):
    # validation printed nothing while it ran (minutes on a CPU: the training bar stood still meanwhile)
    pytest.importorskip("tqdm")   # the bar (without it: a line a second, none in this short run)
    from vosrt.training.validate import validate

    generate_dataset(tmp_path, 2, seed=5, num_frames=3, height=32, width=48)
    validate(build_model("stcn-lite", **TINY_STCN).eval(), tiny_config(val_size=[32, 48]), tmp_path, progress=True)
    assert "validate 2 video(s): 100%" in capsys.readouterr().err.replace("\r", "\n")
    validate(build_model("stcn-lite", **TINY_STCN).eval(), tiny_config(val_size=[32, 48]), tmp_path)
    assert capsys.readouterr().err == ""


def test_validation_scores_a_video_whose_objects_enter_later(tmp_path):
    # generated data has objects entering later in 30% of its videos; validation gives each where it first
    # appears, and scoring by the first frame's objects raised UnknownObjectError on it, ending the run
    from vosrt.training.validate import validate

    generate_dataset(tmp_path, 1, seed=5, num_frames=5, height=32, width=48, num_objects=2, appear_later_fraction=1.0)
    model = build_model("stcn-lite", **TINY_STCN).eval()
    result = validate(model, tiny_config(val_size=[32, 48]), tmp_path)
    assert set(result) == {"J", "F", "J&F"} and 0.0 <= result["J&F"] <= 1.0


def _whole_video_validation(model, config, root) -> dict:
    """Validation as it was: each video read whole, streamed with its results kept, scored by score_sequence."""
    from vosrt.sdk import metrics
    from vosrt.sdk.streaming import stream
    from vosrt.training.validate import session_for, validation_folder

    folder = validation_folder(root)
    session = session_for(model, config)
    scores = []
    for video in folder.videos:
        frames, labels = folder.load_video(video)
        masks = {}
        for obj, index in (folder.first_appearance(video) if session.takes_mask else {}).items():
            truth = labels[index] if labels[index] is not None else np.zeros(frames[index].shape[:2], np.uint8)
            masks.setdefault(index, np.zeros_like(truth))[truth == obj] = obj
        session.reset()
        results = stream(session, frames, masks=masks, keep_results=True).results
        predicted = [done.labels for done in sorted(results, key=lambda d: d.index)]
        scores += metrics.score_sequence(config.family, predicted, labels, name=video)
    return metrics.summarize(scores)


@pytest.mark.parametrize("model_name", ["stcn-lite", "3dc-seg-lite", "stem-seg-lite"])
def test_validation_streamed_frame_by_frame_scores_what_whole_videos_score(tmp_path, model_name):
    import cv2

    from vosrt.sdk.masks import read_label_png
    from vosrt.training.validate import validate

    names = generate_dataset(tmp_path, 3, seed=9, num_frames=6, height=48, width=64, num_objects=2,
                             appear_later_fraction=0.5)
    masks = tmp_path / "Annotations" / "480p"
    for png in sorted((masks / names[1]).glob("*.png"))[1::2]:  # YouTube-VOS: frames without annotation
        png.unlink()
    for png in (masks / names[2]).glob("*.png"):  # DAVIS 2016: 0/255 grey masks
        cv2.imwrite(str(png), np.where(read_label_png(png) > 0, 255, 0).astype(np.uint8))
    tiny = {"stcn-lite": (TINY_STCN, {}, [48, 64]),
            "3dc-seg-lite": (dict(TINY_3DC, clip_length=4), dict(clip_length=4, clip_overlap=1), [64, 64]),
            "stem-seg-lite": (dict(d2conv_heads=[], clip_length=4, fpn_channels=16, head_channels=[16, 16, 16, 8],
                                   semseg_channels=[16, 16, 16, 8], norm_groups=4),
                              dict(clip_length=4, clip_overlap=2, min_seediness=0.0), [96, 128])}
    overrides, options, size = tiny[model_name]
    config = default_config(model_name, model_overrides=overrides, val_size=size, **options)
    model = build_model(model_name, **overrides).eval()
    assert validate(model, config, tmp_path) == _whole_video_validation(model, config, tmp_path)


def test_validation_memory_does_not_grow_with_the_video_length(tmp_path):
    # validation read a video's frames and annotations whole and kept every prediction until its end: what it
    # held grew by about 5 bytes a pixel with every frame (a 480p DAVIS video of 100 frames: 150 MB)
    import tracemalloc

    from vosrt.training.validate import validate

    model = build_model("stcn-lite", **TINY_STCN).eval()
    config = tiny_config(val_size=[64, 96])
    peaks = {}
    for frames in (6, 6, 30):  # the first run imports and warms up
        generate_dataset(tmp_path / str(frames), 1, seed=5, num_frames=frames, height=64, width=96)
        tracemalloc.start()
        validate(model, config, tmp_path / str(frames))
        peaks[frames] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # 24 more frames of 64x96: about 720 kB more when held whole
    assert peaks[30] - peaks[6] < 100_000, peaks


def test_validation_gives_no_void_object_where_255_marks_void_beside_objects(tmp_path):
    # 255 beside object ids is void (DAVIS 2017), but validation gave it to the tracker as an object: its
    # prediction then held id 255, which the scores refused (UnknownObjectError) and validation stopped
    from vosrt.sdk.masks import read_label_png, write_label_png
    from vosrt.training.validate import given_objects, validate, validation_folder

    names = generate_dataset(tmp_path, 1, seed=9, num_frames=5, height=48, width=64, num_objects=2)
    for png in sorted((tmp_path / "Annotations" / "480p" / names[0]).glob("*.png")):
        labels = read_label_png(png)
        labels[:4, :] = 255   # a void band along the top
        write_label_png(png, labels)
    given = given_objects(validation_folder(tmp_path), names[0])
    assert sorted(obj for objects in given.values() for obj in objects) == [1, 2]
    model = build_model("stcn-lite", **TINY_STCN).eval()
    result = validate(model, tiny_config(val_size=[48, 64]), tmp_path)
    assert 0.0 <= result["J&F"] <= 1.0


def test_a_model_given_twice_that_disagrees_gets_the_whole_command_with_one_model(tmp_path, capsys):
    # it said "give the model once: `vosrt train stcn`", no command to run (no --data, no --out)
    import shlex

    from vosrt.cli import build_parser, main

    given = ["--data", str(tmp_path / "my data"), "--out", str(tmp_path / "run"), "--iterations", "3",
             "--size", "32", "32", "--amp"]
    assert main(["train", "stcn-lite", "--model", "stcn", *given]) == 2
    err = capsys.readouterr().err
    hint = err.split("give the model once: `")[1].split("`")[0]
    assert shlex.split(hint) == ["vosrt", "train", "stcn", *given], err
    args = build_parser()[0].parse_args(shlex.split(hint)[1:])
    assert (args.family, args.model, args.size, args.amp) == ("stcn", None, [32, 32], True)
    assert not (tmp_path / "run").exists()


def test_the_run_config_is_renamed_into_place_not_written_through_a_link_planted_there(tmp_path):
    # config.json was written in place: a full disk left a resumed run's config half written, and a link planted
    # at run/config.json had the run write over the file it points to
    from vosrt.training.train import _write_run_config, default_config

    run, outside = tmp_path / "run", tmp_path / "outside.txt"
    run.mkdir()
    outside.write_text("mine")
    (run / "config.json").symlink_to(outside)
    _write_run_config(run, default_config("stcn-lite", iterations=3))
    assert outside.read_text() == "mine"
    assert not (run / "config.json").is_symlink()
    assert json.loads((run / "config.json").read_text())["iterations"] == 3
