"""Maps the top-level folders onto the one import namespace ``vosrt``.

``sdk/`` -> ``vosrt.sdk``, ``training/`` -> ``vosrt.training``, ``export/`` -> ``vosrt.export``;
sub-packages are discovered so that a new folder with an ``__init__.py`` needs no edit here.
The CPU operators' C++ sources (``plugins/cpu`` and the kernel headers they share) are copied into the
built package as ``vosrt/sdk/cpu_ops_src``, from which ``vosrt.sdk.cpu_ops`` compiles them on first use.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
MAPPED = {"vosrt": "vosrt", "vosrt.sdk": "sdk", "vosrt.training": "training", "vosrt.export": "export"}


def _discover():
    packages, package_dir = [], {}
    for name, folder in MAPPED.items():
        package_dir[name] = folder
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            if any(part.startswith((".", "_")) or part == "build" for part in rel.parts):
                continue
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages, package_dir


# (folder under plugins/, file patterns) shipped for the first-use build of libvosrt_cpu_ops.so
CPU_OPS_SOURCES = [("cpu/include", "*.h"), ("cpu/src", "*"), ("kernels/include", "*.h"), ("kernels/src", "*.h")]


class BuildPyWithCpuOpsSources(build_py):
    """build_py that also copies the CPU operators' sources into the package."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "vosrt" / "sdk" / "cpu_ops_src"
        for folder, pattern in CPU_OPS_SOURCES:
            for source in sorted((ROOT / "plugins" / folder).glob(pattern)):
                if source.is_file():
                    (target / folder).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target / folder / source.name)


packages, package_dir = _discover()
setup(
    cmdclass={"build_py": BuildPyWithCpuOpsSources},
    packages=packages,
    package_dir=package_dir,
    package_data={"vosrt.sdk": ["models/*/*.json", "models/*/*.onnx", "models/*/*.data", "models/*/*.pth",
                               "textures/*", "live/*.html"],
                  "vosrt.training": ["configs/*.json"]},
    include_package_data=False,
)
