"""The inference backends behind one interface: the same options, limits and refusals on ONNX Runtime and
the torch backend, on the shipped stcn-lite package (real sessions, real checkpoint)."""
import gc
import weakref

import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.backends import open_backend
from vosrt.sdk.package import load_package

torch = pytest.importorskip("torch")

BACKENDS = ("onnxruntime", "torch")


@pytest.fixture(scope="module")
def shipped():
    return load_package("stcn-lite")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [-1, 2.5, "2"])
def test_a_bad_thread_count_is_one_user_error_on_every_backend(shipped, backend, threads):
    # torch used to raise RuntimeError from set_num_threads; ONNX Runtime took -1 and truncated 2.5 silently
    with pytest.raises(UserError, match=f"threads: expected a whole number .* got {threads!r}"):
        open_backend(shipped, backend, threads=threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this PyTorch sees a CUDA device")
def test_torch_on_cuda_without_a_cuda_device_is_a_user_error():
    # used to be torch's AssertionError "Torch not compiled with CUDA enabled", a traceback on the command line
    with pytest.raises(UserError, match="device='cuda'.*sees no CUDA device.*--device cpu"):
        vosrt.sdk.load("stcn-lite", backend="torch", device="cuda")


def test_a_recorded_checkpoint_that_is_gone_says_it_is_the_packages_and_how_to_give_one(shipped, tmp_path):
    # a package exported from RUN/last.pth records that path; after the run folder moved, the torch backend
    # said only "checkpoint not found: RUN/last.pth", a file the user never named
    import json
    import shutil

    package = tmp_path / "pkg"
    shutil.copytree(shipped.path, package, ignore=lambda folder, names: [n for n in names if n.endswith(".pth")])
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["source"] = {"checkpoint": str(tmp_path / "run" / "last.pth")}
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"records checkpoint .*last\.pth .*not there.*--checkpoint PATH"):
        vosrt.sdk.load(package, backend="torch")
    shutil.copytree(shipped.path, tmp_path / "run", ignore=lambda folder, names: [n for n in names if n != "checkpoint.pth"])
    (tmp_path / "run" / "checkpoint.pth").rename(tmp_path / "run" / "last.pth")
    vosrt.sdk.load(package, backend="torch").close()


def test_closing_a_torch_session_releases_its_model():
    # the torch backend had no close(): a closed session kept the model (its GPU memory on CUDA) and still ran
    tracker = vosrt.sdk.load("stcn-lite", backend="torch")
    backend = tracker.backend
    model = weakref.ref(backend.specs["segment"].module)
    tracker.close()
    gc.collect()
    assert model() is None
    with pytest.raises(UserError, match="torch backend .* was closed"):
        backend.run("encode_key", {"image": np.zeros((1, 3, 128, 224), np.float32)})


def test_a_closed_onnxruntime_backend_says_so(shipped):
    backend = open_backend(shipped, "onnxruntime", threads=1)
    backend.close()
    with pytest.raises(UserError, match="onnxruntime backend .* was closed"):   # was KeyError: 'encode_key'
        backend.run("encode_key", {"image": np.zeros((1, 3, 128, 224), np.float32)})


def test_the_plugin_form_asked_of_a_package_without_one_is_refused(stcn_package):
    # it ran the portable form without a word, though form='plugin' promises the plugin form or an error
    with pytest.raises(UserError, match=r"form='plugin': package .* has no plugin form \(available forms: portable\)"):
        vosrt.sdk.load(stcn_package, form="plugin", threads=1)


def test_a_wrapped_backend_keeps_the_object_limit_of_the_one_it_wraps(shipped):
    # vosrt bench times a backend through a DelegatingBackend; Backend.max_objects (None) used to hide the
    # wrapped backend's limit, so a tracker over a timed TensorRT backend took 32 objects for engines built for 8
    from vosrt.sdk.cli_bench import TimedBackend

    inner = open_backend(shipped, "onnxruntime", threads=1)
    inner.max_objects = 3    # what a TensorRT backend sets from its engines' profile (vosrt build --max-objects)
    tracker = vosrt.sdk.open_session(TimedBackend(inner), shipped)
    assert tracker.backend.max_objects == 3 and tracker.max_objects == 3
    tracker.close()


def test_the_memory_bank_fits_the_memory_frames_the_engines_were_built_for(shipped):
    # vosrt build --max-memory-frames N bounds the segment engine's memory axis; the tracker used to allocate
    # the package's 20 frames regardless and the engine refused the longer memory mid-stream (a ValueError
    # traceback once the bank held N + 1 frames). Like max_objects: the default is lowered, more is refused.
    from vosrt.sdk.cli_bench import TimedBackend

    inner = open_backend(shipped, "onnxruntime", threads=1)
    inner.max_memory_frames = 4   # what a TensorRT backend reads from its build record
    tracker = vosrt.sdk.open_session(TimedBackend(inner), shipped)
    assert tracker.memory.capacity == 4
    assert vosrt.sdk.open_session(inner, shipped, memory_capacity=3).memory.capacity == 3
    with pytest.raises(UserError, match="memory_capacity=6: .* at most 4 memory frames.*--max-memory-frames 6"):
        vosrt.sdk.open_session(inner, shipped, memory_capacity=6)   # (closes the backend, as a failed open does)


def test_an_option_of_another_backend_names_the_backend_and_flag_it_belongs_to(shipped):
    # was "onnxruntime backend: unknown option(s) checkpoint"
    with pytest.raises(UserError, match=r"onnxruntime backend: unknown option\(s\) checkpoint; checkpoint is an "
                                        r"option of backend='torch' \(command line: --backend torch --checkpoint CK\)"):
        vosrt.sdk.load(shipped.path, backend="onnxruntime", checkpoint=shipped.checkpoint)
    with pytest.raises(UserError, match=r"torch backend: unknown option\(s\) form, typo; form is an option of "
                                        r"backend='onnxruntime'$"):
        open_backend(shipped, "torch", form="portable", typo=1)


def test_a_misspelt_setting_is_named_with_the_closest_known_name(shipped):
    # was "onnxruntime backend: unknown option(s) mem_evry": the backend's word, for a session setting's typo
    with pytest.raises(UserError, match=r"^mem_evry: not a setting of stcn packages nor an option of any backend "
                                        r"\(did you mean mem_every\?\); settings: mem_every, .*; backend options: "
                                        r"device, threads, .*form"):
        vosrt.sdk.load(shipped.path, mem_evry=3)
    with pytest.raises(UserError, match=r"^threds, zzz: .* \(did you mean threads for threds\?\)"):
        vosrt.sdk.load(shipped.path, threds=1, zzz=2)


def test_the_torch_backend_declares_and_checks_its_inputs_as_onnxruntime_does(shipped):
    # it had no input_shape(): sessions skipped their resolution check, and run() took inputs ONNX Runtime refuses
    ort_backend, torch_backend = (open_backend(shipped, name, threads=1) for name in BACKENDS)
    try:
        for graph in shipped.graphs:
            assert torch_backend.output_names(graph) == ort_backend.output_names(graph)
            for name in ort_backend.input_names(graph):
                declared = ort_backend.input_shape(graph, name)
                shape = torch_backend.input_shape(graph, name)
                assert (shape is None) == (declared is None), (graph, name)
                if declared is not None:   # the same static dimensions; dynamic ones by name on both
                    assert [d if isinstance(d, int) else "dynamic" for d in shape] == \
                        [d if isinstance(d, int) else "dynamic" for d in declared], (graph, name, shape, declared)
                if name != "top_k":
                    assert torch_backend.input_dtype(graph, name) == ort_backend.input_dtype(graph, name)
        image = np.zeros((1, 3, shipped.height, shipped.width), np.float32)
        for bad in (image[:, :, :-16], image.astype(np.float64), image[0]):
            with pytest.raises(Exception):
                ort_backend.run("encode_key", {"image": bad})
            with pytest.raises(UserError, match=r"torch backend: input 'image' of graph 'encode_key': expected "
                                                 rf"float32 \[1, 3, {shipped.height}, {shipped.width}\]"):
                torch_backend.run("encode_key", {"image": bad})
        with pytest.raises(UserError, match="expected float32"):
            torch_backend.run("encode_key", {"image": torch.zeros(image.shape, dtype=torch.float16)})
        assert set(torch_backend.run("encode_key", {"image": image})) == set(ort_backend.output_names("encode_key"))
    finally:
        ort_backend.close()
        torch_backend.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_thread_count_refusal_names_the_values_every_backend_takes(shipped, backend):
    # it said ">= 1 (or None ...)" while threads=0 (the runtime's default, as None) is taken
    open_backend(shipped, backend, threads=0).close()
    with pytest.raises(UserError) as refused:
        open_backend(shipped, backend, threads=-1)
    assert ">= 0 (0 or None: the runtime's default)" in str(refused.value), str(refused.value)


def test_a_model_in_memory_on_another_device_is_named_as_such(shipped):
    # with device='auto' the refusal said "device: expected 'auto', 'cpu' or 'cuda', got 'meta'" to a caller
    # who passed no device
    from vosrt.sdk.backends.torch_backend import TorchBackend
    from vosrt.training.models import load_checkpoint

    model, _ = load_checkpoint(shipped.checkpoint)
    with pytest.raises(UserError, match="the model given is on device 'meta'"):
        TorchBackend(shipped, model=model.to("meta"))


def test_the_plugin_form_on_cuda_is_refused_by_the_option_check_as_by_the_backend(shipped):
    # vosrt bench and vosrt run check options before opening anything; the check let form='plugin' with
    # device='cuda' through (only the constructor refused it), and on a CPU-only onnxruntime it blamed the
    # missing onnxruntime-gpu, though no install makes that pair run
    from vosrt.sdk.backends import check_backend

    with pytest.raises(UserError, match=r"form='plugin' runs its custom operators on the CPU; use device='cpu'"):
        check_backend(shipped, "onnxruntime", form="plugin", device="cuda")
    assert check_backend(shipped, "onnxruntime", form="plugin", device="cpu") == "onnxruntime"


def test_a_torch_buffer_too_large_to_allocate_is_a_memory_error_as_on_onnxruntime(shipped):
    # the memory bank turns MemoryError into an error naming memory_capacity; torch raised its allocator's
    # RuntimeError (or torch.OutOfMemoryError on CUDA) instead, which reached the caller as it was
    from vosrt.sdk.backends.onnxruntime import OnnxRuntimeBackend
    from vosrt.sdk.backends.torch_backend import TorchBackend
    from vosrt.sdk.memory import MemoryBank

    impossible = (1, 2**20, 2**30)   # 4 PiB of float32: more than any address space, whatever the overcommit
    for backend in (TorchBackend(shipped, device="cpu"), OnnxRuntimeBackend(shipped, device="cpu")):
        try:
            with pytest.raises(MemoryError):
                backend.zeros(impossible)
            bank = MemoryBank(backend, capacity=2, hw=2**29)
            with pytest.raises(UserError, match=r"memory_capacity: a memory bank of 2 frames needs a 4194304\.0 GiB "):
                bank._allocate(impossible)   # the bank's buffers at a capacity no machine has
        finally:
            backend.close()


def test_a_package_whose_plugin_form_reads_beyond_the_operators_top_k_runs_the_portable_form(tmp_path, capfd):
    # exported before vosrt export refused top_k > 64: the plugin form (the default on the CPU) failed with a
    # KernelError mid-stream once the memory held more entries than that
    import json
    import shutil

    from sdk_packages import tiny_package

    package = tmp_path / "top-k-100"
    shutil.copytree(tiny_package("stcn", forms=("plugin", "portable")), package)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["streaming"]["top_k"] = 100
    (package / "manifest.json").write_text(json.dumps(manifest))
    backend = open_backend(load_package(package), "onnxruntime", threads=1)
    try:
        assert backend.forms["segment"] == "portable"
    finally:
        backend.close()
    assert "reads with top_k 100 (streaming.top_k), beyond the 64 its L2MemoryReadout takes; running the portable " \
           "form" in capfd.readouterr().err
    with pytest.raises(UserError, match=r"top_k 100 .*run the portable form \(form='portable'\), or export the "
                                        r"package again with --top-k 64 or less"):
        vosrt.sdk.load(package, form="plugin", threads=1)


def test_a_cuda_provider_that_cannot_start_runs_on_the_cpu_when_auto_and_is_refused_when_asked(shipped, monkeypatch,
                                                                                              capsys):
    # onnxruntime-gpu lists CUDAExecutionProvider whenever it was built with it; without a usable GPU its sessions
    # fall back to the CPU with a log line, and the backend went on making CUDA tensors for them (every upload
    # failed, or "cuda" was reported of a CPU run). The listing is what a GPU build without a working GPU says; the
    # sessions are this onnxruntime's own, which cannot start the CUDA provider.
    import onnxruntime as ort

    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    with pytest.raises(UserError, match=r"could not start its CUDA provider .*device='cpu'"):
        vosrt.sdk.load(shipped, backend="onnxruntime", providers=[("CUDAExecutionProvider", {"device_id": 0}),
                                                                  "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with vosrt.sdk.load(shipped, backend="onnxruntime") as session:
        assert session.backend.device == "cpu" and not session.backend.bound
        mask = np.zeros((64, 96), np.uint8)
        mask[20:40, 30:60] = 1
        assert session.push(frame, mask)[0].labels.shape == (64, 96)
    assert "could not start its CUDA provider (see its messages above); running on the CPU" in capsys.readouterr().err
    with pytest.raises(UserError, match="could not start its CUDA provider"):
        vosrt.sdk.load(shipped, backend="onnxruntime", device="cuda")
