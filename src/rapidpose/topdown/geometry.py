"""Boxes to center/scale, the UDP affine crop, and its inverse, as in the official ViTPose code.

Everything is vectorised over people: centers and scales are (N, 2), matrices (N, 2, 3).
"""
from __future__ import annotations

import cv2
import numpy as np


PIXEL_STD = 200.0  # the official code measures scales in units of 200 px
INPUT_SIZE = (192, 256)  # network input (width, height)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def usable_boxes(boxes: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (N, 4) float32 xyxy boxes on images of (N, 2) sizes (width, height): which are well formed (finite,
    positive area), and which of those also overlap their image (the ones to keep)."""
    formed = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    overlap = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < sizes[:, 0]) & (boxes[:, 1] < sizes[:, 1])
    return formed, formed & overlap


def boxes_to_center_scale(boxes, input_size=INPUT_SIZE, padding: float = 1.25):
    """xyxy boxes -> (center, scale): the box grown to the input's aspect ratio, scale in 200 px, x1.25."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    center = np.stack([boxes[:, 0] + w * 0.5, boxes[:, 1] + h * 0.5], axis=1).astype(np.float32)
    aspect = input_size[0] / input_size[1]
    wider = w > aspect * h
    taller = w < aspect * h
    h = np.where(wider, w / aspect, h)
    w = np.where(taller, h * aspect, w)
    scale = (np.stack([w, h], axis=1) / PIXEL_STD).astype(np.float32) * np.float32(padding)
    return center, scale


def udp_matrices(center, scale, output_size=INPUT_SIZE) -> np.ndarray:
    """Image -> crop affine matrices of the unbiased data processing (UDP), no rotation.

    The crop spans scale*200 image pixels over (output_size - 1) crop pixels, centred on `center`.
    """
    center = np.asarray(center, np.float64).reshape(-1, 2)
    size = np.asarray(scale, np.float64).reshape(-1, 2) * PIXEL_STD
    factor = (np.asarray(output_size, np.float64) - 1.0) / size  # (N, 2)
    m = np.zeros((len(center), 2, 3), np.float64)
    m[:, 0, 0] = factor[:, 0]
    m[:, 1, 1] = factor[:, 1]
    m[:, :, 2] = factor * (size * 0.5 - center)
    return m.astype(np.float32)


def warp_crops(image: np.ndarray, matrices: np.ndarray, output_size=INPUT_SIZE) -> np.ndarray:
    """Bilinear crops with a constant 0 border: (N, H, W, 3) uint8 from one RGB image."""
    out = np.empty((len(matrices), output_size[1], output_size[0], image.shape[2]), image.dtype)
    for i, m in enumerate(matrices):  # cv2 is per crop; the network batch is not
        cv2.warpAffine(image, m, output_size, dst=out[i], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


# uint8 value -> normalised float32, per channel: one table lookup instead of four array passes
_NORMALIZE_LUT = ((np.arange(256, dtype=np.float32)[None, :] * np.float32(1 / 255.0) - MEAN[:, None])
                  / STD[:, None]).astype(np.float32)


def normalize_crops(crops: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 with the ImageNet mean and std."""
    planes = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))  # the transpose moves bytes, not floats
    out = np.empty(planes.shape, np.float32)
    for c in range(planes.shape[1]):
        np.take(_NORMALIZE_LUT[c], planes[:, c], out=out[:, c])
    return out


def heatmap_to_image(coords, center, scale, heatmap_size) -> np.ndarray:
    """UDP inverse: (N, K, 2) heatmap pixels -> image pixels. heatmap_size is (width, height)."""
    coords = np.asarray(coords, np.float64)
    size = np.asarray(scale, np.float64).reshape(-1, 1, 2) * PIXEL_STD
    center = np.asarray(center, np.float64).reshape(-1, 1, 2)
    step = size / (np.asarray(heatmap_size, np.float64) - 1.0)
    return (coords * step + center - size * 0.5).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (M, 4) with every box in b (N, 4), both x1, y1, x2, y2 -> (M, N)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
