import cv2
import numpy as np
import pytest

from rapidpose.draw.cpu import draw_heatmaps, draw_poses, draw_poses_i420, track_color
from rapidpose.errors import InputError
from rapidpose.results import Poses
from rapidpose.skeletons import SKELETONS, skeleton_for


def _image(h=240, w=320, value=128):
    return np.full((h, w, 3), value, np.uint8)


def _person(skeleton=SKELETONS["coco"], x0=100.0, y0=60.0, track_ids=None):
    """One person whose keypoints are spread over a 60 x 120 box at (x0, y0)."""
    k = skeleton.num_keypoints
    rng = np.random.default_rng(0)
    kps = np.stack([x0 + rng.uniform(0, 60, k), y0 + rng.uniform(0, 120, k)], axis=1)
    box = [x0 - 5, y0 - 5, x0 + 65, y0 + 125]
    return Poses([box], [0.9], kps[None], np.ones((1, k)), skeleton, track_ids)


def test_shape_dtype_and_input_untouched():
    image = _image()
    before = image.copy()
    out = draw_poses(image, _person())
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out is not image
    np.testing.assert_array_equal(image, before)
    assert (out != image).any()


def test_pixels_change_near_keypoints_not_far_away():
    image = _image()
    poses = _person(x0=40, y0=40)
    out = draw_poses(image, poses, boxes=False, scores=False)
    changed = (out != image).any(axis=2)
    for x, y in poses.keypoints[0]:
        xi, yi = int(round(x)), int(round(y))
        assert changed[yi - 1:yi + 2, xi - 1:xi + 2].all()
    # nothing drawn in the right part of the image, far from the only person
    assert not changed[:, 150:].any()


def test_edges_need_both_keypoints_above_threshold():
    image = _image()
    kps = np.zeros((1, 17, 2), np.float32)
    kps[0, 5] = (50, 50)  # left shoulder
    kps[0, 6] = (250, 50)  # right shoulder; edge (5, 6) runs along y = 50
    scores = np.zeros((1, 17), np.float32)
    scores[0, [5, 6]] = (0.9, 0.1)
    poses = Poses([[0, 0, 1, 1]], [1.0], kps, scores)
    out = draw_poses(image, poses, boxes=False, scores=False, keypoint_threshold=0.3)
    assert (out[50, 45:56] != 128).any()  # the left shoulder is drawn
    assert (out[50, 120:180] == 128).all()  # no edge to the low-scoring right shoulder
    scores[0, 6] = 0.9
    out = draw_poses(image, Poses([[0, 0, 1, 1]], [1.0], kps, scores), boxes=False, scores=False)
    assert (out[50, 120:180] != 128).any(axis=-1).all()


def test_zero_people_returns_identical_copy():
    image = _image()
    out = draw_poses(image, Poses.empty())
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_nan_and_inf_keypoints_and_boxes_do_not_crash():
    poses = _person()
    poses.keypoints[0, :5] = np.nan
    poses.keypoints[0, 5, 0] = np.inf
    poses.keypoints[0, 6, 1] = -1e30
    poses.keypoint_scores[0, 7] = np.nan
    poses.boxes[0, 0] = np.nan
    out = draw_poses(_image(), poses)
    assert out.shape == (240, 320, 3)


@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_every_skeleton_draws(name):
    out = draw_poses(_image(), _person(SKELETONS[name]))
    assert (out != 128).any()


def test_custom_skeleton_without_edges():
    out = draw_poses(_image(), _person(skeleton_for(5)))
    assert (out != 128).any()


def test_track_ids_and_colors():
    assert track_color(3) == track_color(3)
    colors = {track_color(i) for i in range(20)}
    assert len(colors) == 20
    out = draw_poses(_image(), _person(track_ids=[3]))
    # the box is drawn in the track's colour
    box_pixels = out[55, 100:150]
    assert (np.abs(box_pixels.astype(int) - np.array(track_color(3))).sum(axis=1) < 10).any()


def _line_width(image, thickness=None):
    """Changed pixels across the middle of one horizontal shoulder line."""
    h, w = image.shape[:2]
    kps = np.zeros((1, 17, 2), np.float32)
    kps[0, 5], kps[0, 6] = (w * 0.2, h * 0.5), (w * 0.8, h * 0.5)
    scores = np.zeros((1, 17), np.float32)
    scores[0, [5, 6]] = 1.0
    out = draw_poses(image, Poses([[0, 0, 1, 1]], [1.0], kps, scores), boxes=False, scores=False,
                     thickness=thickness)
    return int((out[:, w // 2] != image[:, w // 2]).any(axis=1).sum())


def test_thickness_scales_with_image():
    small, big = _image(240, 320), _image(960, 1280)
    assert _line_width(big) >= _line_width(big, thickness=1) + 2
    assert _line_width(big) > _line_width(small)
    assert _line_width(big, thickness=9) > _line_width(big)


def test_rejects_non_rgb_uint8():
    with pytest.raises(InputError):
        draw_poses(np.zeros((10, 10), np.uint8), Poses.empty())
    with pytest.raises(InputError):
        draw_poses(np.zeros((10, 10, 3), np.float32), Poses.empty())


def _gaussian(h, w, px, py, sigma=1.5):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2)).astype(np.float32)


def _redness(rgb):
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] - 0.5 * (rgb[..., 1] + rgb[..., 2])


def test_heatmap_peak_lands_where_the_udp_inverse_says():
    h, w = 64, 48
    center = np.array([[150.0, 110.0]])
    scale = np.array([[0.6, 0.8]])  # 120 x 160 px crop, the 192:256 aspect
    px, py = 30, 20
    heatmaps = np.zeros((1, 17, h, w), np.float32)
    heatmaps[0, 3] = _gaussian(h, w, px, py)
    heatmaps[0, 4] = 0.3 * _gaussian(h, w, 10, 50)
    image = _image(value=128)
    out = draw_heatmaps(image, heatmaps, center, scale, alpha=0.6)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, 128)

    sw, sh = scale[0] * 200
    x = px * sw / (w - 1) + center[0, 0] - sw / 2
    y = py * sh / (h - 1) + center[0, 1] - sh / 2
    redness = _redness(out)
    ry, rx = np.unravel_index(np.argmax(redness), redness.shape)
    assert abs(rx - x) <= 2 and abs(ry - y) <= 2, ((rx, ry), (x, y))
    # untouched far from the crop
    np.testing.assert_array_equal(out[:, :80], image[:, :80])
    np.testing.assert_array_equal(out[200:], image[200:])


def test_heatmaps_of_two_people_combine():
    h, w = 64, 48
    center = np.array([[80.0, 110.0], [240.0, 110.0]])
    scale = np.array([[0.6, 0.8], [0.6, 0.8]])
    heatmaps = np.stack([_gaussian(h, w, 24, 32)[None], _gaussian(h, w, 24, 32)[None]])
    out = draw_heatmaps(_image(), heatmaps, center, scale)
    redness = _redness(out)
    # both centres are hot (the Gaussian centre (23.5, 31.5) is the box centre in UDP terms)
    for cx in (80, 240):
        assert redness[109:113, cx - 1:cx + 3].max() > 50


def test_heatmaps_edge_cases():
    image = _image()
    out = draw_heatmaps(image, np.zeros((0, 17, 64, 48)), np.zeros((0, 2)), np.zeros((0, 2)))
    np.testing.assert_array_equal(out, image)
    flat = draw_heatmaps(image, np.zeros((1, 17, 64, 48)), [[100, 100]], [[0.6, 0.8]])
    np.testing.assert_array_equal(flat, image)
    bad = np.full((1, 17, 64, 48), np.nan, np.float32)
    bad[0, 0, 10, 10] = 1.0
    draw_heatmaps(image, bad, [[100, 100]], [[0.6, 0.8]])
    with pytest.raises(InputError):
        draw_heatmaps(image, np.zeros((2, 17, 64, 48)), [[100, 100]], [[0.6, 0.8]])


def _two_people(w, h):
    """Two people of 17 COCO keypoints each, on a grid (keypoints w / 27 apart), with
    track ids and scores: boxes, edges, keypoints, rims and labels all get drawn."""
    step = w / 27
    skeleton = SKELETONS["coco"]
    kps = []
    for x0 in (0.12 * w, 0.58 * w):
        kps.append([(x0 + step * (j % 4), 0.2 * h + step * (j // 4)) for j in range(17)])
    kps = np.array(kps, np.float32)
    boxes = np.concatenate([kps.min(axis=1) - 20, kps.max(axis=1) + 20], axis=1)
    return Poses(boxes, [0.93, 0.71], kps, np.ones((2, 17)), skeleton, np.array([1, 5]))


def _background(w, h):
    """A smooth colourful picture, the frame's RGB as cv2 converts its I420."""
    xs, ys = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    rgb = np.stack([60 + 120 * xs, 80 + 100 * ys, 140 - 60 * xs * ys], axis=-1).astype(np.uint8)
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    return yuv, cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)


@pytest.mark.parametrize("w, h", [(1920, 1080), (640, 360)])
def test_i420_drawing_gives_the_picture_of_draw_poses(w, h):
    yuv, rgb = _background(w, h)
    poses = _two_people(w, h)
    expected = draw_poses(rgb, poses)
    frame = yuv.copy()
    out = draw_poses_i420(frame, poses)
    assert out is frame and (frame != yuv).any()  # drawn in place
    got = cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420).astype(np.int16)
    for x, y in np.round(poses.keypoints.reshape(-1, 2)).astype(int):  # the keypoints' own colours
        assert np.abs(got[y, x] - expected[y, x]).max() <= 12, (x, y, got[y, x], expected[y, x])
    for track, (x1, y1) in zip(poses.track_ids, np.round(poses.boxes[:, :2]).astype(int)):
        color = (expected == track_color(track)).all(axis=-1)
        # boxes and label tags where their colour is 2 px clear of anything else
        pure = cv2.erode(color.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert pure.sum() > 100 and np.abs(got[pure] - expected[pure]).max() <= 12
        # the label, white text on its tag above the box (thin text at small sizes shares its 2x2 chroma
        # with the tag: it is paler there)
        ys, xs = np.nonzero(color[:y1 - 4])
        tag = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        assert np.abs(got[tag] - expected[tag]).mean() < (4 if w >= 1280 else 8)
    diff = np.abs(got - expected)
    drawn = (expected != rgb).any(axis=-1)
    assert drawn.mean() > 0.005 and diff.mean() < 1.5 and diff[drawn].mean() < 20
    # and nothing at all far from the people
    np.testing.assert_array_equal(frame[int(0.9 * h):h], yuv[int(0.9 * h):h])


def test_i420_drawing_of_nobody_and_of_bad_frames():
    yuv, _ = _background(64, 48)
    frame = yuv.copy()
    assert draw_poses_i420(frame, Poses.empty()) is frame
    np.testing.assert_array_equal(frame, yuv)
    for bad in (np.zeros((48, 64, 3), np.uint8), np.zeros((72, 64), np.float32), np.zeros((72, 63), np.uint8),
                np.zeros((71, 64), np.uint8), np.zeros((72, 128), np.uint8)[:, ::2]):
        with pytest.raises(InputError):
            draw_poses_i420(bad, _person())
