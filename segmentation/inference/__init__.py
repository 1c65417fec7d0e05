"""Inference: predictors (TTA, sliding window, files) and export (ONNX, TorchScript)."""
