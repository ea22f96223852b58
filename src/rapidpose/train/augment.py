"""The official ViTPose training augmentation, vectorised over people.

mmpose 0.x train pipeline: TopDownRandomFlip(0.5) -> TopDownHalfBodyTransform(8, 0.3) ->
TopDownGetRandomScaleRotation(rot_factor=40, scale_factor=0.5, rot_prob=0.6) -> TopDownAffine(use_udp=True).
The official code mirrors the image first and then warps the mirrored image; here the mirror is
folded into the affine, so the original image is warped once (training_matrices) and the keypoints
go through the same matrices (transform_keypoints). The sampled center is in the official frame:
that of the mirrored image for a flipped person.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rapidpose.errors import InputError
from rapidpose.topdown.geometry import PIXEL_STD

__all__ = ["Augmentation", "sample_augmentation", "training_matrices", "transform_keypoints"]


@dataclass
class Augmentation:
    """One sampled augmentation per person, as the official pipeline leaves it before TopDownAffine."""

    center: np.ndarray  # (N, 2) float32, image pixels, in the mirrored image where flipped
    scale: np.ndarray  # (N, 2) float32, crop size in units of 200 px
    rotation: np.ndarray  # (N,) float32 degrees
    flipped: np.ndarray  # (N,) bool
    half_body: np.ndarray  # (N,) bool: center and scale come from the half-body transform
    image_widths: np.ndarray  # (N,) float32: the width each person's image is mirrored in


def _people(name, value, n, tail) -> np.ndarray:
    value = np.asarray(value)
    if value.shape != (n,) + tail:
        want = ", ".join(["N"] + [str(t) for t in tail])
        raise InputError(f"{name} must be ({want}) with N = {n} people; got shape {value.shape}")
    return value


def _check_flip_index(flip_index, k) -> np.ndarray:
    flip_index = np.asarray(flip_index)
    if flip_index.shape != (k,) or not np.array_equal(np.sort(flip_index), np.arange(k)):
        raise InputError(f"flip_index must be a permutation of the {k} keypoints (Skeleton.flip_index()); "
                         f"got {flip_index.tolist()}")
    return flip_index


def _mirror(keypoints, visible, flipped, widths, flip_index):
    """fliplr_joints where flipped: x -> width - 1 - x, then the left/right channels swapped."""
    mirrored = keypoints[:, flip_index].copy()
    mirrored[..., 0] = widths[:, None] - 1.0 - mirrored[..., 0]
    keypoints = np.where(flipped[:, None, None], mirrored, keypoints)
    return keypoints, np.where(flipped[:, None], visible[:, flip_index], visible)


def sample_augmentation(rng, center, scale, keypoints, visible, flip_index, *, image_widths,
                        flip_p=0.5, half_body_p=0.3, half_body_min=8, upper_body=None,
                        scale_factor=0.5, rotation_factor=40.0, rotation_p=0.6, input_size=(192, 256)):
    """center (N, 2), scale (N, 2) in 200-px units (geometry.boxes_to_center_scale), keypoints (N, K, 2)
    image pixels, visible (N, K) (> 0: labelled), flip_index (K,) (Skeleton.flip_index()), image_widths
    (N,) the width of each person's image; rng a numpy.random.Generator.

    upper_body: indices of the upper-body keypoints (COCO: 0..10); None turns the half-body transform
    off. Returns an Augmentation drawn as the official pipeline draws it, in its order:
    - flip with probability flip_p; the center (and keypoints) mirrored: x -> width - 1 - x;
    - half-body, for people with more than half_body_min labelled keypoints, with probability
      half_body_p: the upper half where randn < 0.5 (p 0.69, the official test) and it has more than
      2 labelled keypoints, else the lower half if that has more than 2, else the upper; center = the
      mean of those keypoints (in the mirrored frame where flipped), scale = their bounding box grown
      to the input's aspect ratio, / 200, x 1.5 (unchanged when fewer than 2 are selected);
    - scale x clip(randn * scale_factor + 1, 1 - scale_factor, 1 + scale_factor);
    - rotation clip(randn * rotation_factor, -2 rotation_factor, 2 rotation_factor) degrees with
      probability rotation_p, else 0.
    """
    center = np.asarray(center, np.float64)
    n = center.shape[0] if center.ndim else 0
    center = _people("center", center, n, (2,)).copy()
    scale = _people("scale", np.asarray(scale, np.float64), n, (2,)).copy()
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 2:
        raise InputError(f"keypoints must be (N, K, 2) image pixels with N = {n} people; got shape {keypoints.shape}")
    k = keypoints.shape[1]
    labelled = _people("visible", visible, n, (k,)) > 0
    flip_index = _check_flip_index(flip_index, k)
    widths = _people("image_widths", np.asarray(image_widths, np.float64), n, ())

    # TopDownRandomFlip
    flipped = rng.random(n) < flip_p
    center[:, 0] = np.where(flipped, widths - 1.0 - center[:, 0], center[:, 0])
    keypoints, labelled = _mirror(keypoints, labelled, flipped, widths, flip_index)

    # TopDownHalfBodyTransform
    half_body = np.zeros(n, bool)
    if upper_body is not None:
        upper = np.zeros(k, bool)
        try:
            upper[np.asarray(upper_body, np.int64)] = True
        except IndexError:
            raise InputError(f"upper_body must hold keypoint indices below {k}; got {list(upper_body)}") from None
        eligible = labelled.sum(axis=1) > half_body_min
        half_body = eligible & (rng.random(n) < half_body_p)
        in_upper = labelled & upper
        in_lower = labelled & ~upper
        n_upper, n_lower = in_upper.sum(axis=1), in_lower.sum(axis=1)
        take_upper = ((rng.standard_normal(n) < 0.5) & (n_upper > 2)) | (n_lower <= 2)
        selected = np.where(take_upper[:, None], in_upper, in_lower)
        half_body &= selected.sum(axis=1) >= 2
        if half_body.any():
            c, s = _half_body_box(keypoints[half_body], selected[half_body], input_size)
            center[half_body], scale[half_body] = c, s

    # TopDownGetRandomScaleRotation
    scale *= np.clip(rng.standard_normal(n) * scale_factor + 1.0, 1.0 - scale_factor, 1.0 + scale_factor)[:, None]
    rotation = np.clip(rng.standard_normal(n) * rotation_factor, -2.0 * rotation_factor, 2.0 * rotation_factor)
    rotation = np.where(rng.random(n) < rotation_p, rotation, 0.0)

    return Augmentation(center.astype(np.float32), scale.astype(np.float32), rotation.astype(np.float32),
                        flipped, half_body, widths.astype(np.float32))


def _half_body_box(keypoints, selected, input_size):
    """Center and scale of the selected keypoints: their mean, their box at the input's aspect ratio, x1.5."""
    count = selected.sum(axis=1)[:, None]
    center = np.where(selected[..., None], keypoints, 0.0).sum(axis=1) / count
    low = np.where(selected[..., None], keypoints, np.inf).min(axis=1)
    high = np.where(selected[..., None], keypoints, -np.inf).max(axis=1)
    w, h = (high - low).T
    aspect = input_size[0] / input_size[1]
    w, h = np.where(w > aspect * h, w, h * aspect), np.where(w > aspect * h, w / aspect, h)
    return center, np.stack([w, h], axis=1) / PIXEL_STD * 1.5


def training_matrices(aug, input_size=(192, 256), image_widths=None) -> np.ndarray:
    """(N, 2, 3) float32 affines from the ORIGINAL image to the crop: the official UDP warp
    (get_warp_matrix(rotation, 2 center, input_size - 1, 200 scale), as TopDownAffine use_udp=True)
    after the mirror x -> width - 1 - x where flipped. image_widths: None takes aug.image_widths.

    Without rotation and flip they equal geometry.udp_matrices(center, scale, input_size).
    """
    center = _people("aug.center", np.asarray(aug.center, np.float64), len(aug.flipped), (2,))
    n = len(center)
    widths = np.asarray(aug.image_widths if image_widths is None else image_widths, np.float64)
    _people("image_widths", widths, n, ())
    size = np.asarray(aug.scale, np.float64) * PIXEL_STD
    factor = (np.asarray(input_size, np.float64) - 1.0) / size  # (N, 2): crop pixels per image pixel
    theta = np.deg2rad(np.asarray(aug.rotation, np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)  # (N, 2, 2)
    # crop = factor * (R (p - center) + size / 2)
    m = np.empty((n, 2, 3), np.float64)
    m[:, :, :2] = factor[:, :, None] * rotate
    m[:, :, 2] = factor * (0.5 * size - np.einsum("nij,nj->ni", rotate, center))
    # the mirrored image's pixel x is the original's width - 1 - x
    flipped = np.asarray(aug.flipped, bool)
    m[flipped, :, 2] += m[flipped, :, 0] * (widths[flipped, None] - 1.0)
    m[flipped, :, 0] *= -1.0
    return m.astype(np.float32)


def transform_keypoints(keypoints, visible, matrices, aug, flip_index, input_size=(192, 256)):
    """keypoints (N, K, 2) ORIGINAL image pixels -> (keypoints (N, K, 2) float32 crop-input pixels,
    visible (N, K)), through the training_matrices. Where flipped, the channels are swapped by
    flip_index, so channel k holds the keypoint that looks like k in the mirrored crop.

    Visibility is only swapped, never cleared for keypoints that leave the crop: the official
    pipeline keeps it, and udp_heatmaps zeroes the weight of those whose window misses the heatmap.
    (input_size is therefore not needed; it is accepted to match training_matrices.)
    """
    matrices = np.asarray(matrices, np.float64)
    n = matrices.shape[0] if matrices.ndim else 0
    _people("matrices", matrices, n, (2, 3))
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 2:
        raise InputError(f"keypoints must be (N, K, 2) image pixels with N = {n} people; got shape {keypoints.shape}")
    k = keypoints.shape[1]
    visible = _people("visible", visible, n, (k,))
    flip_index = _check_flip_index(flip_index, k)
    flipped = _people("aug.flipped", np.asarray(aug.flipped, bool), n, ())
    crop = np.einsum("nij,nkj->nki", matrices[:, :, :2], keypoints) + matrices[:, None, :, 2]
    crop = np.where(flipped[:, None, None], crop[:, flip_index], crop)
    visible = np.where(flipped[:, None], visible[:, flip_index], visible)
    return crop.astype(np.float32), visible
