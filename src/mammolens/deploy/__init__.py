"""Deployment: the Predictor (torch | onnxruntime), batch prediction, ONNX export, the REST service."""
