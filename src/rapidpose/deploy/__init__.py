"""Deployment: ONNX / OpenVINO export with a parity check, and INT8 quantization with its report."""
