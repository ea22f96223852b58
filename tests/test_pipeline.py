"""PoseEstimator: one network batch for all people of all images, flip test, bad input skipped."""
import logging

import cv2
import numpy as np
import pytest
import torch
from conftest import ASSETS, GPU, RTMDET

from rapidpose import PoseEstimator, Poses, load_model

IMAGE = ASSETS / "images" / "coco-mmpose" / "000000000785.jpg"


def rgb(path=IMAGE):
    return cv2.imread(str(path))[:, :, ::-1].copy()


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint):
    return PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32")


def count_forward_calls(est, monkeypatch):
    calls = []
    model = est.runtime.model
    original = model.forward

    def spy(x, dataset_index=None):
        calls.append(len(x))
        return original(x, dataset_index)

    monkeypatch.setattr(model, "forward", spy)
    return calls


def test_all_people_of_all_images_share_one_batch(estimator, monkeypatch):
    calls = count_forward_calls(estimator, monkeypatch)
    images = [rgb(), rgb()[:300, :400]]
    boxes = [np.array([[280, 44, 499, 391], [10, 10, 200, 300], [300, 100, 360, 250]]),
             np.array([[5, 5, 100, 200], [150, 20, 390, 290]])]
    results = estimator.predict(images, boxes)
    assert calls == [5]
    assert [len(r) for r in results] == [3, 2]
    for res, b in zip(results, boxes):
        assert res.keypoints.shape == (len(b), 17, 2) and res.keypoint_scores.shape == (len(b), 17)
        assert np.allclose(res.boxes, b)
        # keypoints land inside the padded crop region of their box
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        side = np.maximum(w, h) * 1.25
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        assert (np.abs(res.keypoints[..., 0] - cx[:, None]) <= side[:, None]).all()
        assert (np.abs(res.keypoints[..., 1] - cy[:, None]) <= side[:, None]).all()
    # the same person alone gives the same keypoints as in the batch
    single = estimator(images[0], boxes[0][:1])
    assert np.allclose(single.keypoints, results[0].keypoints[:1], atol=1e-3)


def test_flip_test_runs_mirrors_in_the_same_batch(tiny_checkpoint, monkeypatch):
    est = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=True)
    calls = count_forward_calls(est, monkeypatch)
    boxes = np.array([[280, 44, 499, 391], [10, 10, 200, 300]])
    flipped = est(rgb(), boxes)
    assert calls == [4]
    plain = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32")(rgb(), boxes)
    assert not np.allclose(flipped.keypoint_scores, plain.keypoint_scores)


class MirrorAwareNetwork:
    """A stand-in network that sees the mirror image as a trained one does: on a mirrored crop, the
    heatmap of a person's left_X is the mirror of what the original crop gives for right_X. Each pair
    of channels weighs the crop by its own left-right ramp (the pairs found from the keypoint names,
    not from the skeleton's flip pairs), so any wrong channel swap changes the averaged heatmaps."""

    def __init__(self, skeleton, batch_size=64):
        self.skeleton, self.input_size, self.batch_size, self.device = skeleton, (192, 256), batch_size, "cpu"
        names = skeleton.keypoints
        x = (np.arange(48) + 0.5) / 48
        self.ramps = np.empty((len(names), 48))
        for i, name in enumerate(names):
            if name.startswith(("left_", "right_")):
                side, part = name.split("_", 1)
                power = 1 + sorted(n.split("_", 1)[1] for n in names if n.startswith("left_")).index(part)
                # a person's left is on the image's right: weigh the right of the crop for left_X
                self.ramps[i] = x ** power if side == "left" else x[::-1] ** power
            else:
                self.ramps[i] = 1 - np.abs(x - 0.5)  # mirror-symmetric for points on the midline

    def __call__(self, crops):
        n = len(crops)
        brightness = crops.mean(1).reshape(n, 64, 4, 48, 4).mean((2, 4))  # 4x4 pooling: mirrors exactly
        return (brightness[:, None] * self.ramps[None, :, None, :]).astype(np.float32)

    def run(self, crops):
        return torch.from_numpy(self(crops.numpy()))


@pytest.mark.parametrize("path", ["host", "device"])
def test_flip_test_swaps_left_and_right_channels(tiny_checkpoint, path):
    """With a network that knows left from right in the mirror image, the flip test's average of the
    crop and its mirror equals the crop's own heatmaps: the left/right channels were swapped right."""
    est = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=True, batch_size=2)
    est.runtime = MirrorAwareNetwork(est.skeleton, batch_size=2)
    est.on_gpu = path == "device"  # the torch path (flip_back_torch), driven on the CPU
    image = rgb()
    boxes = np.array([[280, 44, 499, 391], [10, 10, 200, 300], [300, 100, 360, 250]])
    flipped = est.predict([image], [boxes], return_heatmaps=True)[0]
    est.flip_test = False
    plain = est.predict([image], [boxes], return_heatmaps=True)[0]
    assert np.abs(plain.heatmaps).max() > 0.1
    np.testing.assert_allclose(flipped.heatmaps, plain.heatmaps, atol=1e-5)
    np.testing.assert_allclose(flipped.keypoints, plain.keypoints, atol=1e-3)
    # and the stand-in is not blind to the swap: without it the averages differ
    est.flip_test, est._flip_index = True, np.arange(17)
    unswapped = est.predict([image], [boxes], return_heatmaps=True)[0]
    assert np.abs(unswapped.heatmaps - plain.heatmaps).max() > 0.01


def test_flip_test_is_exact_for_a_mirror_symmetric_input(tiny_checkpoint):
    """Flip test averages h(x) and flip_back(h(mirror x)): on a mirror-symmetric crop with a
    symmetric network output the two halves agree, so the result equals the plain one."""
    est = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=True)
    x = np.random.default_rng(0).normal(size=(1, 3, 256, 192)).astype(np.float32)
    x = (x + x[..., ::-1]) / 2
    plain = est.runtime(x)
    both = est._heatmaps(x)
    # channels without a partner (the nose) see only the mirror: heatmap equals its own mirror average
    assert np.allclose(both[:, 0], (plain[:, 0] + plain[:, 0, :, ::-1]) / 2, atol=1e-5)


def test_no_boxes_means_detector_or_whole_image(tiny_checkpoint):
    whole = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32")(rgb())
    assert len(whole) == 1 and np.allclose(whole.boxes, [[0, 0, 640, 425]])
    detected = PoseEstimator(tiny_checkpoint, backend="torch", detector=RTMDET)(rgb())
    assert len(detected) >= 1 and (detected.box_scores >= 0.3).all()


def test_bad_boxes_and_images_are_skipped_not_fatal(estimator, caplog):
    caplog.set_level(logging.WARNING, "rapidpose")
    boxes = [np.array([[0, 0, 0, 10, 1], [np.nan, 0, 5, 5, 1], [2000, 2000, 2100, 2100, 1], [-50, -50, 100, 200, 0.7]]),
             np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10], [5, 5, 20]]),
             np.array([[280, 44, 499, 391], [20, 30, 10, 40]]), np.array([[280, 44, 499, 391]], np.float32)]
    results = estimator.predict([rgb(), 42, rgb(), rgb(), rgb()], boxes)  # (a string is a file path: tests/test_interop.py)
    assert len(results[0]) == 1 and results[0].box_scores[0] == pytest.approx(0.7)
    assert [len(r) for r in results[1:]] == [0, 0, 1, 1]
    text = caplog.text
    assert "box 0" in text and "box 1" in text and "outside the image" in text and "image 1 is a int" in text
    assert "image 0: box 2 [2000.0, 2000.0, 2100.0, 2100.0] lies outside the image" in text
    assert "image 2: its boxes must be an (N, 4) array of x1, y1, x2, y2 (or (N, 5) with scores); got (2, 3)" in text
    assert "image 3: box 1 [20.0, 30.0, 10.0, 40.0] is empty or not finite" in text  # its own index, not the call's
    boxes[4][0, 0] = 0  # results keep their own copy of the boxes
    assert results[4].boxes[0, 0] == 280


def test_box_warnings_name_the_file(estimator, caplog, tmp_path):
    """An image given as a path is named by it in the messages; arrays by the names= given (what
    `rapidpose predict` passes for the files it read), else by their position."""
    caplog.set_level(logging.WARNING, "rapidpose")
    bad = np.array([[2000, 2000, 2100, 2100], [280, 44, 499, 391]])
    results = estimator.predict([IMAGE, rgb()], [bad, bad])
    assert [len(r) for r in results] == [1, 1]
    assert f"'{IMAGE}': box 0 [2000.0, 2000.0, 2100.0, 2100.0] lies outside the image" in caplog.text
    assert "image 1: box 0" in caplog.text and "image 0" not in caplog.text

    caplog.clear()
    results = estimator.predict([rgb(), rgb()], [bad, bad[1:]], names=["photos/a.jpg", "photos/b.jpg"])
    assert [len(r) for r in results] == [1, 1]
    assert "'photos/a.jpg': box 0" in caplog.text and "photos/b.jpg" not in caplog.text
    assert "image 0" not in caplog.text

    caplog.clear()
    estimator(rgb(), bad, name="cam-3/frame-12.png")
    assert "'cam-3/frame-12.png': box 0" in caplog.text
    from rapidpose import InputError

    with pytest.raises(InputError, match="2 images but 1 names"):
        estimator.predict([rgb(), rgb()], names=["a.jpg"])


@pytest.mark.parametrize("image", [
    np.full((40, 30), 128, np.uint8),  # grayscale
    np.full((40, 30, 4), 128, np.uint8),  # RGBA
    np.full((40, 30, 3), 40000, np.uint16),  # 16 bit
    np.full((1, 1, 3), 9, np.uint8),  # 1x1
], ids=["gray", "rgba", "16bit", "1x1"])
def test_any_image_kind_works(estimator, image):
    poses = estimator(image)
    assert len(poses) == 1 and np.isfinite(poses.keypoints).all()


def test_box_count_mismatch_is_a_clear_error(estimator):
    from rapidpose import InputError

    with pytest.raises(InputError, match="2 images but 1 box"):
        estimator.predict([rgb(), rgb()], [np.zeros((0, 4))])


def test_poses_converters_and_indexing():
    from rapidpose.skeletons import COCO

    kps = np.arange(2 * 17 * 2, dtype=np.float32).reshape(2, 17, 2)
    scores = np.full((2, 17), 0.1, np.float32)
    scores[0, :4] = 0.8
    poses = Poses(np.array([[0, 0, 10, 20], [5, 5, 15, 25]]), [0.9, 0.5], kps, scores, COCO)
    assert len(poses[poses.box_scores > 0.6]) == 1 and len(poses[1]) == 1
    person = poses.to_list()[0]
    assert person["box"] == [0, 0, 10, 20] and len(person["keypoints"]) == 17
    assert person["keypoints"][1] == [2.0, 3.0, 0.8]
    coco = poses.to_coco(image_id=785)
    assert coco[0]["bbox"] == [0, 0, 10, 20] and len(coco[0]["keypoints"]) == 51
    assert coco[0]["score"] == pytest.approx(0.9 * 0.8)  # box score x mean of scores above 0.2
    assert coco[1]["score"] == 0.0
    assert len(Poses.empty()) == 0 and Poses.empty().to_coco(1) == []


def test_dataset_index_picks_expert_and_keypoint_set(tmp_path):
    from conftest import randomize_

    from rapidpose.model.vitpose import ViTPose, ViTPoseConfig

    cfg = ViTPoseConfig(dim=384, depth=1, heads=12, num_experts=6, part_features=96,
                        associate_keypoints=(14, 16, 17, 17, 133))
    torch.save(randomize_(ViTPose(cfg)).state_dict(), tmp_path / "plus.pth")
    est = PoseEstimator(load_model(tmp_path / "plus.pth", dataset_index=2), flip_test=True)
    poses = est(rgb(), np.array([[280, 44, 499, 391]]))
    assert poses.skeleton.name == "mpii" and poses.keypoints.shape == (1, 16, 2)


def test_automatic_cpu_backend_gives_the_torch_result(tiny_checkpoint):
    """auto on a CPU: OpenVINO when installed (bf16 where the CPU has it), else torch."""
    boxes = np.array([[280, 44, 499, 391], [10, 10, 200, 300]])
    ref = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32").predict([rgb()], [boxes], True)[0]
    auto = PoseEstimator(tiny_checkpoint)
    got = auto.predict([rgb()], [boxes], True)[0]
    cos = (got.heatmaps * ref.heatmaps).sum() / np.linalg.norm(got.heatmaps) / np.linalg.norm(ref.heatmaps)
    assert cos > 0.999  # (keypoints are not compared: random weights give flat maps whose ties bf16 may flip)
    backend = {"OpenVinoRuntime": "openvino", "TorchRuntime": "torch"}[type(auto.runtime).__name__]
    exact = PoseEstimator(tiny_checkpoint, backend=backend, precision="fp32")  # fp32: the reference
    assert np.allclose(exact.predict([rgb()], [boxes], True)[0].heatmaps, ref.heatmaps, atol=1e-4)


def test_device_path_gives_the_cpu_path_result(tiny_checkpoint):
    """The all-on-device path (regions uploaded, chunks of one batch, warp and decode in torch),
    driven on the CPU: same keypoints as the numpy path, with images in several chunks."""
    images = [rgb(), rgb()[:300, :400], np.zeros((20, 30, 3), np.uint8), rgb()[::-1]]
    boxes = [np.array([[280, 44, 499, 391], [10, 10, 200, 300], [300, 100, 360, 250]]),
             np.array([[5, 5, 100, 200], [150, 20, 390, 290]]), np.zeros((0, 4)), np.array([[0, 0, 640, 425]])]
    ref = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=True)
    want = ref.predict(images, boxes, return_heatmaps=True)
    on_device = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=True, batch_size=2)
    on_device.on_gpu = True
    got = on_device.predict(images, boxes, return_heatmaps=True)
    assert [len(g) for g in got] == [3, 2, 0, 1]
    for g, w in zip(got, want):
        assert g.heatmaps.shape == w.heatmaps.shape
        assert np.abs(g.heatmaps - w.heatmaps).max(initial=0) <= 1e-3 * np.abs(w.heatmaps).max(initial=1e-6)
        # random weights give flat maps: a near-tie may resolve differently at a keypoint or two
        d = np.linalg.norm(g.keypoints - w.keypoints, axis=-1)
        assert d.size == 0 or (np.median(d) < 1e-3 and np.percentile(d, 90) < 0.05)
    assert on_device.predict([images[2]], [boxes[2]])[0].keypoints.shape == (0, 17, 2)


@pytest.mark.gpu
@GPU
def test_cuda_gives_the_cpu_result(tiny_checkpoint):
    boxes = np.array([[280, 44, 499, 391], [10, 10, 200, 300]])
    cpu = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32", flip_test=True).predict([rgb()], [boxes], return_heatmaps=True)[0]
    gpu = PoseEstimator(tiny_checkpoint, device="cuda", flip_test=True, detector=RTMDET)
    assert gpu.runtime.device == "cuda"
    got = gpu.predict([rgb()], [boxes], return_heatmaps=True)[0]
    assert np.abs(got.heatmaps - cpu.heatmaps).max() < 1e-2 * np.abs(cpu.heatmaps).max()
    assert np.allclose(got.keypoint_scores, cpu.keypoint_scores, atol=1e-2)
    # random weights give flat maps with near-tied maxima; cuDNN's TF32 may break a tie differently
    close = np.linalg.norm(got.keypoints - cpu.keypoints, axis=-1) < 0.5
    assert close.mean() > 0.8
    assert len(gpu(rgb())) >= 1  # the detector runs on the GPU machine too
