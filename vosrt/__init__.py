"""vosrt: deploy video object segmentation networks with ONNX Runtime and TensorRT.

The namespace joins three folders: ``vosrt.sdk`` (runtime), ``vosrt.training`` (PyTorch models and
training) and ``vosrt.export`` (ONNX export and TensorRT engine building).
"""
from pathlib import Path as _Path

__version__ = "0.1.0"

# Imported from a source checkout that was not installed (a bare GPU machine running
# samples/gpu_check.py has PyTorch but no pip install of this repository): the checkout's root joins the
# package path, so that vosrt.sdk, vosrt.training and vosrt.export are its sdk/, training/ and export/
# folders, as setup.py maps them in an install. An installed vosrt has no setup.py beside it.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "setup.py").is_file() and (_checkout / "sdk" / "__init__.py").is_file():
    __path__.append(str(_checkout))
del _Path, _checkout
