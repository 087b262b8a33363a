"""Inference: sliding windows, ONNX export, prediction of a folder, class colours."""
