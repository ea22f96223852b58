"""Person detectors on real COCO photos, name resolution and errors; offline, CPU only."""
import json
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from conftest import ASSETS, RTMDET, YOLOX

from rapidpose.detect import KNOWN_DETECTORS, Detector, load_detector
from rapidpose.detect.base import box_iou, letterbox, nms
from rapidpose.errors import CheckpointError, DownloadError, InputError

COCO = ASSETS / "images" / "coco-mmpose"


@pytest.fixture(scope="module")
def images():
    """(image id, RGB image, ground-truth xyxy boxes of people at least 32x32 px in area)."""
    data = json.loads((COCO / "test_coco.json").read_text())
    out = []
    for info in data["images"]:
        rgb = cv2.cvtColor(cv2.imread(str(COCO / info["file_name"])), cv2.COLOR_BGR2RGB)
        # COCO's "small" objects (area < 32^2) are the 2 people of 14 with no keypoint labelled
        # (491 and 286 px^2); the other 12 are the ones every detector here is expected to find.
        gt = [a["bbox"] for a in data["annotations"]
              if a["image_id"] == info["id"] and a["area"] >= 32 ** 2 and not a["iscrowd"]]
        gt = np.array(gt, np.float32).reshape(-1, 4)
        gt[:, 2:] += gt[:, :2]  # xywh -> xyxy
        out.append((info["id"], rgb, gt))
    assert sum(len(gt) for _, _, gt in out) == 12
    return out


@pytest.fixture(scope="module")
def detectors():
    return {"rtmdet": load_detector(RTMDET), "yolox": load_detector(YOLOX)}


def recall(detector, images) -> float:
    found = []
    for _, rgb, gt in images:
        boxes, _ = detector(rgb)
        iou = box_iou(gt, boxes) if len(boxes) else np.zeros((len(gt), 1))
        found.extend(iou.max(axis=1) > 0.5)
    return float(np.mean(found))


def test_load_recognises_layout(detectors):
    assert type(detectors["rtmdet"]).__name__ == "RTMDet" and detectors["rtmdet"].input_size == (320, 320)
    assert type(detectors["yolox"]).__name__ == "YOLOX" and detectors["yolox"].input_size == (416, 416)
    assert all(isinstance(d, Detector) and d.threshold == 0.3 for d in detectors.values())


def test_rtmdet_finds_every_annotated_person(detectors, images):
    assert recall(detectors["rtmdet"], images) == 1.0


def test_yolox_recall(detectors, images):
    # measured: 11 of 12 at threshold 0.3 (one half-hidden person scores 0.29), all 12 at 0.2
    assert recall(detectors["yolox"], images) >= 11 / 12
    assert recall(load_detector(YOLOX, threshold=0.2), images) == 1.0


@pytest.mark.parametrize("name", ["rtmdet", "yolox"])
def test_output_contract(detectors, images, name):
    for _, rgb, _ in images:
        boxes, scores = detectors[name](rgb)
        h, w = rgb.shape[:2]
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        assert boxes.shape == (len(scores), 4) and len(scores) > 0
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (np.diff(scores) <= 0).all() and (scores > 0.3).all()


@pytest.mark.parametrize("path", [RTMDET, YOLOX])
def test_threshold(images, path):
    counts = []
    for threshold in (0.1, 0.3, 0.6, 0.9):
        detector = load_detector(path, threshold=threshold)
        boxes, scores = zip(*(detector(rgb) for _, rgb, _ in images))
        assert all((s > threshold).all() for s in scores)
        counts.append(sum(len(b) for b in boxes))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


@pytest.mark.parametrize("name", ["rtmdet", "yolox"])
def test_no_people_and_grayscale(detectors, images, name):
    detector = detectors[name]
    boxes, scores = detector(np.full((480, 640, 3), 128, np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and boxes.dtype == np.float32

    _, rgb, gt = images[0]  # one large person
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for image in (cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), gray):  # 3-channel gray, and plain 2-D
        boxes, _ = detector(image)
        assert len(boxes) and box_iou(gt, boxes).max() > 0.5


def test_bad_images(detectors):
    with pytest.raises(InputError):
        detectors["rtmdet"](np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError):
        detectors["yolox"](np.zeros((10, 10, 4), np.uint8))


def test_letterbox_and_nms():
    image = np.zeros((100, 200, 3), np.uint8)
    padded, ratio = letterbox(image, (320, 320))
    assert padded.shape == (320, 320, 3) and ratio == 1.6
    assert (padded[160:] == 114).all() and (padded[:160] == 0).all()

    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 11]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.4], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 2, 0, 3]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)).shape == (0,)


@pytest.mark.parametrize("name, asset", [("yolox-nano", YOLOX), ("rtmdet-nano", RTMDET)])
def test_name_from_cache(monkeypatch, tmp_path, name, asset):
    def offline(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("RAPIDPOSE_CACHE", str(tmp_path))
    (tmp_path / KNOWN_DETECTORS[name][1]).symlink_to(asset)
    detector = load_detector(name)
    assert detector.path.name == KNOWN_DETECTORS[name][1]
    assert detector(np.full((64, 64, 3), 128, np.uint8))[0].shape == (0, 4)


def _assert_says_what_to_pass(text):
    assert "--detector /path/to/rtmdet.onnx" in text and "RTMDet" in text and "YOLOX" in text, text
    assert "HF_HUB_OFFLINE" in text and ".." not in text


@pytest.mark.parametrize("name", list(KNOWN_DETECTORS))
def test_offline_download(monkeypatch, tmp_path, name):
    timeouts = []

    def offline(url, timeout=None, **kwargs):
        timeouts.append(timeout)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("RAPIDPOSE_CACHE", str(tmp_path))
    with pytest.raises(DownloadError) as info:
        load_detector(name)
    text = str(info.value)
    assert text.startswith(f"could not download the {name} detector") and "Network is unreachable" in text
    _assert_says_what_to_pass(text)
    assert timeouts == [10]  # one try, short timeout
    assert list(tmp_path.iterdir()) == []  # nothing half-written left in the cache


def test_unreachable_server_fails_at_once(monkeypatch, tmp_path):
    """A real connection to a closed local port (nothing reaches the network)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(KNOWN_DETECTORS, "yolox-nano", (f"http://127.0.0.1:{port}/yolox_nano.onnx", "yolox_nano.onnx"))
    monkeypatch.setenv("RAPIDPOSE_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        load_detector("yolox-nano")
    assert time.perf_counter() - start < 5
    assert "Connection refused" in str(info.value)
    _assert_says_what_to_pass(str(info.value))


def test_offline_mode_does_not_touch_the_network(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1: no download may be tried")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("RAPIDPOSE_CACHE", str(tmp_path))
    with pytest.raises(DownloadError) as info:  # conftest sets HF_HUB_OFFLINE=1
        load_detector("rtmdet-nano")
    assert "HF_HUB_OFFLINE=1 is set" in str(info.value)
    _assert_says_what_to_pass(str(info.value))


def test_command_line_says_it_once(monkeypatch, tmp_path, tiny_checkpoint, caplog):
    from rapidpose.cli import main

    monkeypatch.setenv("RAPIDPOSE_CACHE", str(tmp_path))
    assert main(["predict", str(COCO), "--model", str(tiny_checkpoint), "--backend", "torch",
                 "--detector", "rtmdet-nano"]) == 2
    said = [r.getMessage() for r in caplog.records if "could not download" in r.getMessage()]
    assert len(said) == 1 and said[0].count("--detector /path/to/rtmdet.onnx") == 1


def test_unknown_name_missing_path_corrupt_file(tmp_path):
    with pytest.raises(InputError, match="rtmdet-nano, yolox-nano"):
        load_detector("yolo-huge")
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(InputError, match="nowhere.onnx"):
        load_detector(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="corrupt.onnx"):
        load_detector(corrupt)


def test_rtmdet_zip_is_extracted(monkeypatch, tmp_path):
    # the hub serves an mmdeploy SDK zip; serve a local one holding the shared model instead
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("rtmdet_nano/pipeline.json", "{}")
        zf.write(RTMDET, "rtmdet_nano/end2end.onnx")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(buffer.getvalue()))
    monkeypatch.delenv("HF_HUB_OFFLINE")  # a download, served from memory
    monkeypatch.setenv("RAPIDPOSE_CACHE", str(tmp_path))
    detector = load_detector("rtmdet-nano")
    assert detector.path == tmp_path / KNOWN_DETECTORS["rtmdet-nano"][1]
    assert [p.name for p in tmp_path.iterdir()] == [detector.path.name]  # the zip is not kept


def test_cuda_request_falls_back_to_cpu():
    import onnxruntime as ort

    detector = load_detector(YOLOX, device="cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert detector.session.get_providers() == ["CPUExecutionProvider"]
    else:
        assert detector.session.get_providers()[0] == "CUDAExecutionProvider"
