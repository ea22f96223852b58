"""Torch versions of the crop warp and of the heatmap decoding, for keeping the work on one device.

Each image goes to the device once; crops, network inputs and heatmaps stay there until the final
keypoints. The numbers are those of the numpy/cv2 versions in geometry.py and decode.py:

- warp_crops_torch samples exactly the image points cv2.warpAffine samples (the inverse affine in
  float64, bilinear, constant 0 border) and, with round_like_cv2, rounds to integers before the
  normalisation as the uint8 crop of the official pipeline does. Against cv2 >= 4.11 (float
  bilinear) the rounded crops are equal except at about 1 value in 10^4, off by 1 (a tie at .5
  falling the other way); older cv2 (1/32 px fixed-point bilinear) differs from exact bilinear by
  up to a few levels at a few percent of the values.
- decode_heatmaps_torch is argmax + DARK-UDP + the UDP inverse, written out like decode.py. The blur
  is only needed at the 3x3 neighbourhood of each peak, so it is computed there, as the separable
  11-tap Gaussian over reflect-101 indices, with element-wise products and sums in float32 (no conv
  or matmul, so TF32 settings cannot touch it); the Newton step is in float64 (float32 on MPS).

Everything is batched over people and keypoints; there is no Python loop over either.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .decode import BLUR_KERNEL
from .geometry import INPUT_SIZE, MEAN, PIXEL_STD, STD

__all__ = ["gaussian_kernel_1d", "warp_crops_torch", "warp_crops_batch", "decode_heatmaps_torch",
           "flip_back_torch"]


def _float64(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _as_tensor(x, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Crops


def _inverse_affine(m: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) forward affines -> their inverses, with the formula cv2.warpAffine uses (in float64)."""
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    inv_det = torch.where(det != 0, 1.0 / torch.where(det != 0, det, torch.ones_like(det)),
                          torch.zeros_like(det))
    a11, a12, a21, a22 = e * inv_det, -b * inv_det, -d * inv_det, a * inv_det
    b1 = -a11 * c - a12 * f
    b2 = -a21 * c - a22 * f
    return torch.stack([torch.stack([a11, a12, b1], -1), torch.stack([a21, a22, b2], -1)], 1)


@functools.lru_cache(maxsize=16)
def _crop_pixels(w_out: int, h_out: int, device: torch.device, dtype: torch.dtype):
    return (torch.arange(w_out, device=device, dtype=dtype), torch.arange(h_out, device=device, dtype=dtype))


def _sampling_grid(matrices, image_hw, output_size, device) -> torch.Tensor:
    """grid_sample grid (1, N*H_out, W_out, 2): crop pixel (u, v) -> image point M^-1 (u, v), normalised.

    With align_corners=True, -1 and +1 are the centres of the first and last image pixels, so the
    normalisation x -> x * 2 / (w - 1) - 1 is folded into the inverse affine; the grid is then one
    float64 broadcast sum per coordinate, rounded once to float32.
    """
    dtype = _float64(device)
    m = _as_tensor(matrices, device, dtype).reshape(-1, 2, 3)
    inv = _inverse_affine(m)  # (N, 2, 3)
    h, w = image_hw
    inv[:, 0] *= 2.0 / (w - 1)
    inv[:, 1] *= 2.0 / (h - 1)
    inv[:, :, 2] -= 1.0
    w_out, h_out = output_size
    u, v = _crop_pixels(w_out, h_out, device, dtype)
    along_u = inv[:, None, None, :, 0] * u.view(1, 1, w_out, 1)  # (N, 1, W_out, 2)
    along_v = inv[:, None, None, :, 1] * v.view(1, h_out, 1, 1) + inv[:, None, None, :, 2]  # (N, H_out, 1, 2)
    return (along_u + along_v).to(torch.float32).view(1, -1, w_out, 2)


def _image_to_nchw(image) -> torch.Tensor:
    """(H, W, 3) uint8 image -> (1, 3, H', W') float32, with a zero row/column added to a 1-pixel side.

    The zero padding changes nothing that is sampled (the border is 0 anyway); it only keeps the
    align_corners=True normalisation, which divides by (size - 1), defined.
    """
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C); got shape {tuple(image.shape)}")
    x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32).contiguous()
    h, w = x.shape[-2:]
    if h == 1 or w == 1:
        x = F.pad(x, (0, int(w == 1), 0, int(h == 1)))
    return x


@functools.lru_cache(maxsize=16)
def _channel_constant(values: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1, 1)


def _normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(3, N, H, W) values in 0..255 -> network input, in place, with the float32 steps of normalize_crops."""
    mean = _channel_constant(tuple(np.asarray(mean, np.float32).ravel().tolist()), x.device)
    std = _channel_constant(tuple(np.asarray(std, np.float32).ravel().tolist()), x.device)
    return x.mul_(float(np.float32(1 / 255.0))).sub_(mean).div_(std)


def _warp_raw(image_nchw: torch.Tensor, matrices, output_size, round_like_cv2: bool) -> torch.Tensor:
    """(1, C, H, W) float image -> (C, N, H_out, W_out) bilinear crops in 0..255 (rounded if asked).

    Channel-major, as grid_sample writes it; the caller transposes once, after normalising.
    """
    c = image_nchw.shape[1]
    w_out, h_out = output_size
    grid = _sampling_grid(matrices, image_nchw.shape[-2:], output_size, image_nchw.device)
    out = F.grid_sample(image_nchw, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.view(c, -1, h_out, w_out)
    if round_like_cv2:
        out = out.round_().clamp_(0, 255)  # cv2 writes a uint8 crop (values exactly at .5 are rare)
    return out


def _finish(raw: torch.Tensor, mean, std) -> torch.Tensor:
    if mean is not None:
        raw = _normalize_(raw, mean, std)
    return raw.transpose(0, 1).contiguous()


@torch.no_grad()
def warp_crops_torch(image, matrices, output_size=INPUT_SIZE, mean=MEAN, std=STD,
                     round_like_cv2: bool = True) -> torch.Tensor:
    """Network input (N, 3, H, W) float32 from one RGB uint8 image (H, W, 3) on any torch device.

    matrices: (N, 2, 3) image -> crop affines (as geometry.udp_matrices gives), numpy or tensor.
    Crop pixel (u, v) takes the bilinear sample of image point M^-1 (u, v) (pixel-index coordinates,
    outside the image is 0), as cv2.warpAffine does. round_like_cv2 rounds the sampled values to
    integers before normalising, like the uint8 crop of geometry.warp_crops + normalize_crops.
    With mean=None the crops are returned in 0..255, not normalised.
    """
    image = _image_to_nchw(image)
    if len(matrices) == 0:
        return image.new_zeros((0, image.shape[1], output_size[1], output_size[0]))
    return _finish(_warp_raw(image, matrices, output_size, round_like_cv2), mean, std)


@torch.no_grad()
def warp_crops_batch(images: Sequence, matrices, counts: Sequence[int], output_size=INPUT_SIZE,
                     mean=MEAN, std=STD, round_like_cv2: bool = True) -> torch.Tensor:
    """All crops of several images in one tensor (sum(counts), 3, H, W).

    matrices holds the crops of images[0] first (counts[0] of them), then those of images[1], ...
    Images may differ in size; there is one grid_sample per image with any crops (padding the
    images to one batch measured slower on CPU, and shifts the normalised coordinates).
    """
    counts = [int(c) for c in counts]
    if len(counts) != len(images):
        raise ValueError(f"{len(images)} images but {len(counts)} counts")
    if sum(counts) != len(matrices):
        raise ValueError(f"counts add up to {sum(counts)} but there are {len(matrices)} matrices")
    parts, start = [], 0
    for image, count in zip(images, counts):
        if count:
            parts.append(_warp_raw(_image_to_nchw(image), matrices[start:start + count], output_size,
                                   round_like_cv2))
        start += count
    if not parts:
        device = images[0].device if images and isinstance(images[0], torch.Tensor) else "cpu"
        return torch.zeros((0, 3, output_size[1], output_size[0]), dtype=torch.float32, device=device)
    return _finish(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1), mean, std)


# ---------------------------------------------------------------------------------------------
# Decoding


# cv2 (4.x and later) uses these fixed kernels for ksize <= 9 when sigma is derived from the size
_SMALL_GAUSSIANS = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
                    9: [0.015625, 0.05078125, 0.1171875, 0.19921875, 0.234375, 0.19921875, 0.1171875,
                        0.05078125, 0.015625]}


def gaussian_kernel_1d(ksize: int = BLUR_KERNEL) -> np.ndarray:
    """The float32 kernel of cv2.getGaussianKernel(ksize, 0): sigma = 0.3 ((ksize - 1) / 2 - 1) + 0.8."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"the blur kernel size must be odd and positive; got {ksize}")
    if ksize in _SMALL_GAUSSIANS:
        return np.array(_SMALL_GAUSSIANS[ksize], np.float32)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    taps = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (taps / taps.sum()).astype(np.float32)  # float64 taps and sum, rounded once


def _reflect101(p: np.ndarray, n: int) -> np.ndarray:
    """cv2's BORDER_REFLECT_101 index for any length (torch's 'reflect' padding, without its size limit)."""
    if n == 1:
        return np.zeros_like(p)
    period = 2 * (n - 1)
    q = np.remainder(p, period)
    return np.where(q >= n, period - q, q)


@functools.lru_cache(maxsize=64)
def _blur_tables(h: int, w: int, ksize: int, device: torch.device):
    """Per peak row/column: the indices each tap of the blur reads for the 3 rows/columns DARK uses.

    For a peak at column x, DARK reads the blurred map at columns clamp(x-1..x+1) (the edge padding
    of its finite differences); blurring column c reads columns reflect101(c - r .. c + r).
    Returns (kernel (k,), rows (h, 3, k) premultiplied by w, cols (w, 3, k)) on the device.
    """
    r = ksize // 2
    taps = np.arange(-r, r + 1)

    def table(n):
        near = np.clip(np.arange(n)[:, None] + np.arange(-1, 2), 0, n - 1)  # (n, 3)
        return _reflect101(near[:, :, None] + taps, n)  # (n, 3, k)

    kernel = torch.from_numpy(gaussian_kernel_1d(ksize)).to(device)
    return kernel, torch.from_numpy(table(h) * w).to(device), torch.from_numpy(table(w)).to(device)


def _blurred_neighbourhood(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ksize: int) -> torch.Tensor:
    """The Gaussian-blurred maps (B, H, W) at the 3x3 pixels around (x, y), edge-clamped: (B, 3, 3).

    Equal to blurring the whole map (horizontal pass, then vertical, reflect-101 border) and reading
    the edge-padded 3x3 patch, but computed only where DARK looks.
    """
    b, h, w = maps.shape
    kernel, row_table, col_table = _blur_tables(h, w, ksize, maps.device)
    # raw values at rows rows[a, s], columns cols[c, t] -> (B, 3, k, 3, k)
    flat = row_table[y][:, :, :, None, None] + col_table[x][:, None, None, :, :]
    patch = maps.reshape(b, h * w).gather(1, flat.view(b, -1)).view(b, 3, ksize, 3, ksize)
    rows = (patch * kernel).sum(-1)  # horizontal pass: (B, 3, k, 3)
    return (rows * kernel[:, None]).sum(2)  # vertical pass: (B, 3, 3), [dy, dx]


def _dark_udp(heatmaps: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, ksize: int) -> torch.Tensor:
    """Newton step of DARK-UDP at the integer peaks; (N*K, 2) float64 step, 0 where not concave."""
    n, k, h, w = heatmaps.shape
    blurred = _blurred_neighbourhood(heatmaps.reshape(n * k, h, w), ix, iy, ksize)
    p = torch.log(blurred.clamp(0.001, 50)).to(_float64(heatmaps.device))  # log in float32, as decode.py
    i = p[:, 1, 1]
    xm, xp, ym, yp = p[:, 1, 0], p[:, 1, 2], p[:, 0, 1], p[:, 2, 1]
    dx = 0.5 * (xp - xm)
    dy = 0.5 * (yp - ym)
    dxx = xp - 2 * i + xm
    dyy = yp - 2 * i + ym
    dxy = 0.5 * (p[:, 2, 2] - xp - yp + 2 * i - xm - ym + p[:, 0, 0])
    eps = float(np.finfo(np.float32).eps)
    a, d = dxx + eps, dyy + eps
    det = a * d - dxy * dxy
    step = torch.stack([(d * dx - dxy * dy) / det, (a * dy - dxy * dx) / det], dim=-1)
    # the concave guard of decode.dark_udp: keep the integer peak where the log map is no maximum
    concave = (a < 0) & (det > 0) & torch.isfinite(step).all(dim=-1)
    return torch.where(concave[:, None], step, torch.zeros_like(step))


@functools.lru_cache(maxsize=16)
def _heatmap_steps(w: int, h: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([w - 1.0, h - 1.0], device=device, dtype=dtype)


@torch.no_grad()
def decode_heatmaps_torch(heatmaps: torch.Tensor, center, scale,
                          kernel: int = BLUR_KERNEL) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) heatmaps -> image keypoints (N, K, 2) float32 and scores (N, K) float32, on their device.

    decode.decode_heatmaps in torch: argmax, score = raw maximum, DARK-UDP refinement, keypoints
    whose score is <= 0 left at heatmap (-1, -1), then the UDP inverse with the crops' center/scale.
    """
    heatmaps = heatmaps.to(torch.float32)
    n, k, h, w = heatmaps.shape
    device = heatmaps.device
    if n == 0:
        return heatmaps.new_zeros((0, k, 2)), heatmaps.new_zeros((0, k))
    if k == 0:
        return heatmaps.new_zeros((n, 0, 2)), heatmaps.new_zeros((n, 0))
    scores, idx = heatmaps.reshape(n * k, h * w).max(dim=1)
    ix, iy = idx % w, torch.div(idx, w, rounding_mode="floor")
    dtype = _float64(device)
    step = _dark_udp(heatmaps, ix, iy, kernel)
    # decode.dark_udp hands back float32 heatmap coordinates; round the same way
    coords = (torch.stack([ix, iy], dim=-1).to(dtype) - step).to(torch.float32).to(dtype)
    coords = torch.where((scores > 0)[:, None], coords, torch.full_like(coords, -1.0)).view(n, k, 2)
    # UDP inverse, the same float64 steps as geometry.heatmap_to_image
    size = _as_tensor(scale, device, dtype).reshape(-1, 1, 2) * PIXEL_STD
    center = _as_tensor(center, device, dtype).reshape(-1, 1, 2)
    keypoints = coords * (size / _heatmap_steps(w, h, device, dtype)) + center - size * 0.5
    return keypoints.to(torch.float32), scores.view(n, k)


@torch.no_grad()
def flip_back_torch(heatmaps: torch.Tensor, flip_index) -> torch.Tensor:
    """Heatmaps of mirrored crops -> heatmaps of the originals: swap left/right channels, mirror x."""
    index = _as_tensor(flip_index, heatmaps.device, torch.long)
    return heatmaps.index_select(1, index).flip(-1)
