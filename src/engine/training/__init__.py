"""Synthetic data, LightGBM training, ONNX export and parity checks."""
