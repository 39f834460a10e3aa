"""Maps the top-level folders onto the one import namespace ``vosrt``.

``sdk/`` -> ``vosrt.sdk``, ``training/`` -> ``vosrt.training``, ``export/`` -> ``vosrt.export``;
sub-packages are discovered so that a new folder with an ``__init__.py`` needs no edit here.
"""
from pathlib import Path

from setuptools import setup

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


packages, package_dir = _discover()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"vosrt.sdk": ["models/*/*.json", "models/*/*.onnx", "models/*/*.data", "models/*/*.pth",
                               "textures/*", "live/*.html"],
                  "vosrt.training": ["configs/*.json"]},
    include_package_data=False,
)
