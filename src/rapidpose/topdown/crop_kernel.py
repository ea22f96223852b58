"""Every crop of a chunk of images in one Triton kernel, straight from the uint8 regions uploaded together.

The torch crop (gpu_ops.warp_crops_with) takes each image's region to float32 (a copy of the region, 4.6 MB
for the read part of a 720p photo) and calls grid_sample once an image: about 8 launches and a few tens of
microseconds of host time an image, while the GPU waits for the chunk's first network batch. Here one
program computes a block of one crop's pixels: the inverse affine in float64 (grid_sample rounds its
sampling points to float32 twice), the four neighbours read from the region's uint8 pixels (0 outside it,
as cv2's constant border), bilinear weights in float32, rounding half to even as cv2's saturate_cast, and
the normalisation with the float32 steps of normalize_crops (the division rounded as IEEE's, not Triton's
fast one). One launch a chunk; the regions and the crop table travel in one upload.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rapidpose.topdown.geometry import INPUT_SIZE, MEAN, STD
from rapidpose.topdown.gpu_ops import inverse_affines

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch crop (gpu_ops.warp_crops_with) is used
    triton = None


TABLE_COLUMNS = 9  # a crop's row of the table: its inverse affine (6), its region's byte offset, height, width
BLOCK_PIXELS = 256


def crop_table(matrices: np.ndarray, regions: Sequence[np.ndarray], counts: Sequence[int],
               offsets: Sequence[int]) -> np.ndarray:
    """(N, TABLE_COLUMNS) float64: per crop, the inverse of its affine (crop pixel -> region pixel) and where
    its region lies in the uploaded buffer (byte offset, height, width; exact in float64 below 2^53).
    matrices: (N, 2, 3) region -> crop affines, the crops of regions[0] first (counts[0] of them), ...;
    offsets: each region's byte offset in the buffer."""
    table = np.empty((len(matrices), TABLE_COLUMNS), np.float64)
    table[:, :6] = inverse_affines(matrices).reshape(-1, 6)
    table[:, 6] = np.repeat(np.asarray(offsets, np.float64), counts)
    table[:, 7:] = np.repeat(np.array([r.shape[:2] for r in regions], np.float64).reshape(-1, 2), counts, axis=0)
    return table


def available(device) -> bool:
    """Whether the kernel runs there: a CUDA device and Triton."""
    return torch.device(device).type == "cuda" and triton is not None


if triton is not None:
    @triton.jit
    def sample(corner, below, masks, weights, mean, std, ROUND: tl.constexpr, NORMALIZE: tl.constexpr):
        """One channel's bilinear value at a block of points, from the uint8 pixel at each point's top left
        (corner) and its three neighbours, rounded and normalised as the options say."""
        top_left, top_right, bottom_left, bottom_right = masks
        value = tl.load(corner, mask=top_left, other=0).to(tl.float32) * weights[0]
        value += tl.load(corner + 3, mask=top_right, other=0).to(tl.float32) * weights[1]
        value += tl.load(corner + below, mask=bottom_left, other=0).to(tl.float32) * weights[2]
        value += tl.load(corner + below + 3, mask=bottom_right, other=0).to(tl.float32) * weights[3]
        if ROUND:  # cv2 writes a uint8 crop: half to even, as its saturate_cast
            rounded = tl.floor(value + 0.5)
            odd_tie = ((rounded - value) == 0.5) & (rounded * 0.5 != tl.floor(rounded * 0.5))
            value = tl.minimum(tl.maximum(tl.where(odd_tie, rounded - 1.0, rounded), 0.0), 255.0)
        if NORMALIZE:  # normalize_crops' float32 steps; Triton's own division is not IEEE's
            value = tl.div_rn(value * 0.003921568859368563 - mean, std)  # float32(1 / 255)
        return value

    @triton.jit
    def packed_crops_kernel(buffer_ptr, table_ptr, out_ptr, mean0, mean1, mean2, std0, std1, std2, pixels,
                            COLUMNS: tl.constexpr, W_OUT: tl.constexpr, ROUND: tl.constexpr,
                            NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
        blocks = tl.cdiv(pixels, BLOCK)  # one grid axis (the others stop at 65,535 crops)
        crop = (tl.program_id(0) // blocks).to(tl.int64)
        pixel = tl.program_id(0) % blocks * BLOCK + tl.arange(0, BLOCK)
        inside = pixel < pixels
        row = table_ptr + crop * COLUMNS
        u = (pixel % W_OUT).to(tl.float64)
        v = (pixel // W_OUT).to(tl.float64)
        x = tl.load(row) * u + tl.load(row + 1) * v + tl.load(row + 2)
        y = tl.load(row + 3) * u + tl.load(row + 4) * v + tl.load(row + 5)
        start = tl.load(row + 6).to(tl.int64)
        height = tl.load(row + 7).to(tl.int32)
        width = tl.load(row + 8).to(tl.int32)
        x0, y0 = tl.floor(x), tl.floor(y)
        wx, wy = (x - x0).to(tl.float32), (y - y0).to(tl.float32)
        # far outside, the integer conversion would overflow: every neighbour there is outside anyway
        xi = tl.minimum(tl.maximum(x0, -2.0), width + 1.0).to(tl.int32)
        yi = tl.minimum(tl.maximum(y0, -2.0), height + 1.0).to(tl.int32)
        left, right = (xi >= 0) & (xi < width), (xi >= -1) & (xi + 1 < width)
        top, bottom = (yi >= 0) & (yi < height), (yi >= -1) & (yi + 1 < height)
        masks = (inside & top & left, inside & top & right, inside & bottom & left, inside & bottom & right)
        weights = ((1.0 - wx) * (1.0 - wy), wx * (1.0 - wy), (1.0 - wx) * wy, wx * wy)
        corner = buffer_ptr + start + (yi.to(tl.int64) * width + xi) * 3
        below = width.to(tl.int64) * 3
        out = out_ptr + crop * 3 * pixels + pixel
        dtype = out_ptr.dtype.element_ty
        tl.store(out, sample(corner, below, masks, weights, mean0, std0, ROUND, NORMALIZE).to(dtype), mask=inside)
        tl.store(out + pixels, sample(corner + 1, below, masks, weights, mean1, std1, ROUND, NORMALIZE).to(dtype),
                 mask=inside)
        third = sample(corner + 2, below, masks, weights, mean2, std2, ROUND, NORMALIZE)
        tl.store(out + 2 * pixels, third.to(dtype), mask=inside)


@torch.no_grad()
def warp_crops_packed(buffer: torch.Tensor, table: torch.Tensor, output_size=INPUT_SIZE, mean=MEAN, std=STD,
                      round_like_cv2: bool = True, dtype=torch.float32) -> torch.Tensor:
    """Crops (N, 3, H, W) from uint8 (H, W, 3) regions packed in one device buffer, as crop_table describes
    them (table: its (N, TABLE_COLUMNS) float64 on the device): warp_crops_with's numbers (up to its float32
    sampling points: a value one level apart at a rounding tie), in one launch. With mean=None the crops
    stay in 0..255."""
    w_out, h_out = output_size
    out = torch.empty((len(table), 3, h_out, w_out), dtype=dtype, device=buffer.device)
    if not len(table):
        return out
    normalize = mean is not None
    mean = np.asarray(mean if normalize else (0, 0, 0), np.float32).ravel().tolist()
    std = np.asarray(std if normalize else (1, 1, 1), np.float32).ravel().tolist()
    pixels = w_out * h_out
    packed_crops_kernel[(len(table) * -(-pixels // BLOCK_PIXELS),)](
        buffer, table, out, *mean, *std, pixels, COLUMNS=TABLE_COLUMNS, W_OUT=w_out, ROUND=round_like_cv2,
        NORMALIZE=normalize, BLOCK=BLOCK_PIXELS,
        enable_fp_fusion=False)  # normalize_crops rounds its product before the subtraction; an FMA would not
    return out
