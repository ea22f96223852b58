"""The official training augmentation: crops of the original image that match the official flip-then-warp
pipeline, keypoints that stay on their image content, the left/right swap, and the sampled distributions."""
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
from conftest import ASSETS

from rapidpose.errors import InputError
from rapidpose.skeletons import COCO
from rapidpose.topdown.geometry import boxes_to_center_scale, udp_matrices
from rapidpose.topdown.gpu_ops import warp_crops_torch
from rapidpose.train.augment import sample_augmentation, training_matrices, transform_keypoints

INPUT = (192, 256)
FLIP = COCO.flip_index()
UPPER = list(range(11))
PHOTOS = ASSETS / "images" / "coco-mmpose"


def coco_people(coco, file_name):
    """The photo (RGB) and its annotated people: center, scale, keypoints (N, 17, 2), visibility (N, 17)."""
    image = next(i for i in coco["images"] if i["file_name"] == file_name)
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"] and a["num_keypoints"] > 0]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
    center, scale = boxes_to_center_scale(boxes, INPUT)
    kps = np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), 17, 3)
    photo = cv2.cvtColor(cv2.imread(str(PHOTOS / file_name)), cv2.COLOR_BGR2RGB)
    return photo, center, scale, kps[..., :2], kps[..., 2]


def official_crop(image, joints, visible, aug, i):
    """The official pipeline for person i, literally: TopDownRandomFlip mirrors the image array and the
    joints (fliplr_joints), then TopDownAffine(use_udp=True) warps the mirrored image with get_warp_matrix."""
    if aug.flipped[i]:
        image = image[:, ::-1]
        joints, visible = joints[FLIP].copy(), visible[FLIP]
        joints[:, 0] = image.shape[1] - 1 - joints[:, 0]
    t, (cx, cy), (w, h) = math.radians(aug.rotation[i]), aug.center[i] * 2.0, aug.scale[i] * 200.0
    sx, sy = (INPUT[0] - 1.0) / w, (INPUT[1] - 1.0) / h
    trans = np.array([
        [math.cos(t) * sx, -math.sin(t) * sx, sx * (-0.5 * cx * math.cos(t) + 0.5 * cy * math.sin(t) + 0.5 * w)],
        [math.sin(t) * sy, math.cos(t) * sy, sy * (-0.5 * cx * math.sin(t) - 0.5 * cy * math.cos(t) + 0.5 * h)]],
        np.float32)
    crop = cv2.warpAffine(np.ascontiguousarray(image), trans, INPUT, flags=cv2.INTER_LINEAR)
    return crop, np.c_[joints, np.ones(len(joints))] @ trans.T.astype(np.float64), visible


def sample(seed, center, scale, kps, vis, widths, **kw):
    kw = {"upper_body": UPPER, **kw}
    return sample_augmentation(np.random.default_rng(seed), center, scale, kps, vis, FLIP, image_widths=widths, **kw)


def test_without_augmentation_the_matrices_are_the_plain_udp_crop(coco_mmpose):
    _, center, scale, kps, vis = coco_people(coco_mmpose, "000000197388.jpg")
    aug = sample(0, center, scale, kps, vis, np.full(len(center), 640), flip_p=0, half_body_p=0, scale_factor=0,
                 rotation_p=0)
    assert not aug.flipped.any() and not aug.half_body.any() and not aug.rotation.any()
    np.testing.assert_array_equal(aug.center, center)
    np.testing.assert_array_equal(aug.scale, scale)
    m = training_matrices(aug, INPUT)
    assert m.dtype == np.float32 and m.shape == (len(center), 2, 3)
    np.testing.assert_allclose(m, udp_matrices(center, scale, INPUT), rtol=1e-6, atol=1e-4)
    out, out_vis = transform_keypoints(kps, vis, m, aug, FLIP)
    want = np.einsum("nij,nkj->nki", m[:, :, :2].astype(np.float64), kps) + m[:, None, :, 2]
    np.testing.assert_allclose(out, want, atol=1e-3)
    np.testing.assert_array_equal(out_vis, vis)


@pytest.mark.parametrize("file_name", ["000000000785.jpg", "000000197388.jpg"])
def test_one_warp_of_the_original_equals_the_official_flip_then_warp(coco_mmpose, file_name):
    photo, center, scale, kps, vis = coco_people(coco_mmpose, file_name)
    widths = np.full(len(center), photo.shape[1])
    seen = np.zeros(3, int)
    for seed in range(12):
        aug = sample(seed, center, scale, kps, vis, widths, half_body_p=0.5)
        m = training_matrices(aug, INPUT)
        out, out_vis = transform_keypoints(kps, vis, m, aug, FLIP, INPUT)
        ours = warp_crops_torch(photo, m, INPUT, mean=None).permute(0, 2, 3, 1).numpy()  # the trainer's GPU warp
        for i in range(len(center)):
            want, want_kps, want_vis = official_crop(photo, kps[i], vis[i], aug, i)
            cv2_crop = cv2.warpAffine(photo, m[i], INPUT, flags=cv2.INTER_LINEAR)
            for got in (cv2_crop, ours[i]):
                off = np.abs(got.astype(np.float32) - want)
                assert off.mean() < 0.05 and np.quantile(off, 0.999) <= 2, (seed, i, off.mean(), off.max())
            labelled = want_vis > 0
            np.testing.assert_allclose(out[i][labelled], want_kps[labelled], atol=2e-3)
            np.testing.assert_array_equal(out_vis[i], want_vis)
        seen += [aug.flipped.sum(), aug.half_body.sum(), (aug.rotation != 0).sum()]
    assert (seen > 0).all(), seen  # flips, half bodies and rotations were all checked


def test_a_flipped_crop_is_the_mirror_of_the_unflipped_one(coco_mmpose):
    """The official flip mirrors the image and the center (x -> width - 1 - x): the crop is the mirrored crop."""
    photo, center, scale, kps, vis = coco_people(coco_mmpose, "000000196141.jpg")
    widths = np.full(len(center), photo.shape[1])
    plain, mirrored = (sample(4, center, scale, kps, vis, widths, flip_p=p, half_body_p=0, rotation_p=0)
                       for p in (0.0, 1.0))
    assert mirrored.flipped.all() and not plain.flipped.any()
    np.testing.assert_array_equal(mirrored.scale, plain.scale)  # the same draws, scaled
    np.testing.assert_allclose(mirrored.center[:, 0], photo.shape[1] - 1 - center[:, 0], atol=1e-4)
    turn = np.linspace(-70, 70, len(center)).astype(np.float32)  # a rotation mirrors to the opposite one
    plain = replace(plain, rotation=turn)
    mirrored = replace(mirrored, rotation=-turn)
    for a, b in zip(training_matrices(plain), training_matrices(mirrored)):
        a = cv2.warpAffine(photo, a, INPUT, flags=cv2.INTER_LINEAR)
        b = cv2.warpAffine(photo, b, INPUT, flags=cv2.INTER_LINEAR)
        assert np.abs(a.astype(int) - b[:, ::-1]).max() <= 1


def dot_position(photo, point, matrix, sigma):
    """Where a small Gaussian dot drawn on the photo at `point` lands in the crop: the centroid of the
    crop's change (the warp is linear, so the photo itself cancels)."""
    dotted = photo.copy()
    r = int(4 * sigma) + 2
    x0, y0 = int(point[0]) - r, int(point[1]) - r
    ys, xs = np.mgrid[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
    dotted[ys, xs] += 200.0 * np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * sigma ** 2))
    change = cv2.warpAffine(dotted, matrix, INPUT, flags=cv2.INTER_LINEAR) - \
        cv2.warpAffine(photo, matrix, INPUT, flags=cv2.INTER_LINEAR)
    v, u = np.mgrid[0:INPUT[1], 0:INPUT[0]]
    return np.array([(change * u).sum(), (change * v).sum()]) / change.sum()


def test_keypoints_stay_on_their_image_content(coco_mmpose):
    """A dot drawn at each labelled keypoint of a real photo is found in the crop where transform_keypoints
    puts that keypoint (in its swapped channel where flipped), over seeds with flips, rotations, scales and
    half bodies."""
    photo, center, scale, kps, vis = coco_people(coco_mmpose, "000000197388.jpg")
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = gray.shape
    checked, flipped, worst = 0, 0, 0.0
    for seed in range(10):
        aug = sample(seed, center, scale, kps, vis, np.full(len(center), w), half_body_p=0.5, rotation_p=0.8)
        m = training_matrices(aug, INPUT)
        out, out_vis = transform_keypoints(kps, vis, m, aug, FLIP, INPUT)
        for i in range(len(center)):
            zoom = math.sqrt(abs(np.linalg.det(m[i, :, :2].astype(np.float64))))  # crop pixels per image pixel
            sigma = max(1.5 / zoom, 1.0)  # about 1.5 crop pixels, never under-sampled in the photo
            for k in np.flatnonzero(vis[i] > 0):
                channel = FLIP[k] if aug.flipped[i] else k
                expect = out[i, channel]
                margin, crop_margin = 4 * sigma + 3, 4 * sigma * zoom + 3  # the whole dot in the photo and crop
                inside_photo = margin <= kps[i, k, 0] < w - margin and margin <= kps[i, k, 1] < h - margin
                inside_crop = (expect >= crop_margin).all() and (expect <= np.subtract(INPUT, 1 + crop_margin)).all()
                if not (inside_photo and inside_crop):
                    continue
                found = dot_position(gray, kps[i, k], m[i], sigma)
                worst = max(worst, np.abs(found - expect).max())
                assert out_vis[i, channel] == vis[i, k]
                checked += 1
                flipped += int(aug.flipped[i] and channel != k)
    assert worst < 0.15, worst
    assert checked > 200 and flipped > 50, (checked, flipped)


def test_a_flip_swaps_the_named_pairs(coco_mmpose):
    photo, center, scale, kps, vis = coco_people(coco_mmpose, "000000000785.jpg")
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32)
    vis = vis.copy()
    names = list(COCO.keypoints)
    lw, rw, nose = names.index("left_wrist"), names.index("right_wrist"), names.index("nose")
    vis[0, rw] = 0  # the right wrist unlabelled: after the flip its channel is the left one
    aug = sample(3, center, scale, kps, vis, [photo.shape[1]], flip_p=1.0, half_body_p=0)
    assert aug.flipped.all()
    m = training_matrices(aug, INPUT)
    out, out_vis = transform_keypoints(kps, vis, m, aug, FLIP, INPUT)
    found = dot_position(gray, kps[0, lw], m[0], 2.0)
    assert np.abs(found - out[0, rw]).max() < 0.2  # the left wrist's dot is the right wrist of the mirrored crop
    assert np.abs(found - out[0, lw]).max() > 5
    assert out_vis[0, lw] == 0 and out_vis[0, rw] == vis[0, lw] > 0
    assert np.abs(dot_position(gray, kps[0, nose], m[0], 2.0) - out[0, nose]).max() < 0.2  # the nose stays


def official_half_body(joints, visible, part):
    """TopDownHalfBodyTransform.half_body_transform's box for the chosen half (part: a keypoint mask)."""
    chosen = joints[(visible > 0) & part]
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0)
    aspect = INPUT[0] / INPUT[1]
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w, h]) / 200.0 * 1.5


def test_half_body_boxes_are_the_official_ones(coco_mmpose):
    photo, center, scale, kps, vis = coco_people(coco_mmpose, "000000197388.jpg")
    width = photo.shape[1]
    upper = np.isin(np.arange(17), UPPER)
    boxes = 0
    for seed in range(20):
        aug = sample(seed, center, scale, kps, vis, np.full(len(center), width), half_body_p=1.0, scale_factor=0,
                     rotation_p=0)
        eligible = (vis > 0).sum(axis=1) > 8
        np.testing.assert_array_equal(aug.half_body, eligible)
        for i in np.flatnonzero(aug.half_body):
            joints, v = kps[i].astype(np.float64), vis[i]
            if aug.flipped[i]:  # the half body is taken in the mirrored image, with the swapped channels
                joints, v = joints[FLIP], v[FLIP]
                joints[:, 0] = width - 1 - joints[:, 0]
            candidates = [official_half_body(joints, v, part) for part in (upper, ~upper)
                          if ((v > 0) & part).sum() > 2]
            assert any(np.allclose(aug.center[i], c, atol=1e-3) and np.allclose(aug.scale[i], s, rtol=1e-5)
                       for c, s in candidates), (seed, i)
            boxes += 1
    assert boxes > 40


def test_sampled_distributions_follow_the_official_recipe():
    n = 20000
    rng = np.random.default_rng(7)
    center = rng.uniform(100, 500, (n, 2))
    scale = np.tile([[1.2, 1.6]], (n, 1))
    # upper-body keypoints high in the box, lower-body ones low, so the chosen half shows in the center
    kps = np.concatenate([rng.uniform([0, 0], [100, 100], (n, 11, 2)), rng.uniform([0, 300], [100, 400], (n, 6, 2))], 1)
    vis = np.ones((n, 17))
    groups = np.arange(n) * 4 // n
    vis[groups == 0, 8:] = 0  # 8 labelled: not eligible (the official test is "more than 8")
    vis[groups == 1, 5:11] = 0  # 5 upper, 6 lower: both halves usable
    vis[groups == 2, 13:] = 0  # 11 upper, only 2 lower: the lower half is never chosen
    labelled = (vis > 0).sum(axis=1)
    assert (labelled[groups == 0] == 8).all() and (labelled[groups > 0] > 8).all()
    aug = sample_augmentation(np.random.default_rng(11), center, scale, kps, vis, FLIP,
                              image_widths=np.full(n, 640), upper_body=UPPER)
    for name, value in vars(aug).items():
        assert len(value) == n, name
    assert aug.center.dtype == aug.scale.dtype == aug.rotation.dtype == np.float32
    assert abs(aug.flipped.mean() - 0.5) < 0.02
    assert not aug.half_body[groups == 0].any()
    assert abs(aug.half_body[groups > 0].mean() - 0.3) < 0.02
    # the upper half where randn < 0.5, i.e. with probability Phi(0.5) = 0.69, when the lower one is usable
    chose_upper = aug.center[:, 1] < 200
    both = aug.half_body & ((groups == 1) | (groups == 3))
    assert abs(chose_upper[both].mean() - 0.5 * (1 + math.erf(0.5 / math.sqrt(2)))) < 0.03
    assert chose_upper[aug.half_body & (groups == 2)].all()
    # scale: x clip(N(1, 0.5), 0.5, 1.5), both sides by one factor
    factor = aug.scale[~aug.half_body] / scale[~aug.half_body]
    np.testing.assert_allclose(factor[:, 0], factor[:, 1], rtol=1e-6)
    factor = factor[:, 0]
    assert factor.min() >= 0.5 - 1e-6 and factor.max() <= 1.5 + 1e-6
    phi_minus_1 = 0.5 * (1 + math.erf(-1 / math.sqrt(2)))  # 0.159 of the draws clip at either end
    assert abs(np.isclose(factor, 0.5).mean() - phi_minus_1) < 0.02
    assert abs(np.isclose(factor, 1.5).mean() - phi_minus_1) < 0.02
    assert abs((np.abs(factor - 1) < 0.25).mean() - math.erf(0.5 / math.sqrt(2))) < 0.02  # std 0.5
    # rotation: clip(N(0, 40), -80, 80) with probability 0.6, else 0
    rotation = aug.rotation
    assert abs((rotation == 0).mean() - 0.4) < 0.02
    turned = rotation[rotation != 0]
    assert np.abs(turned).max() <= 80
    assert abs((np.abs(turned) == 80).mean() - (1 - math.erf(2 / math.sqrt(2)))) < 0.01
    assert abs((np.abs(turned) < 40).mean() - math.erf(1 / math.sqrt(2))) < 0.02
    # without upper_body, no half bodies
    assert not sample_augmentation(np.random.default_rng(1), center, scale, kps, vis, FLIP,
                                   image_widths=np.full(n, 640)).half_body.any()


def test_the_same_seed_gives_the_same_augmentation(coco_mmpose):
    _, center, scale, kps, vis = coco_people(coco_mmpose, "000000197388.jpg")
    widths = np.full(len(center), 640)
    a, b = sample(5, center, scale, kps, vis, widths), sample(5, center, scale, kps, vis, widths)
    for name in vars(a):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_wrong_shapes_are_input_errors():
    rng = np.random.default_rng(0)
    center, scale, kps, vis = np.zeros((2, 2)), np.ones((2, 2)), np.zeros((2, 17, 2)), np.ones((2, 17))
    with pytest.raises(InputError, match="scale must be"):
        sample_augmentation(rng, center, np.ones(2), kps, vis, FLIP, image_widths=[640, 640])
    with pytest.raises(InputError, match="keypoints must be"):
        sample_augmentation(rng, center, scale, np.zeros((2, 17, 3)), vis, FLIP, image_widths=[640, 640])
    with pytest.raises(InputError, match="visible must be"):
        sample_augmentation(rng, center, scale, kps, np.ones((2, 16)), FLIP, image_widths=[640, 640])
    with pytest.raises(InputError, match="image_widths must be"):
        sample_augmentation(rng, center, scale, kps, vis, FLIP, image_widths=[640])
    with pytest.raises(InputError, match="flip_index"):
        sample_augmentation(rng, center, scale, kps, vis, np.zeros(17, int), image_widths=[640, 640])
    with pytest.raises(InputError, match="upper_body"):
        sample_augmentation(rng, center, scale, kps, vis, FLIP, image_widths=[640, 640], upper_body=[0, 17])
    aug = sample_augmentation(rng, center, scale, kps, vis, FLIP, image_widths=[640, 640])
    with pytest.raises(InputError, match="matrices must be"):
        transform_keypoints(kps, vis, np.zeros((2, 3, 3)), aug, FLIP)
    with pytest.raises(InputError, match="keypoints must be"):
        transform_keypoints(kps[:1], vis, training_matrices(aug), aug, FLIP)
