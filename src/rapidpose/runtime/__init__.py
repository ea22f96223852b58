"""Backends behind one small protocol: normalised crops (N, 3, H, W) float32 in, heatmaps out."""
from .torch_runtime import TorchRuntime

__all__ = ["TorchRuntime"]
