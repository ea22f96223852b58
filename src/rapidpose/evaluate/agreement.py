"""How far a model's outputs are from a reference's on the same crops: heatmap cosine similarity and
SQNR, and the OKS between the keypoints decoded from each. `rapidpose quantize` reports INT8 against
FP32 with them, `rapidpose bench --agreement` any backend and precision against the fp32 torch model."""
from __future__ import annotations

import numpy as np


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Cosine similarity and SQNR (dB) of `other` against `reference`, over all values."""
    a, b = reference.astype(np.float64).ravel(), other.astype(np.float64).ravel()
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    noise = float(((a - b) ** 2).sum())
    sqnr = float(10 * np.log10((a ** 2).sum() / noise)) if noise > 0 else float("inf")
    return {"cosine": round(cosine, 6), "sqnr_db": round(sqnr, 2)}


def keypoint_oks(heatmaps_a: np.ndarray, heatmaps_b: np.ndarray, sigmas) -> np.ndarray:
    """OKS between the keypoints decoded from two sets of heatmaps of the same crops, per crop. The
    person's area is the unpadded box's in heatmap pixels (the crop is the box grown by 1.25)."""
    from rapidpose.topdown.decode import decode_heatmaps

    n, k, h, w = heatmaps_a.shape
    center = np.tile(np.array([[w / 2, h / 2]], np.float32), (n, 1))
    scale = np.tile(np.array([[w / 200, h / 200]], np.float32), (n, 1))  # heatmap pixels in, heatmap pixels out
    a, _ = decode_heatmaps(heatmaps_a, center, scale)
    b, _ = decode_heatmaps(heatmaps_b, center, scale)
    area = w * h / 1.25 ** 2
    sigmas = np.asarray(sigmas if sigmas is not None else [0.05] * k, np.float64)
    d2 = ((a - b) ** 2).sum(-1)
    return np.exp(-d2 / (2 * area * (2 * sigmas) ** 2)).mean(-1)


def against_reference(reference: np.ndarray, heatmaps: np.ndarray, sigmas) -> dict:
    """`heatmaps` of N crops against the `reference` heatmaps of the same crops: agreement's cosine and
    SQNR, and the mean and least OKS of the decoded keypoints, over the N people."""
    oks = keypoint_oks(reference, heatmaps, sigmas)
    return {**agreement(reference, heatmaps), "oks_mean": round(float(oks.mean()), 4),
            "oks_min": round(float(oks.min()), 4), "people": len(heatmaps)}


def fp32_heatmaps(model, device: str, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The heatmaps of `crops` from the float32 torch model on `device`, the reference the others are held
    to: TF32 off (cuDNN would take it for the head's convolutions on GPUs), no CUDA graphs."""
    import torch

    from rapidpose.runtime import TorchRuntime

    runtime = TorchRuntime(model, device, batch_size, "fp32", cuda_graphs=False)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        return runtime(crops)
