"""photos.pipeline.predict_photos: the photo path's stages overlapped, with predict's results."""
import threading

import numpy as np
import pytest
from conftest import ASSETS, GPU, RTMDET

import rapidpose.io as io_module
from rapidpose.errors import InputError
from rapidpose.io import read_image
from rapidpose.photos.pipeline import predict_photos
from rapidpose.topdown.estimator import PoseEstimator

COCO_MMPOSE = sorted((ASSETS / "images" / "coco-mmpose").glob("*.jpg"))
COCO_MINI = sorted((ASSETS / "images" / "coco-val2017-100").glob("*.jpg"))


@pytest.fixture(scope="module")
def est(tiny_checkpoint):
    return PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")


@pytest.fixture
def inputs(tmp_path):
    """Eight photos, a file that is not an image (third) and one that does not exist (seventh)."""
    (tmp_path / "junk.jpg").write_text("not an image")
    paths = [*COCO_MMPOSE, *COCO_MINI[:4]]
    paths.insert(2, tmp_path / "junk.jpg")
    paths.insert(6, tmp_path / "missing.jpg")
    return paths


def assert_same_poses(got, want):
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.box_scores, want.box_scores)
    # the network sees a batch of several photos' people here, one photo's there: float rounding only
    np.testing.assert_allclose(got.keypoints, want.keypoints, atol=0.01)
    np.testing.assert_allclose(got.keypoint_scores, want.keypoint_scores, atol=1e-4)


def detector_threads() -> int:
    return sum(t.name.startswith("rapidpose-detect") for t in threading.enumerate())


@pytest.mark.parametrize("per_batch", [1, 3, 16])
def test_results_are_predicts_in_input_order_with_errors_in_their_place(est, inputs, per_batch):
    results = list(predict_photos(est, inputs, images_per_batch=per_batch))
    assert [r.path for r in results] == inputs and [r.index for r in results] == list(range(len(inputs)))
    for r in results:
        if r.path.name in ("junk.jpg", "missing.jpg"):
            assert isinstance(r.error, InputError) and r.path.name in str(r.error) and r.poses is None
            continue
        assert r.error is None and r.size == (read_image(r.path).shape[1], read_image(r.path).shape[0])
        assert_same_poses(r.poses, est.predict([read_image(r.path)])[0])  # one image, its detector's boxes
    assert sum(len(r.poses) for r in results if r.poses is not None) > 8  # people were found
    assert detector_threads() == 0


def test_the_gpu_shaped_path_gives_the_same_results(tiny_checkpoint, inputs):
    """The path a GPU takes (worker processes decode, the detector's worker on its stream), here
    on the CPU's torch device: the same poses as the plain one."""
    plain = PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")
    shaped = PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")
    shaped.on_gpu = True
    want = list(predict_photos(plain, inputs, images_per_batch=4))
    got = list(predict_photos(shaped, inputs, images_per_batch=4))
    assert [r.path for r in got] == inputs
    for g, w in zip(got, want):
        assert (g.error is None) == (w.error is None)
        if g.error is None:
            assert len(g.poses) == len(w.poses)
            np.testing.assert_array_equal(g.poses.boxes, w.poses.boxes)
            # crops warped on the (torch) device: random weights give flat maps, a near-tie may go the other way
            d = np.linalg.norm(g.poses.keypoints - w.poses.keypoints, axis=-1)
            assert d.size == 0 or (np.median(d) < 1e-3 and np.percentile(d, 90) < 0.05)


def test_given_boxes_and_no_detector(tiny_checkpoint):
    est = PoseEstimator(tiny_checkpoint, backend="torch", precision="fp32")
    asked = []

    def boxes(position, path):
        asked.append((position, path.name))
        return np.array([[10, 20, 200, 300, 0.9], [50, 60, 150, 260, 0.8]], np.float32)[:position + 1]

    results = list(predict_photos(est, COCO_MMPOSE[:3], boxes, images_per_batch=2))
    assert asked == [(i, p.name) for i, p in enumerate(COCO_MMPOSE[:3])]
    assert [len(r.poses) for r in results] == [1, 2, 2]
    np.testing.assert_array_equal(results[0].poses.box_scores, np.float32([0.9]))
    whole = list(predict_photos(est, COCO_MMPOSE[:2]))  # neither boxes nor detector: the whole image
    for r in whole:
        w, h = r.size
        np.testing.assert_array_equal(r.poses.boxes, [[0, 0, w, h]])


def test_leaving_early_stops_the_reading_and_the_worker(est, monkeypatch):
    reads = []
    original = io_module.read_ahead

    def counting(paths, *args, **kwargs):
        for path, image in original(paths, *args, **kwargs):
            reads.append(path)
            yield path, image

    monkeypatch.setattr(io_module, "read_ahead", counting)
    results = predict_photos(est, COCO_MINI[:40], images_per_batch=2, ahead=2)
    first = [next(results) for _ in range(3)]
    assert [r.path for r in first] == COCO_MINI[:3] and detector_threads() == 1
    results.close()
    assert detector_threads() == 0
    assert len(reads) <= 2 * 4  # the batch in hand and the ones ahead, not the 40
    assert reads == COCO_MINI[:len(reads)]


def test_decoding_on_the_gpu_without_one_is_refused_with_the_way_out(est):
    with pytest.raises(InputError, match="--decoder gpu.*not run on a CUDA GPU.*--decoder auto or cpu"):
        next(predict_photos(est, COCO_MMPOSE, decoder="gpu"))
    with pytest.raises(InputError, match="decoder"):
        next(predict_photos(est, COCO_MMPOSE, decoder="nvjpeg"))


def test_detect_gives_the_detectors_boxes_for_many_images_at_once(est):
    images = [read_image(p) for p in COCO_MMPOSE] + [np.zeros((5, 0, 3), np.uint8)]
    found = est.detect(images)
    assert len(found) == len(images) and found[-1].shape == (0, 5)
    for image, got in zip(images, found):
        if image.size:
            boxes, scores = est.detector(image)
            np.testing.assert_array_equal(got, np.concatenate([boxes, scores[:, None]], 1))
    with pytest.raises(InputError, match="no detector"):
        PoseEstimator(est.runtime).detect(images)


torch = pytest.importorskip("torch")


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("decoder", ["cpu", "gpu"])
def test_on_the_gpu_the_pipeline_finds_the_people_the_cpu_finds(tiny_checkpoint, inputs, decoder):
    """Batched detection (and with decoder gpu nvImageCodec's pixels) on the GPU against the CPU's ONNX
    detector and cv2's pixels: the same people, the boxes within 0.1 px (2 px from nvJPEG's pixels)."""
    from rapidpose.photos.decode import gpu_decoding_unavailable

    if decoder == "gpu" and gpu_decoding_unavailable("cuda"):
        pytest.skip(gpu_decoding_unavailable("cuda"))
    cpu = PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")
    gpu = PoseEstimator(tiny_checkpoint, detector=RTMDET, device="cuda", precision="fp32")
    want = list(predict_photos(cpu, inputs, images_per_batch=4))
    got = list(predict_photos(gpu, inputs, images_per_batch=4, decoder=decoder))
    assert [r.path for r in got] == inputs
    for g, w in zip(got, want):
        assert (g.error is None) == (w.error is None), g.path
        if g.error is None:
            assert g.size == w.size and len(g.poses) == len(w.poses), g.path
            if len(w.poses):
                assert np.abs(g.poses.boxes - w.poses.boxes).max() < (2.0 if decoder == "gpu" else 0.1), g.path
