"""Chinese-CLIP conversion toolchain: checkpoint → ONNX → int8 → ncnn, verified by parity."""

__version__ = "0.6.0"
