"""The PyTorch backend: runs a ViTPose module on batches of crops."""
from __future__ import annotations

import numpy as np

from ..errors import InputError, require


def resolve_device(device: str) -> str:
    torch = require("torch", "torch")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' was asked for but this torch build sees no CUDA GPU: "
                         f"use --device cpu, or install a CUDA build of torch")
    return device


class TorchRuntime:
    def __init__(self, model, device: str = "cpu", batch_size: int = 64):
        self.torch = require("torch", "torch")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.dtype = next(model.parameters()).dtype

    @property
    def num_keypoints(self) -> int:
        return self.model.num_keypoints_of(self.model.dataset_index)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(crops[start:start + self.batch_size]).to(self.device, self.dtype)
                out.append(self.model(x).float().cpu().numpy())
        if not out:
            h, w = self.model.cfg.heatmap_size[::-1]
            return np.zeros((0, self.num_keypoints, h, w), np.float32)
        return np.concatenate(out)
