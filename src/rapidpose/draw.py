"""Drawing, kept apart from the results: skeletons, boxes, scores, track ids and heatmap overlays.

Every function takes an RGB uint8 image and returns a new one; the input is never changed.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .errors import InputError
from .geometry import udp_matrices
from .results import Poses

_SHIFT = 4  # sub-pixel drawing: cv2 takes coordinates as integers scaled by 2**_SHIFT
_ONE = 1 << _SHIFT
_LIMIT = 1e6  # coordinates beyond this many pixels are treated as invalid (and would overflow cv2)
_BOX_COLOR = (66, 135, 245)  # RGB, boxes of people without a track id
_LEFT, _RIGHT, _MIDDLE = (0, 200, 0), (255, 128, 0), (51, 153, 255)


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"expected an RGB uint8 image of shape (H, W, 3); got {image.dtype} {image.shape}: "
            "convert it first, e.g. cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)"
        )
    return image


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per track: hues spread by the golden ratio."""
    hue = (int(track_id) * 0.6180339887498949) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _keypoint_colors(names) -> list[tuple[int, int, int]]:
    colors = []
    for name in names:
        lower = name.lower()
        if "left" in lower and "right" not in lower:
            colors.append(_LEFT)
        elif "right" in lower and "left" not in lower:
            colors.append(_RIGHT)
        else:
            colors.append(_MIDDLE)
    return colors


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> cv2's fixed-point integers (centre of pixel i is i)."""
    return np.round(points * _ONE).astype(np.int64)


def draw_poses(image, poses: Poses, *, keypoint_threshold: float = 0.3, boxes: bool = True,
               scores: bool = True, thickness: int | None = None) -> np.ndarray:
    """Draw each person's skeleton, keypoints, box and score (and track id) on a copy of `image`.

    An edge is drawn only when both its keypoints score above `keypoint_threshold`; keypoints that are
    not finite are skipped. `thickness` (lines, in pixels) grows with the image size when None.
    """
    out = _check_image(image).copy()
    n = len(poses)
    if n == 0:
        return out
    h, w = out.shape[:2]
    if thickness is None:
        thickness = max(1, int(round(max(h, w) / 320)))
    thickness = max(1, int(thickness))
    skeleton = poses.skeleton
    k = poses.keypoints.shape[1]
    radius = max(1, int(round(thickness * (1.5 if k <= 30 else 0.75))))

    edges = np.asarray(skeleton.edges, np.int64).reshape(-1, 2)
    edges_ok = (edges >= 0).all(axis=1) & (edges < k).all(axis=1)
    edge_colors = list(skeleton.edge_colors)
    if len(edge_colors) != len(edges):
        edge_colors = [_MIDDLE] * len(edges)
    point_colors = _keypoint_colors(skeleton.keypoints) if len(skeleton.keypoints) == k else [_MIDDLE] * k

    keypoints = np.asarray(poses.keypoints, np.float64)
    finite = np.isfinite(keypoints).all(axis=-1) & (np.abs(keypoints) < _LIMIT).all(axis=-1)
    visible = finite & (np.nan_to_num(poses.keypoint_scores, nan=-np.inf) > keypoint_threshold)
    fixed = _fixed(np.where(finite[..., None], keypoints, 0.0))

    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = max(0.35, 0.3 * thickness)
    font_thickness = max(1, thickness // 2)

    for i in range(n):
        ids = poses.track_ids
        color = track_color(ids[i]) if ids is not None else _BOX_COLOR
        box = np.asarray(poses.boxes[i], np.float64)
        box_ok = bool(np.isfinite(box).all() and (np.abs(box) < _LIMIT).all())

        if boxes and box_ok:
            p1, p2 = _fixed(box[:2]), _fixed(box[2:])
            cv2.rectangle(out, tuple(int(v) for v in p1), tuple(int(v) for v in p2), color,
                          thickness, cv2.LINE_AA, _SHIFT)

        for (a, b), ok, edge_color in zip(edges, edges_ok, edge_colors):
            if ok and visible[i, a] and visible[i, b]:
                cv2.line(out, tuple(int(v) for v in fixed[i, a]), tuple(int(v) for v in fixed[i, b]),
                         tuple(int(c) for c in edge_color), thickness, cv2.LINE_AA, _SHIFT)

        for j in np.flatnonzero(visible[i]):
            at = tuple(int(v) for v in fixed[i, j])
            if radius >= 2:  # a light rim keeps joints apart from the limbs of the same colour
                cv2.circle(out, at, (radius + 1) * _ONE, (255, 255, 255), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(out, at, radius * _ONE, point_colors[j], -1, cv2.LINE_AA, _SHIFT)

        label = []
        if ids is not None:
            label.append(f"id {int(ids[i])}")
        if scores and np.isfinite(poses.box_scores[i]):
            label.append(f"{float(poses.box_scores[i]):.2f}")
        if label and box_ok:
            _put_label(out, " ".join(label), box, color, font, font_scale, font_thickness)
    return out


def _put_label(out, text, box, color, font, font_scale, font_thickness):
    """Text on a filled tag at the box's top-left corner: above the box, or inside it at the top edge."""
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, font_thickness)
    pad = max(1, font_thickness)
    x = int(round(min(max(box[0], 0), max(out.shape[1] - tw - 2 * pad, 0))))
    top = int(round(box[1])) - th - baseline - 2 * pad
    if top < 0:
        top = max(int(round(box[1])), 0)
    top = min(top, max(out.shape[0] - th - baseline - 2 * pad, 0))
    cv2.rectangle(out, (x, top), (x + tw + 2 * pad, top + th + baseline + 2 * pad), color, -1)
    text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
    cv2.putText(out, text, (x + pad, top + pad + th), font, font_scale, text_color, font_thickness,
                cv2.LINE_AA)


def draw_heatmaps(image, heatmaps, center, scale, *, alpha: float = 0.5) -> np.ndarray:
    """Overlay the network's heatmaps on a copy of `image`, warped back from each person's crop.

    heatmaps: (N, K, h, w) for N people, with the crop `center` and `scale` (N, 2) the pipeline used.
    Per person the maximum over the K channels, clipped at 0 and normalised to [0, 1], is mapped back
    with the UDP inverse; people combine by maximum, then a JET colour map is blended in where the map
    is above zero (fully `alpha` from a tenth of the peak up).
    """
    out = _check_image(image).copy()
    heatmaps = np.asarray(heatmaps, np.float32)
    if heatmaps.ndim == 3:
        heatmaps = heatmaps[None]
    if heatmaps.ndim != 4:
        raise InputError(f"heatmaps must be (N, K, h, w); got shape {heatmaps.shape}")
    n, _, hh, hw = heatmaps.shape
    if n == 0 or heatmaps.shape[1] == 0:
        return out
    center = np.asarray(center, np.float64).reshape(-1, 2)
    scale = np.asarray(scale, np.float64).reshape(-1, 2)
    if len(center) != n or len(scale) != n:
        raise InputError(f"need one center and scale per person: {n} heatmaps, "
                         f"{len(center)} centers, {len(scale)} scales")
    h, w = out.shape[:2]
    matrices = udp_matrices(center, scale, output_size=(hw, hh))
    combined = np.zeros((h, w), np.float32)
    for i in range(n):
        if not (np.isfinite(matrices[i]).all() and (scale[i] > 0).all()):
            continue
        peak = np.nan_to_num(heatmaps[i], nan=0.0, posinf=0.0, neginf=0.0).max(axis=0)
        np.clip(peak, 0.0, None, out=peak)
        top = float(peak.max())
        if top <= 0:
            continue
        peak /= top
        warped = cv2.warpAffine(peak, matrices[i], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        np.maximum(combined, warped, out=combined)

    colored = cv2.applyColorMap(np.round(np.clip(combined, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (float(alpha) * np.clip(combined * 10.0, 0.0, 1.0))[..., None]
    blended = out.astype(np.float32) * (1.0 - weight) + colored * weight
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
