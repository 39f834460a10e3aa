"""vosrt.sdk: the runtime. Streams frames through ONNX Runtime or TensorRT model packages.

Never imports torch at module level: a deployment host needs numpy, opencv and one inference runtime.
"""
from vosrt.sdk.errors import UserError

__all__ = ["UserError"]
