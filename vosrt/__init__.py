"""vosrt: deploy video object segmentation networks with ONNX Runtime and TensorRT.

The namespace joins three folders: ``vosrt.sdk`` (runtime), ``vosrt.training`` (PyTorch models and
training) and ``vosrt.export`` (ONNX export and TensorRT engine building).
"""
__version__ = "0.1.0"
