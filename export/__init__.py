"""vosrt.export: PyTorch -> ONNX (plugin and portable forms) -> model packages and TensorRT engines."""
