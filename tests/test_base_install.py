"""A base install (`pip install vosrt`, no extras): every command either works or says which extra to
install, never a traceback; and the extra it names really provides what was missing.

Two installs are tried: the real one (a fresh virtual environment with `pip install <this checkout>`,
marked slow: about 2 minutes) and, in the default run, this environment with the extras' packages made
unimportable (a finder that answers ModuleNotFoundError for them, as Python does when they are absent).
"""
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# top-level modules that only the extras install (onnx is a base dependency: the CPU operators rewrite
# plugin-form graphs with it)
EXTRAS_ONLY = ("torch", "onnxscript", "tensorrt", "cuda", "tensorboard", "tqdm")

HIDE_EXTRAS = f"""
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
from vosrt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _commands(tmp: Path) -> dict[str, tuple[list[str], int, str]]:
    """command -> (arguments, expected exit code, text expected in the output)."""
    return {
        "train": (["train", "stcn-lite", "--data", "generated", "--out", str(tmp / "run")], 2, "[train]'"),
        "export": (["export", "stcn-lite", "--random-weights", "--out", str(tmp / "pkg")], 2, "[export]'"),
        "check": (["check", "stcn-lite"], 2, "[export]'"),
        "build": (["build", "stcn-lite"], 2, "[trt]'"),
        "bench-torch": (["bench", "stcn-lite", "--frames", "1", "--warmup", "0", "--compare", "torch"], 2,
                        "[train]'"),
        "bench": (["bench", "stcn-lite", "--frames", "2", "--warmup", "0"], 0, "FPS"),
        "demo": (["demo", "--frames", "3", "--out", str(tmp / "demo")], 0, "J&F"),
        "eval": (["eval", "--pred", str(tmp / "demo" / "masks"), "--gt", str(tmp / "truth")], 0, "J&F"),
        "help": (["--help"], 0, "export"),
    }


def _extras_in_pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_hidden_modules_are_not_base_dependencies():
    """Hiding a base dependency would test an install that cannot exist (and pass only while a cache
    made with it is warm)."""
    base = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-")
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert base and not base & set(EXTRAS_ONLY), base & set(EXTRAS_ONLY)


def _check(name, result, code, expected):
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, (name, output)
    assert expected in output, (name, output)
    hints = re.findall(r"pip install (?:-e )?'([^']*)\[(\w+)\]'", output)
    for target, extra in hints:
        assert extra in _extras_in_pyproject(), output   # the hint names an extra that exists
        assert target in ("vosrt", str(ROOT)), output     # of vosrt, or of the checkout it runs from


def _run_all(vosrt_command: list[str], tmp_path: Path, env=None):
    # demo runs before eval, which scores the demo's masks against a copy of them (the same folder is refused)
    import shutil

    for name, (arguments, code, expected) in _commands(tmp_path).items():
        if name == "eval":
            shutil.copytree(tmp_path / "demo" / "masks", tmp_path / "truth")
        result = subprocess.run(vosrt_command + arguments, capture_output=True, text=True, cwd=tmp_path,
                                env=env, timeout=600)
        _check(name, result, code, expected)


def test_without_the_extras_every_command_works_or_names_the_extra_to_install(tmp_path):
    _run_all([sys.executable, "-c", HIDE_EXTRAS], tmp_path)


def test_the_install_hint_names_the_checkout_vosrt_runs_from_or_else_the_package(tmp_path):
    import shlex

    from vosrt.sdk.errors import install_command

    # the README installs with `pip install -e .`: 'vosrt[trt]' would be looked for on PyPI instead
    command = shlex.split(install_command("trt"))
    assert command == ["pip", "install", "-e", f"{ROOT}[trt]"]
    # an installed copy (site-packages/vosrt/sdk/errors.py, no checkout around it) names the package
    installed = tmp_path / "site-packages" / "vosrt" / "sdk"
    installed.mkdir(parents=True)
    (installed / "errors.py").write_text((ROOT / "sdk" / "errors.py").read_text())
    probe = subprocess.run([sys.executable, "-c", "import errors; print(errors.install_command('live'))"],
                           cwd=installed, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "pip install 'vosrt[live]'"


def test_the_named_extras_provide_the_missing_packages():
    extras = _extras_in_pyproject()
    names = {extra: {re.split(r"[<>=!~ \[]", r)[0].lower() for r in requirements}
             for extra, requirements in extras.items()}
    assert "torch" in names["train"]
    assert {"torch", "onnx", "onnxscript"} <= names["export"]     # export and check need all three
    assert "tensorrt" in names["trt"]


@pytest.mark.slow
def test_a_fresh_base_install_runs_every_command_or_names_the_extra(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True,
                             timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0           # really a base install
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run_all([str(env_dir / "bin" / "vosrt")], work, env=env)
