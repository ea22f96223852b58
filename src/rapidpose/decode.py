"""Heatmaps -> keypoints as the official ViTPose does it: argmax, DARK-UDP refinement, UDP inverse.

Vectorised over people and keypoints: one blur call per batch, one gather, an analytic 2x2 solve.
"""
from __future__ import annotations

import cv2
import numpy as np

from .geometry import heatmap_to_image

BLUR_KERNEL = 11  # sigma 0.3*((k-1)/2 - 1) + 0.8 = 2, as cv2 derives it for the official k=11
_CV_MAX_CHANNELS = 128  # OpenCV 5 filters at most 128 channels per call


def argmax_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) -> integer peak coords (N, K, 2) as float32 (x, y), and the raw maxima (N, K)."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    return coords, maxvals.astype(np.float32)


def gaussian_blur(heatmaps: np.ndarray, kernel: int = BLUR_KERNEL) -> np.ndarray:
    """Blur each (H, W) map; cv2 treats the maps as channels of one image, a few hundred at a time."""
    n, k, h, w = heatmaps.shape
    maps = np.ascontiguousarray(heatmaps.reshape(n * k, h, w).transpose(1, 2, 0), np.float32)
    out = np.empty_like(maps)
    for start in range(0, n * k, _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(maps[:, :, start:start + _CV_MAX_CHANNELS])
        blurred = cv2.GaussianBlur(chunk, (kernel, kernel), 0)
        out[:, :, start:start + _CV_MAX_CHANNELS] = blurred.reshape(h, w, -1)
    return out.transpose(2, 0, 1).reshape(n, k, h, w)


def dark_udp(coords: np.ndarray, heatmaps: np.ndarray, kernel: int = BLUR_KERNEL) -> np.ndarray:
    """One Newton step on the log of the blurred heatmap around each integer peak (DARK with UDP)."""
    n, k, h, w = heatmaps.shape
    logmap = np.log(np.clip(gaussian_blur(heatmaps, kernel), 0.001, 50)).reshape(n * k, h, w)
    padded = np.pad(logmap, ((0, 0), (1, 1), (1, 1)), mode="edge").astype(np.float64)
    b = np.arange(n * k)
    x = coords.reshape(-1, 2)[:, 0].astype(np.int64) + 1
    y = coords.reshape(-1, 2)[:, 1].astype(np.int64) + 1

    def at(dx, dy):
        return padded[b, y + dy, x + dx]

    i = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = at(1, 0) - 2 * i + at(-1, 0)
    dyy = at(0, 1) - 2 * i + at(0, -1)
    dxy = 0.5 * (at(1, 1) - at(1, 0) - at(0, 1) + 2 * i - at(-1, 0) - at(0, -1) + at(-1, -1))
    # (H + eps I)^-1 g, solved in closed form for the 2x2 symmetric Hessian
    eps = np.finfo(np.float32).eps
    a, d = dxx + eps, dyy + eps
    det = a * d - dxy * dxy
    with np.errstate(divide="ignore", invalid="ignore"):
        step_x = (d * dx - dxy * dy) / det
        step_y = (a * dy - dxy * dx) / det
    step = np.stack([step_x, step_y], axis=-1)
    # A Newton step only means something at a maximum (negative definite Hessian). Where the log map
    # is flat or saddle-shaped (a degenerate heatmap), the official step can jump thousands of
    # pixels; there the integer peak is kept. At every real peak the result is the official one.
    concave = (a < 0) & (det > 0) & np.isfinite(step).all(axis=-1)
    step = np.where(concave[:, None], step, 0.0).reshape(n, k, 2)
    return (coords - step).astype(np.float32)


def flip_back(heatmaps_of_flipped: np.ndarray, flip_index: np.ndarray) -> np.ndarray:
    """Heatmaps of mirrored crops -> heatmaps of the originals: swap left/right, mirror x (no shift: UDP)."""
    return heatmaps_of_flipped[:, flip_index, :, ::-1]


def decode_heatmaps(heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray,
                    kernel: int = BLUR_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) heatmaps of crops with the given center/scale -> image keypoints (N, K, 2), scores (N, K).

    The score is the raw heatmap maximum; a keypoint whose maximum is <= 0 is invalid and is left
    unrefined at the crop's corner, as in the official code.
    """
    heatmaps = np.asarray(heatmaps, np.float32)
    n, k, h, w = heatmaps.shape
    if n == 0:
        return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
    coords, scores = argmax_heatmaps(heatmaps)
    refined = dark_udp(coords, heatmaps, kernel)
    coords = np.where((scores > 0)[..., None], refined, -1.0)
    return heatmap_to_image(coords, center, scale, (w, h)), scores
