"""Training targets of the official ViTPose recipe: UDP Gaussian heatmaps and the weighted MSE loss.

mmpose 0.x TopDownGenerateTarget(encoding='UDP', target_type='GaussianHeatmap') and JointsMSELoss
(use_target_weight=True), vectorised over people and keypoints. The same function serves numpy (a
data loader) and torch tensors (the training step on the GPU); both give the same maps.
"""
from __future__ import annotations

import numpy as np

from rapidpose.errors import InputError

__all__ = ["udp_heatmaps", "keypoint_mse_loss"]


def _check_shapes(keypoints, visible) -> tuple[int, int]:
    if keypoints.ndim != 3 or keypoints.shape[2] != 2:
        raise InputError(f"keypoints must be (N, K, 2) crop-input pixels (x, y); got shape {tuple(keypoints.shape)}")
    if tuple(visible.shape) != tuple(keypoints.shape[:2]):
        raise InputError(f"visible must be (N, K) = {tuple(keypoints.shape[:2])} to match the keypoints; "
                         f"got shape {tuple(visible.shape)}")
    return keypoints.shape[0], keypoints.shape[1]


def _check_sizes(input_size, heatmap_size, sigma) -> None:
    if len(input_size) != 2 or len(heatmap_size) != 2 or min(*input_size, *heatmap_size) < 2:
        raise InputError(f"input_size {tuple(input_size)} and heatmap_size {tuple(heatmap_size)} must be "
                         "(width, height), each at least 2 pixels")
    if not sigma > 0:
        raise InputError(f"sigma must be positive; got {sigma}")


def udp_heatmaps(keypoints, visible, input_size=(192, 256), heatmap_size=(48, 64), sigma=2.0):
    """keypoints (N, K, 2) in crop INPUT pixels (x, y); visible (N, K) (> 0: labelled, visible or occluded).

    Returns (heatmaps (N, K, H, W) float32, weights (N, K) float32), the official UDP Gaussian targets:
    the heatmap pixel grid spans the input's pixel centres, stride (input - 1) / (heatmap - 1); the
    Gaussian is centred at the sub-pixel position keypoint / stride and written only inside the
    (6 sigma + 1)-pixel window around the rounded centre mu = int(keypoint / stride + 0.5). Where that
    window lies beyond the map (the official test: mu - 3 sigma >= size or mu + 3 sigma + 1 < 0) the
    weight is 0 and the map zero; elsewhere the weight is 1 where visible > 0. (The official test lets
    mu = -3 sigma - 1 through: weight 1 with an all-zero map, kept here. For sigma with a fractional
    3 sigma the window is |pixel - mu| <= 3 sigma, which the official code does not handle.)

    numpy in -> numpy out; torch tensors in -> tensors on the keypoints' device, no Python loop.
    """
    _check_sizes(input_size, heatmap_size, sigma)
    if _is_tensor(keypoints):
        return _udp_heatmaps_torch(keypoints, visible, input_size, heatmap_size, float(sigma))
    keypoints = np.asarray(keypoints, np.float64)
    visible = np.asarray(visible)
    _check_shapes(keypoints, visible)
    axes, weights = _centres_and_windows(np, keypoints, visible, input_size, heatmap_size, float(sigma))
    ex, ey = (np.where(window, np.exp(-0.5 * (d / sigma) ** 2), 0.0) for d, window in axes)
    ex *= weights[..., None]  # an unweighted keypoint gets an all-zero map
    maps = (ey[..., :, None] * ex[..., None, :]).astype(np.float32)  # exp(a + b) = exp(a) exp(b): separable
    return maps, weights.astype(np.float32)


def _is_tensor(x) -> bool:
    try:
        import torch
    except ImportError:  # numpy-only installs never pass tensors
        return False
    return isinstance(x, torch.Tensor)


def _centres_and_windows(xp, keypoints, visible, input_size, heatmap_size, sigma):
    """Per axis (x, y): (distance of each heatmap pixel to the sub-pixel centre (N, K, size), the
    official window mask there), and the weights (N, K); xp is numpy or torch, arrays in float64."""
    radius = 3.0 * sigma
    weights = visible > 0
    axes = []
    for axis in range(2):
        size = heatmap_size[axis]
        stride = (input_size[axis] - 1.0) / (size - 1.0)
        centre = keypoints[..., axis] / stride  # sub-pixel, in heatmap pixels
        mu = xp.trunc(centre + 0.5)  # the official int(): towards zero, also for negative positions
        weights = weights & ~((mu - radius >= size) | (mu + radius + 1 < 0))
        pixels = _arange(xp, size, keypoints)
        axes.append((pixels - centre[..., None], xp.abs(pixels - mu[..., None]) <= radius))
    return axes, weights


def _arange(xp, size, like):
    if xp is np:
        return np.arange(size, dtype=np.float64)
    return xp.arange(size, dtype=like.dtype, device=like.device)


def _udp_heatmaps_torch(keypoints, visible, input_size, heatmap_size, sigma):
    import torch

    device = keypoints.device
    wide = torch.float32 if device.type == "mps" else torch.float64  # as numpy's, where the device has it
    keypoints = keypoints.detach().to(wide)
    visible = visible.to(device) if isinstance(visible, torch.Tensor) else torch.as_tensor(np.asarray(visible),
                                                                                         device=device)
    _check_shapes(keypoints, visible)
    axes, weights = _centres_and_windows(torch, keypoints, visible, input_size, heatmap_size, sigma)
    zero = keypoints.new_zeros(())
    ex, ey = (torch.where(window, torch.exp(-0.5 * (d / sigma) ** 2), zero) for d, window in axes)
    ex = (ex * weights[..., None]).to(torch.float32)
    maps = ey.to(torch.float32)[..., :, None] * ex[..., None, :]  # only the (N, K, H, W) product in float32
    return maps, weights.to(torch.float32)


def keypoint_mse_loss(pred, target, weights):
    """mmpose 0.x JointsMSELoss(use_target_weight=True), loss_weight 1: per keypoint the MSE (mean
    over the batch and the pixels) of pred * w against target * w, summed and divided by the number
    of keypoints, i.e. the mean over batch, keypoints and pixels. weights: (N, K) or (N, K, 1)."""
    if pred.ndim != 4 or tuple(pred.shape) != tuple(target.shape):
        raise InputError(f"pred and target must be (N, K, H, W) of one shape; got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    n, k = pred.shape[:2]
    if weights.numel() != n * k:
        raise InputError(f"weights must be (N, K) = {(n, k)}; got shape {tuple(weights.shape)}")
    w = weights.reshape(n, k, 1).to(pred.dtype)
    return (pred.reshape(n, k, -1) * w - target.reshape(n, k, -1) * w).pow(2).mean()
