"""Heatmaps -> keypoints: sub-pixel accuracy on synthetic Gaussians, equality with the official steps."""
import cv2
import numpy as np
import pytest
from conftest import gaussian_heatmap

from rapidpose.topdown.decode import argmax_heatmaps, dark_udp, decode_heatmaps, flip_back
from rapidpose.topdown.geometry import boxes_to_center_scale


def official_reference(heatmaps, center, scale, kernel=11):
    """The official mmpose 0.x steps written out per keypoint (slow, plain, independent)."""
    n, k, h, w = heatmaps.shape
    out = np.zeros((n, k, 2))
    for i in range(n):
        for j in range(k):
            hm = heatmaps[i, j]
            y, x = divmod(int(hm.argmax()), w)
            log = np.log(np.clip(cv2.GaussianBlur(hm.copy(), (kernel, kernel), 0), 0.001, 50))
            p = np.pad(log, 1, mode="edge")
            X, Y = x + 1, y + 1
            d = np.array([0.5 * (p[Y, X + 1] - p[Y, X - 1]), 0.5 * (p[Y + 1, X] - p[Y - 1, X])])
            dxx = p[Y, X + 1] - 2 * p[Y, X] + p[Y, X - 1]
            dyy = p[Y + 1, X] - 2 * p[Y, X] + p[Y - 1, X]
            dxy = 0.5 * (p[Y + 1, X + 1] - p[Y, X + 1] - p[Y + 1, X] + 2 * p[Y, X] - p[Y, X - 1]
                         - p[Y - 1, X] + p[Y - 1, X - 1])
            hess = np.array([[dxx, dxy], [dxy, dyy]]) + np.finfo(np.float32).eps * np.eye(2)
            px, py = np.array([x, y]) - np.linalg.inv(hess) @ d
            size = scale[i] * 200
            out[i, j] = [px * size[0] / (w - 1) + center[i, 0] - size[0] / 2,
                         py * size[1] / (h - 1) + center[i, 1] - size[1] / 2]
    return out


def test_subpixel_gaussians_are_recovered():
    rng = np.random.default_rng(0)
    # away from the border (the blur's reach, 5 px) the sub-pixel position is recovered exactly
    truth = np.stack([rng.uniform(6, 41, (4, 17)), rng.uniform(6, 57, (4, 17))], axis=-1)
    heatmaps = np.stack([[gaussian_heatmap(64, 48, x, y) for x, y in person] for person in truth])
    coords, scores = argmax_heatmaps(heatmaps)
    assert np.abs(coords - truth).max() <= 0.5 + 1e-6  # the integer peak is the nearest pixel
    refined = dark_udp(coords, heatmaps)
    assert np.abs(refined - truth).max() < 0.005
    assert np.allclose(scores, heatmaps.reshape(4, 17, -1).max(-1))
    # within the blur's reach of the border, its reflection biases DARK (the official method too)
    edge = np.array([[[1.3, 2.7], [45.8, 60.2], [0.0, 63.0]]])
    maps = np.stack([[gaussian_heatmap(64, 48, x, y) for x, y in edge[0]]])
    assert np.abs(dark_udp(argmax_heatmaps(maps)[0], maps) - edge).max() < 1.5


def test_decode_maps_back_to_image_pixels():
    # box 100x200 at (50, 40): center (100, 140), the crop spans 150 x 200 * 1.25 px
    center, scale = boxes_to_center_scale(np.array([[50, 40, 150, 240]], np.float32))
    assert np.allclose(center, [[100, 140]]) and np.allclose(scale * 200, [[187.5, 250]])
    heatmap = gaussian_heatmap(64, 48, 23.5, 31.5)[None, None]  # the crop's centre, (47/2, 63/2)
    keypoints, scores = decode_heatmaps(heatmap, center, scale)
    assert np.allclose(keypoints[0, 0], [100, 140], atol=0.02)
    assert scores[0, 0] == pytest.approx(heatmap.max())
    heatmap = gaussian_heatmap(64, 48, 8.0, 55.0)[None, None]  # lower left: x 8/47, y 55/63 of the crop
    keypoints, _ = decode_heatmaps(heatmap, center, scale)
    assert np.allclose(keypoints[0, 0], [100 - 93.75 + 8 * 187.5 / 47, 140 - 125 + 55 * 250 / 63], atol=0.02)


def test_vectorised_decode_equals_official_steps():
    rng = np.random.default_rng(1)
    heatmaps = np.zeros((5, 17, 64, 48), np.float32)
    for i in range(5):
        for j in range(17):
            heatmaps[i, j] = rng.uniform(0.3, 1) * gaussian_heatmap(64, 48, rng.uniform(0, 47), rng.uniform(0, 63))
            heatmaps[i, j] += rng.normal(0, 0.02, (64, 48))  # noisy, peaks on edges too
    boxes = np.array([[10, 20, 110, 220], [0, 0, 640, 480], [300, 5, 320, 60], [5, 5, 400, 40], [1, 1, 3, 3]],
                     np.float32)
    center, scale = boxes_to_center_scale(boxes)
    keypoints, scores = decode_heatmaps(heatmaps, center, scale)
    want = official_reference(heatmaps, center, scale)
    assert np.abs(keypoints - want).max() < 2e-4  # pixels: float32 rounding of coordinates up to ~700 (4.3e-5 seen)
    assert np.allclose(scores, heatmaps.reshape(5, 17, -1).max(-1))


def test_degenerate_heatmaps_keep_the_integer_peak():
    flat = np.full((1, 1, 64, 48), 1e-4, np.float32)  # clipped to a constant: no curvature at all
    flat[0, 0, 20, 30] = 2e-4
    ramp = np.tile(np.linspace(0.5, 1, 48, dtype=np.float32), (64, 1))[None, None]  # a saddle-free slope
    for heatmap, peak in ((flat, (30, 20)), (ramp, (47, 0))):
        coords = dark_udp(argmax_heatmaps(heatmap)[0], heatmap)
        assert np.allclose(coords[0, 0], peak)


def test_invalid_keypoints_keep_non_positive_score():
    heatmaps = -np.ones((1, 2, 64, 48), np.float32)
    heatmaps[0, 1] = gaussian_heatmap(64, 48, 10, 10)
    center, scale = boxes_to_center_scale(np.array([[0, 0, 96, 128]], np.float32))
    keypoints, scores = decode_heatmaps(heatmaps, center, scale)
    assert scores[0, 0] <= 0 and scores[0, 1] > 0.99
    assert np.isfinite(keypoints).all()


def test_many_people_at_once():
    """More maps than OpenCV filters in one call (128 channels): 20 people x 17 keypoints."""
    rng = np.random.default_rng(3)
    truth = np.stack([rng.uniform(6, 41, (20, 17)), rng.uniform(6, 57, (20, 17))], axis=-1)
    heatmaps = np.stack([[gaussian_heatmap(64, 48, x, y) for x, y in person] for person in truth])
    refined = dark_udp(argmax_heatmaps(heatmaps)[0], heatmaps)
    assert np.abs(refined - truth).max() < 0.005


def test_empty_batch():
    keypoints, scores = decode_heatmaps(np.zeros((0, 17, 64, 48)), np.zeros((0, 2)), np.zeros((0, 2)))
    assert keypoints.shape == (0, 17, 2) and scores.shape == (0, 17)


def test_flip_back_swaps_sides_and_mirrors():
    heatmaps = np.zeros((1, 3, 64, 48), np.float32)
    heatmaps[0, 1, 10, 5] = 1  # "left" channel peak at x = 5 in the mirrored crop
    back = flip_back(heatmaps, np.array([0, 2, 1]))
    assert back[0, 2, 10, 42] == 1 and back[0, 1].sum() == 0  # right channel, x = 47 - 5
