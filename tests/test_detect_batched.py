"""Person detection for batches of photos of mixed sizes (detect/batched.py, rtmdet_torch, yolox_torch):
the ONNX graph run by torch (on the CPU here, as CI runs it; on CUDA too where there is one) against
the onnxruntime detector image by image; the letterbox against cv2's bytes; the CPU's parallel
sessions; loading, fallback and bad input."""
import logging

import cv2
import numpy as np
import onnx
import pytest
import torch
from conftest import ASSETS, GPU, RTMDET, YOLOX
from onnx import TensorProto, helper

from rapidpose.detect import load_batched_detector, load_detector
from rapidpose.detect.base import letterbox
from rapidpose.detect.batched import ParallelDetector, plan_for
from rapidpose.detect.onnx_graph import OnnxConvNet
from rapidpose.detect.rtmdet_torch import BatchedRTMDet
from rapidpose.detect.yolox_torch import BatchedYOLOX
from rapidpose.errors import InputError
from rapidpose.io import read_image
from rapidpose.topdown.geometry import box_iou

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PATHS = {"rtmdet": RTMDET, "yolox": YOLOX}
# the 4 coco-mmpose photos (crowds, 500x333 to 640x429) and every 5th coco-mini photo (some without people)
PHOTOS = (sorted((ASSETS / "images" / "coco-mmpose").glob("*.jpg"))
          + sorted((ASSETS / "images" / "coco-mini" / "images").glob("*.jpg"))[::5])

# Measured on this CPU, threshold 0.1, batched torch vs onnxruntime image by image: the same boxes in
# every image; the 16 photos (RTMDet 239 boxes, YOLOX 38): IoU >= 0.99993, scores within 6.1e-6,
# corners within 0.014 px; all 64 coco-mmpose + coco-mini photos (RTMDet 992 boxes): IoU >= 0.99977,
# corners within 0.019 px. On an H200 (coco-mmpose only) these tests pass with the same bounds. The
# letterboxes are cv2's very bytes, so only the float arithmetic of the convolutions differs.
# Asserted with margin:
MIN_IOU = 0.999
SCORE_ATOL = 1e-4
BOX_ATOL = 0.1  # image pixels


@pytest.fixture(scope="module")
def photos():
    return [read_image(p) for p in PHOTOS]


@pytest.fixture(scope="module")
def onnx_detectors():
    return {name: load_detector(path, threshold=0.1) for name, path in PATHS.items()}


def odd_sizes(photo):
    """A tiny image and a large one (1920x1080) made from a photo, and a portrait crop of it."""
    return [cv2.resize(photo, (30, 20), interpolation=cv2.INTER_AREA),
            cv2.resize(photo, (1920, 1080), interpolation=cv2.INTER_CUBIC),
            np.ascontiguousarray(photo[:, 100:300])]


def assert_same_detections(got, want, what):
    (boxes, scores), (ref_boxes, ref_scores) = got, want
    assert len(boxes) == len(ref_boxes), f"{what}: {len(boxes)} boxes, onnxruntime {len(ref_boxes)}"
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and boxes.shape == (len(scores), 4)
    if not len(boxes):
        return
    iou = box_iou(ref_boxes, boxes)
    pair = iou.argmax(1)
    assert sorted(pair.tolist()) == list(range(len(boxes))), f"{what}: boxes paired twice"
    assert iou.max(1).min() > MIN_IOU, what
    np.testing.assert_allclose(scores[pair], ref_scores, atol=SCORE_ATOL, err_msg=what)
    np.testing.assert_allclose(boxes[pair], ref_boxes, atol=BOX_ATOL, err_msg=what)
    assert (np.diff(scores) <= 0).all()


def test_the_letterbox_is_cv2s_bytes():
    """Any size, down or up (exact factors too: cv2 averages 2x2 blocks there), from numpy or from a
    tensor: the very bytes base.letterbox makes with cv2.resize, and its ratio."""
    rng = np.random.default_rng(0)
    shapes = [(425, 640), (333, 500), (480, 640), (640, 427), (20, 30), (30, 20), (1, 1), (1, 700), (7, 5),
              (160, 160), (120, 160), (1080, 1920), (2000, 333), (321, 319)]
    images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in shapes]
    images += [read_image(p) for p in PHOTOS[:4]]
    for path in (RTMDET, YOLOX):  # inputs 320x320 and 416x416
        batched = load_batched_detector(path, "cpu", engine="torch")
        x, ratios = batched.letterbox_images(images)
        assert x.shape == (len(images), 3, batched.input_size[1], batched.input_size[0])
        for image, got, ratio in zip(images, x, ratios.tolist()):
            want, want_ratio = letterbox(image, batched.input_size)
            np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want, err_msg=str(image.shape))
            assert ratio == pytest.approx(want_ratio, rel=1e-7)
        tensors = [torch.from_numpy(i) for i in images[-3:]]  # images already where the detector is
        assert torch.equal(batched.letterbox_images(tensors)[0], x[-3:])
    # a large photo: only the rows the resize reads go to the device (a third of them here)
    assert plan_for(1080, 1920, (320, 320)).read_h == 360 and plan_for(480, 640, (320, 320)).rows is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["rtmdet", "yolox"])
def test_batched_boxes_are_the_onnx_sessions_photo_by_photo(photos, onnx_detectors, name, device):
    detector = onnx_detectors[name]
    batched = load_batched_detector(detector, device, engine="torch")
    assert type(batched) is {"rtmdet": BatchedRTMDet, "yolox": BatchedYOLOX}[name]
    results = batched.detect_batch(photos)  # 16 photos of 10 sizes in one batch
    assert len(results) == len(photos) and len({p.shape for p in photos}) >= 4
    total = 0
    for path, image, got in zip(PHOTOS, photos, results):
        assert_same_detections(got, detector(image), f"{name} {path.name} {image.shape}")
        total += len(got[0])
    assert total > {"rtmdet": 50, "yolox": 12}[name]  # many boxes (coco-mmpose alone: 60 and 14; all 16: 239, 38)
    # chunks of 3 (a last one of 1), and a higher threshold for this call only: the same again
    again = batched.detect_batch(photos, threshold=0.5, batch_size=3)
    for (boxes, scores), (ref_boxes, ref_scores) in zip(again, results):
        assert_same_detections((boxes, scores), (ref_boxes[ref_scores > 0.5], ref_scores[ref_scores > 0.5]), name)
    assert batched.threshold == 0.1


@pytest.mark.parametrize("name", ["rtmdet", "yolox"])
def test_a_tiny_and_a_large_image_in_one_batch(photos, onnx_detectors, name):
    detector = onnx_detectors[name]
    batched = load_batched_detector(detector, "cpu", engine="torch")
    images = odd_sizes(photos[3])  # 4 to 5 people at 640x392
    results = batched.detect_batch(images)
    for image, got in zip(images, results):
        assert_same_detections(got, detector(image), f"{name} {image.shape}")
        h, w = image.shape[:2]
        assert (got[0][:, 2] <= w).all() and (got[0][:, 3] <= h).all() and (got[0] >= 0).all()
    assert len(results[1][0]) >= 4  # the large one: its people, at 3x their size
    # the same images as tensors give the same boxes
    tensors = batched.detect_batch([torch.from_numpy(i) for i in images])
    for (boxes, scores), (want_boxes, want_scores) in zip(tensors, results):
        np.testing.assert_array_equal(boxes, want_boxes)
        np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_nothing_in_nothing_out_and_bad_images_are_skipped(engine, photos, caplog):
    batched = load_batched_detector(RTMDET, "cpu", engine=engine)
    assert batched.detect_batch([]) == []
    gray = cv2.cvtColor(photos[0], cv2.COLOR_RGB2GRAY)  # 2-D gray is taken, as the detector takes it
    with caplog.at_level(logging.WARNING, logger="rapidpose"):
        results = batched.detect_batch([np.zeros((10, 10, 3), np.float32), photos[0], gray,
                                        np.zeros((0, 5, 3), np.uint8)])
    reference = load_detector(RTMDET)
    assert [len(b) for b, _ in results] == [0, len(reference(photos[0])[0]), len(reference(gray)[0]), 0]
    assert len(results[2][0]) >= 1
    assert results[0][0].shape == (0, 4) and results[0][1].dtype == np.float32
    assert "image 0 skipped" in caplog.text and "image 3 skipped" in caplog.text


def test_the_cpus_parallel_sessions_give_the_detectors_boxes(photos, onnx_detectors):
    detector = onnx_detectors["yolox"]
    parallel = ParallelDetector(detector, workers=2)
    assert len(parallel.copies) == 2 and all(c.session is not detector.session for c in parallel.copies)
    images = photos[:6] + odd_sizes(photos[3])
    for (boxes, scores), image in zip(parallel.detect_batch(images, threshold=0.3), images):
        ref_boxes, ref_scores = load_detector(YOLOX, threshold=0.3)(image)
        np.testing.assert_array_equal(boxes, ref_boxes)
        np.testing.assert_array_equal(scores, ref_scores)
    parallel.close()


def test_load_batched_detector_chooses_and_falls_back(monkeypatch, caplog):
    assert isinstance(load_batched_detector(RTMDET), ParallelDetector)  # on the CPU: onnxruntime
    assert isinstance(load_batched_detector(YOLOX, "cpu", engine="torch"), BatchedYOLOX)
    assert load_batched_detector(YOLOX, "cpu", threshold=0.6, engine="torch").threshold == 0.6
    with pytest.raises(InputError, match="engine"):
        load_batched_detector(RTMDET, engine="tensorrt")
    import rapidpose.detect.yolox_torch as yolox_torch

    def unsupported(path):
        raise yolox_torch.CheckpointError("operator Erf is not supported by the PyTorch runner")

    monkeypatch.setattr(yolox_torch, "head_outputs", unsupported)
    with caplog.at_level(logging.WARNING, logger="rapidpose"):
        fallback = load_batched_detector(YOLOX, "cpu", engine="torch")
    assert isinstance(fallback, ParallelDetector) and "runs on onnxruntime" in caplog.text and "Erf" in caplog.text


def test_same_size_frames_through_yolox_on_the_device(photos, onnx_detectors):
    """The video path's call, for YOLOX: frames already on the device, one size, torch's resize
    (a level off cv2's here and there): the people of each frame."""
    frames = [cv2.resize(p, (640, 400)) for p in photos[:4]]
    batched = BatchedYOLOX(onnx_detectors["yolox"], "cpu")
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    for frame, (boxes, scores) in zip(frames, batched(x, 0.3)):
        ref_boxes, ref_scores = onnx_detectors["yolox"](frame)
        ref_boxes = ref_boxes[ref_scores > 0.35]  # near the threshold a box may fall either side
        assert len(ref_boxes) and (box_iou(ref_boxes, boxes).max(1) > 0.97).all()


def test_constant_slices_run_as_onnxruntime_runs_them(tmp_path):
    """YOLOX's stem: Slice with constant starts, INT64_MAX ends, axes and steps of 2."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    consts = [helper.make_tensor(n, TensorProto.INT64, [len(v)], v) for n, v in
              [("s", [1, 0]), ("e", [2 ** 63 - 1, 5]), ("a", [2, 3]), ("k", [2, 2]), ("s1", [1]), ("e1", [3])]]
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", "k"], ["p"]),
             helper.make_node("Slice", ["x", "s1", "e1"], ["q"]),  # default axes and steps
             helper.make_node("Concat", ["p", "p"], ["r"], axis=1),
             helper.make_node("Identity", ["r"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, helper.make_tensor_value_info(
        "q", TensorProto.FLOAT, None)], consts), opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "slices.onnx"
    onnx.save(model, path)
    data = np.random.default_rng(0).standard_normal((2, 3, 8, 6)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": data})
    got = OnnxConvNet(path, ["y", "q"])(torch.from_numpy(data))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w)


def test_a_failed_graph_capture_is_said_and_that_shape_runs_without_one(monkeypatch, caplog):
    from rapidpose.runtime import torch_runtime

    def broken(self, *args):
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture\nmore")

    monkeypatch.setattr(torch_runtime.CudaGraph, "__init__", broken)
    caplog.set_level(logging.WARNING, logger="rapidpose")
    assert torch_runtime.CudaGraph.capture(None, (4, 3, 8, 8), torch.float32, "cuda", None, "the detector") is None
    assert "the detector: capturing the CUDA graph for input (4, 3, 8, 8) failed (CUDA error: operation failed " \
           "due to a previous error during capture); that shape runs without a graph" in caplog.text


@pytest.mark.gpu
@GPU
def test_graphs_captured_from_two_threads_at_once_all_work(onnx_detectors, tiny_checkpoint):
    """The video path captures its detector's graphs and its network's from two threads, each when a
    batch size first comes (a new file of another size, more people): captures must not break each
    other (they ran one at a time in no order, and a capture under way failed)."""
    from concurrent.futures import ThreadPoolExecutor

    from rapidpose.model.weights import load_model
    from rapidpose.runtime.torch_runtime import TorchRuntime

    detector = BatchedRTMDet(onnx_detectors["rtmdet"], "cuda")
    runtime = TorchRuntime(load_model(tiny_checkpoint), "cuda", precision="fp16")
    frames = [torch.rand(b, 3, h, w, device="cuda") * 255 for b, h, w in ((1, 240, 426), (2, 1080, 1920), (4, 480, 640),
                                                                         (8, 240, 426), (16, 720, 1280))]
    crops = [torch.randn(n, 3, 256, 192, device="cuda") for n in (1, 2, 3, 5, 9, 17, 33, 65)]

    def detect():
        return [len(detector(f, 0.3)) for f in frames]

    def pose():
        return [tuple(runtime.run(c).shape) for c in crops]

    with ThreadPoolExecutor(2) as pool:
        found, posed = pool.submit(detect), pool.submit(pose)
        assert found.result() == [1, 2, 4, 8, 16]
        assert [s[0] for s in posed.result()] == [1, 2, 3, 5, 9, 17, 33, 65]
    assert all(g is not None for g in runtime._graphs.values()) and all(g is not None for g in detector._graphs.values())
