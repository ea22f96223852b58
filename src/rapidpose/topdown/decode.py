"""Heatmaps -> keypoints as the official ViTPose does it: argmax, DARK-UDP refinement, UDP inverse.

Vectorised over people and keypoints: one blur call per batch, one gather, an analytic 2x2 solve.
The steps after the 3x3 blurred patch around each peak (keypoints_from_peaks) are shared with the
torch decoder of gpu_ops, which computes only those patches on the device.
"""
from __future__ import annotations

import cv2
import numpy as np

from rapidpose.topdown.geometry import heatmap_to_image

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


def newton_step(log_patch: np.ndarray) -> np.ndarray:
    """(B, 3, 3) log of the blurred heatmap around each integer peak, [dy, dx] from -1 to 1, edge-
    padded at the map's border -> (B, 2) DARK step (x, y) in float64, subtracted from the peak."""
    p = np.asarray(log_patch, np.float64)
    i = p[:, 1, 1]
    xm, xp, ym, yp = p[:, 1, 0], p[:, 1, 2], p[:, 0, 1], p[:, 2, 1]
    dx = 0.5 * (xp - xm)
    dy = 0.5 * (yp - ym)
    dxx = xp - 2 * i + xm
    dyy = yp - 2 * i + ym
    dxy = 0.5 * (p[:, 2, 2] - xp - yp + 2 * i - xm - ym + p[:, 0, 0])
    # (H + eps I)^-1 g, solved in closed form for the 2x2 symmetric Hessian
    eps = np.finfo(np.float32).eps
    a, d = dxx + eps, dyy + eps
    det = a * d - dxy * dxy
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.stack([(d * dx - dxy * dy) / det, (a * dy - dxy * dx) / det], axis=-1)
    # A Newton step only means something at a maximum (negative definite Hessian). Where the log map
    # is flat or saddle-shaped (a degenerate heatmap), the official step can jump thousands of
    # pixels; there the integer peak is kept. At every real peak the result is the official one.
    concave = (a < 0) & (det > 0) & np.isfinite(step).all(axis=-1)
    return np.where(concave[:, None], step, 0.0)


def log_of_blurred(blurred: np.ndarray) -> np.ndarray:
    """The official log step: clip to [0.001, 50], log in float32."""
    return np.log(np.clip(np.asarray(blurred, np.float32), 0.001, 50))


def blurred_patches(coords: np.ndarray, heatmaps: np.ndarray, kernel: int = BLUR_KERNEL) -> np.ndarray:
    """(N*K, 3, 3): the blurred heatmaps at the 3x3 pixels around each integer peak, edge-padded."""
    n, k, h, w = heatmaps.shape
    padded = np.pad(gaussian_blur(heatmaps, kernel).reshape(n * k, h, w), ((0, 0), (1, 1), (1, 1)), mode="edge")
    b = np.arange(n * k)[:, None, None]
    x = coords.reshape(-1, 2)[:, 0].astype(np.int64)[:, None, None] + np.arange(3)[None, None, :]
    y = coords.reshape(-1, 2)[:, 1].astype(np.int64)[:, None, None] + np.arange(3)[None, :, None]
    return padded[b, y, x]


def dark_udp(coords: np.ndarray, heatmaps: np.ndarray, kernel: int = BLUR_KERNEL) -> np.ndarray:
    """One Newton step on the log of the blurred heatmap around each integer peak (DARK with UDP)."""
    step = newton_step(log_of_blurred(blurred_patches(coords, heatmaps, kernel)))
    return (coords - step.reshape(coords.shape)).astype(np.float32)


def keypoints_from_peaks(coords: np.ndarray, scores: np.ndarray, log_patch: np.ndarray, center, scale,
                         heatmap_size) -> np.ndarray:
    """Integer peaks (N, K, 2), their raw maxima (N, K) and log patches (N*K, 3, 3) -> image keypoints:
    the DARK step, keypoints with a maximum <= 0 left unrefined at the crop's corner (as the official
    code does), then the UDP inverse. heatmap_size is (width, height)."""
    n, k = scores.shape
    refined = (coords - newton_step(log_patch).reshape(n, k, 2)).astype(np.float32)
    coords = np.where((scores > 0)[..., None], refined, -1.0)
    return heatmap_to_image(coords, center, scale, heatmap_size)


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
    log_patch = log_of_blurred(blurred_patches(coords, heatmaps, kernel))
    return keypoints_from_peaks(coords, scores, log_patch, center, scale, (w, h)), scores
