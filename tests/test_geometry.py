"""Box -> center/scale, the UDP affine crop and its inverse, checked on known points."""
import math

import numpy as np

from rapidpose.topdown.geometry import (boxes_to_center_scale, heatmap_to_image, normalize_crops, usable_boxes,
                                        udp_matrices, warp_crops)


def official_warp_matrix(theta, size_input, size_dst, size_target):
    """The official get_warp_matrix with rotation, as a reference."""
    t = math.radians(theta)
    sx, sy = size_dst[0] / size_target[0], size_dst[1] / size_target[1]
    return np.array([
        [math.cos(t) * sx, -math.sin(t) * sx,
         sx * (-0.5 * size_input[0] * math.cos(t) + 0.5 * size_input[1] * math.sin(t) + 0.5 * size_target[0])],
        [math.sin(t) * sy, math.cos(t) * sy,
         sy * (-0.5 * size_input[0] * math.sin(t) - 0.5 * size_input[1] * math.cos(t) + 0.5 * size_target[1])]])


def test_center_scale_follows_the_official_rule():
    boxes = np.array([[10, 20, 110, 420], [0, 0, 300, 100], [5, 5, 80, 105]], np.float32)
    center, scale = boxes_to_center_scale(boxes)
    assert np.allclose(center, [[60, 220], [150, 50], [42.5, 55]])
    # tall box: w = 0.75 h; wide box: h = w / 0.75; exactly 3:4 stays
    assert np.allclose(scale * 200 / 1.25, [[300, 400], [300, 400], [75, 100]])
    assert scale.dtype == np.float32


def test_matrices_equal_the_official_ones():
    center, scale = boxes_to_center_scale(np.array([[13.2, 7.9, 211.4, 300.1]], np.float32))
    ours = udp_matrices(center, scale)[0]
    want = official_warp_matrix(0, center[0] * 2, (191, 255), scale[0] * 200)
    assert np.allclose(ours, want, rtol=1e-6, atol=1e-4)


def test_crop_and_inverse_transform_on_known_points():
    h, w = 300, 400
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([xs * 255 / (w - 1), ys * 255 / (h - 1), np.zeros_like(xs)], -1).round().astype(np.uint8)
    center, scale = boxes_to_center_scale(np.array([[100, 50, 220, 250]], np.float32))
    m = udp_matrices(center, scale)
    crop = warp_crops(image, m)[0]
    assert crop.shape == (256, 192, 3)
    # crop pixels map back to image points whose gradient value they hold
    uv = np.array([[[0, 0], [95.5, 127.5], [191, 255], [40, 200]]], np.float32)
    xy = heatmap_to_image(uv, center, scale, (192, 256))[0]
    assert np.allclose(xy[1], center[0], atol=1e-4)  # crop centre = box centre
    for (u, v), (x, y) in zip(uv[0].astype(int), xy):
        if 0 <= x < w and 0 <= y < h:
            assert abs(int(crop[v, u, 0]) - x * 255 / (w - 1)) <= 1.5
            assert abs(int(crop[v, u, 1]) - y * 255 / (h - 1)) <= 1.5
    # the forward matrix sends those image points to the crop points
    forward = xy @ m[0, :, :2].T + m[0, :, 2]
    assert np.allclose(forward, uv[0], atol=1e-3)


def test_outside_the_image_is_black():
    image = np.full((50, 50, 3), 200, np.uint8)
    center, scale = boxes_to_center_scale(np.array([[40, 40, 90, 90]], np.float32))
    crop = warp_crops(image, udp_matrices(center, scale))[0]
    assert crop[-1, -1].tolist() == [0, 0, 0] and crop[0, 0].tolist() == [200, 200, 200]


def test_normalisation_and_bad_boxes():
    x = normalize_crops(np.full((2, 256, 192, 3), 255, np.uint8))
    assert x.shape == (2, 3, 256, 192) and np.allclose(x[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                                                       / np.array([0.229, 0.224, 0.225]), atol=1e-6)
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 9], [np.nan, 0, 1, 1], [3, 3, 1, 1], [50, 5, 60, 9], [-9, 0, 0, 9]],
                     np.float32)
    formed, keep = usable_boxes(boxes, np.full((len(boxes), 2), [40, 30]))
    assert formed.tolist() == [True, False, False, False, True, True]
    assert keep.tolist() == [True, False, False, False, False, False]  # the last two lie beside the 40 x 30 image
