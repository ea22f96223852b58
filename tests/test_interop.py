"""Interop: images as RGB or BGR arrays, file paths and PIL images; results to and from supervision."""
import logging
import sys

import cv2
import numpy as np
import pytest
import supervision as sv
import torch
from conftest import ASSETS
from PIL import Image

from rapidpose import InputError, MissingDependencyError, PoseEstimator, Poses
from rapidpose.skeletons import COCO

IMAGE = ASSETS / "images" / "coco-mmpose" / "000000000785.jpg"
BOXES = np.array([[280, 44, 499, 391], [10, 10, 200, 300], [300, 100, 360, 250]], np.float32)


def bgr():
    return cv2.imread(str(IMAGE))


def rgb():
    return np.ascontiguousarray(bgr()[:, :, ::-1])


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint):
    return PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32")


def assert_same_poses(got: Poses, want: Poses, heatmaps=True):
    assert len(got) == len(want) and got.skeleton == want.skeleton
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.box_scores, want.box_scores)
    np.testing.assert_array_equal(got.keypoints, want.keypoints)
    np.testing.assert_array_equal(got.keypoint_scores, want.keypoint_scores)
    assert (got.track_ids is None) == (want.track_ids is None)
    if got.track_ids is not None:
        np.testing.assert_array_equal(got.track_ids, want.track_ids)
    if heatmaps and want.heatmaps is not None:
        np.testing.assert_array_equal(got.heatmaps, want.heatmaps)


# --- images in: RGB, BGR, paths, PIL ---


def test_rgb_bgr_path_and_pil_give_identical_keypoints(estimator, tmp_path):
    png = tmp_path / "photo.png"  # lossless: PIL and OpenCV decode it to the same pixels
    cv2.imwrite(str(png), bgr())
    want = estimator.predict([rgb()], [BOXES], return_heatmaps=True)[0]
    assert len(want) == 3 and np.abs(want.heatmaps).max() > 0
    inputs = {
        "bgr array, color='bgr'": dict(image=bgr(), color="bgr"),
        "jpg path (str)": dict(image=str(IMAGE)),
        "png path (Path)": dict(image=png),
        "PIL RGB": dict(image=Image.open(png)),
        "PIL RGBA": dict(image=Image.open(png).convert("RGBA")),
        "bgra array, color='BGR'": dict(image=cv2.cvtColor(bgr(), cv2.COLOR_BGR2BGRA), color="BGR"),
    }
    for what, given in inputs.items():
        got = estimator.predict([given["image"]], [BOXES], return_heatmaps=True, color=given.get("color"))[0]
        try:
            assert_same_poses(got, want)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
    # a path or a PIL image is decoded as RGB whatever color says (it only concerns arrays)
    assert_same_poses(estimator.predict([IMAGE, Image.open(png)], [BOXES, BOXES], True, color="bgr")[1], want)


def test_bgr_is_the_estimators_default_on_request_and_a_call_overrides_it(estimator, tiny_checkpoint):
    want = estimator.predict([rgb()], [BOXES], return_heatmaps=True)[0]
    est = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", color="bgr")
    assert_same_poses(est(bgr(), BOXES), want, heatmaps=False)
    assert_same_poses(est.predict([rgb()], [BOXES], True, color="rgb")[0], want)
    assert_same_poses(est(IMAGE, BOXES), want, heatmaps=False)


def test_a_bgr_array_taken_for_rgb_gives_other_heatmaps(estimator):
    """The conversion is no no-op: without color='bgr' the network sees other colours."""
    want = estimator.predict([rgb()], [BOXES], return_heatmaps=True)[0]
    wrong = estimator.predict([bgr()], [BOXES], return_heatmaps=True)[0]
    assert np.abs(wrong.heatmaps - want.heatmaps).max() > 1e-3 * np.abs(want.heatmaps).max()


def test_an_unknown_color_is_an_input_error(estimator, tiny_checkpoint):
    with pytest.raises(InputError, match="color='hsv'.*'rgb'.*'bgr'"):
        PoseEstimator(tiny_checkpoint, backend="torch", color="hsv")
    with pytest.raises(InputError, match="color='brg'"):
        estimator.predict([rgb()], [BOXES], color="brg")
    with pytest.raises(InputError, match="color=3"):
        estimator(rgb(), BOXES, color=3)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "I;16", "I", "F", "CMYK", "1"])
def test_pil_images_of_any_mode(estimator, mode):
    """PIL images of other modes become RGB as their arrays would: gray repeated, 16 bit scaled."""
    from rapidpose.io import as_rgb, to_rgb

    gray = cv2.cvtColor(bgr(), cv2.COLOR_BGR2GRAY)
    source = {"L": Image.fromarray(gray), "LA": Image.fromarray(gray).convert("LA"),
              "P": Image.fromarray(rgb()).convert("P"), "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
              "I": Image.fromarray(gray.astype(np.int32) * 257), "F": Image.fromarray(gray.astype(np.float32)),
              "CMYK": Image.fromarray(rgb()).convert("CMYK"), "1": Image.fromarray(gray).convert("1")}[mode]
    assert source.mode == mode
    got = to_rgb(source)
    assert got.shape == (425, 640, 3) and got.dtype == np.uint8
    if mode in ("L", "LA", "I;16", "I", "F"):
        np.testing.assert_array_equal(got, as_rgb(gray))
    else:
        np.testing.assert_array_equal(got, np.asarray(source.convert("RGB")))
    poses = estimator(source, BOXES[:1])
    assert len(poses) == 1 and np.isfinite(poses.keypoints).all()


def test_an_unreadable_path_is_reported_and_skipped(estimator, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "rapidpose")
    broken = tmp_path / "broken-photo.jpg"
    broken.write_bytes(b"not a jpeg at all")
    results = estimator.predict([rgb(), broken, str(tmp_path / "missing-photo.png"), IMAGE],
                                [BOXES, BOXES, BOXES, BOXES[:2]])
    assert [len(r) for r in results] == [3, 0, 0, 2]
    assert_same_poses(results[3], results[0][:2])
    assert "broken-photo.jpg' could not be decoded" in caplog.text
    assert "missing-photo.png' does not exist" in caplog.text


def test_tensors_on_the_device_keep_working_in_either_order(tiny_checkpoint):
    """The all-on-device path (driven on the CPU) takes (H, W, 3) tensors, BGR ones on request."""
    est = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32")
    want = est.predict([rgb()], [BOXES], return_heatmaps=True)[0]
    est.on_gpu = True
    for image, color in [(torch.from_numpy(rgb()), None), (torch.from_numpy(bgr()), "bgr")]:
        got = est.predict([image], [BOXES], return_heatmaps=True, color=color)[0]
        assert np.abs(got.heatmaps - want.heatmaps).max() <= 1e-3 * np.abs(want.heatmaps).max()
        d = np.linalg.norm(got.keypoints - want.keypoints, axis=-1)
        assert np.median(d) < 1e-3 and np.percentile(d, 90) < 0.05  # near-ties of random weights aside
    swapped = est.predict([torch.from_numpy(bgr())], [BOXES], return_heatmaps=True)[0]
    assert np.abs(swapped.heatmaps - want.heatmaps).max() > 1e-3 * np.abs(want.heatmaps).max()


# --- results out: supervision ---


@pytest.fixture(scope="module")
def tracked(estimator):
    poses = estimator(rgb(), np.concatenate([BOXES, [[0.9], [0.6], [0.4]]], axis=1))
    poses.track_ids = np.array([4, 9, 12])
    np.testing.assert_allclose(poses.box_scores, [0.9, 0.6, 0.4])
    return poses


def test_to_supervision_keypoints_and_detections(tracked):
    kp = tracked.to_supervision()
    assert isinstance(kp, sv.KeyPoints) and len(kp) == 3
    np.testing.assert_array_equal(kp.xy, tracked.keypoints)
    np.testing.assert_array_equal(kp.keypoint_confidence, tracked.keypoint_scores)
    np.testing.assert_array_equal(kp.detection_confidence, tracked.box_scores)
    np.testing.assert_array_equal(kp.class_id, [0, 0, 0])
    np.testing.assert_array_equal(kp.data["tracker_id"], [4, 9, 12])
    np.testing.assert_array_equal(kp.data["xyxy"], BOXES)
    # supervision's own selection keeps the data of each person
    picked = kp[kp.detection_confidence > 0.5]
    assert len(picked) == 2 and picked.data["tracker_id"].tolist() == [4, 9]

    det = tracked.to_supervision_detections()
    assert isinstance(det, sv.Detections) and len(det) == 3
    np.testing.assert_array_equal(det.xyxy, BOXES)
    np.testing.assert_array_equal(det.confidence, tracked.box_scores)
    np.testing.assert_array_equal(det.class_id, [0, 0, 0])
    np.testing.assert_array_equal(det.tracker_id, [4, 9, 12])
    untracked = Poses(tracked.boxes, tracked.box_scores, tracked.keypoints, tracked.keypoint_scores)
    assert untracked.to_supervision_detections().tracker_id is None
    assert "tracker_id" not in untracked.to_supervision().data
    assert len(Poses.empty().to_supervision()) == 0 and len(Poses.empty().to_supervision_detections()) == 0


def test_supervision_round_trip(tracked):
    assert_same_poses(Poses.from_supervision(tracked.to_supervision()), tracked)
    assert_same_poses(Poses.from_supervision(tracked.to_supervision(), tracked.to_supervision_detections(),
                                             skeleton="coco"), tracked)
    # detections win over what the keypoints carry; without either, boxes hug the keypoints
    bare = sv.KeyPoints(xy=tracked.keypoints, keypoint_confidence=tracked.keypoint_scores)
    with_detections = Poses.from_supervision(bare, tracked.to_supervision_detections(), skeleton=COCO)
    assert_same_poses(with_detections, tracked)
    alone = Poses.from_supervision(bare)
    np.testing.assert_allclose(alone.boxes[:, :2], tracked.keypoints.min(1))
    np.testing.assert_allclose(alone.boxes[:, 2:], tracked.keypoints.max(1))
    assert (alone.box_scores == 1).all() and alone.track_ids is None and alone.skeleton == COCO
    assert len(Poses.from_supervision(sv.KeyPoints.empty())) == 0


def test_from_supervision_refuses_what_does_not_fit(tracked):
    with pytest.raises(InputError, match="17 points each but keypoint set 'mpii' has 16"):
        Poses.from_supervision(tracked.to_supervision(), skeleton="mpii")
    with pytest.raises(InputError, match="unknown keypoint set"):
        Poses.from_supervision(tracked.to_supervision(), skeleton="no-such-set")
    with pytest.raises(InputError, match="2 detections for 3 keypoint sets"):
        Poses.from_supervision(tracked.to_supervision(), tracked[:2].to_supervision_detections())


def test_supervisions_annotators_draw_the_result(tracked):
    scene = rgb()
    kp, det = tracked.to_supervision(), tracked.to_supervision_detections()
    drawn = sv.EdgeAnnotator(edges=tracked.supervision_edges()).annotate(scene.copy(), kp)
    drawn = sv.VertexAnnotator(radius=3).annotate(drawn, kp)
    drawn = sv.BoxAnnotator().annotate(drawn, det)
    drawn = sv.LabelAnnotator().annotate(drawn, det, labels=[f"#{t}" for t in det.tracker_id])
    assert drawn.shape == scene.shape and (drawn != scene).any(axis=2).mean() > 0.001
    # supervision's own COCO skeleton for 17 points (no edges given) accepts it too
    assert (sv.EdgeAnnotator().annotate(scene.copy(), kp) != scene).any()


def test_without_supervision_the_error_says_what_to_install(tracked, monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # makes `import supervision` fail
    for convert in (tracked.to_supervision, tracked.to_supervision_detections):
        with pytest.raises(MissingDependencyError, match="pip install 'supervision"):
            convert()
