"""`rapidpose quantize`: INT8 models that the backends run, and a report that measures them."""
import json

import numpy as np
import pytest

from conftest import ASSETS, RTMDET

pytest.importorskip("onnx")
from rapidpose.errors import InputError  # noqa: E402
from rapidpose.export import read_metadata  # noqa: E402
from rapidpose.pipeline import PoseEstimator  # noqa: E402
from rapidpose.quantize import agreement, keypoint_oks, quantize_model  # noqa: E402

COCO_MMPOSE = ASSETS / "images" / "coco-mmpose"


@pytest.fixture(scope="module")
def fp32_onnx(tiny_checkpoint, tmp_path_factory):
    from rapidpose.export import export_onnx
    from rapidpose.model.weights import load_model

    return export_onnx(load_model(tiny_checkpoint, "cpu"), tmp_path_factory.mktemp("fp32") / "tiny.onnx")


@pytest.mark.parametrize("fmt, scheme, symmetric", [("onnx", "per-tensor", False), ("openvino", "per-channel", True)])
def test_int8_model_is_written_runs_in_its_backend_and_is_reported(fp32_onnx, tmp_path, fmt, scheme, symmetric):
    if fmt == "openvino":
        pytest.importorskip("nncf")
    out = tmp_path / f"tiny-int8.{'onnx' if fmt == 'onnx' else 'xml'}"
    report = quantize_model(fp32_onnx, COCO_MMPOSE, out, images=2, fmt=fmt, scheme=scheme,
                            symmetric=symmetric, detector=str(RTMDET), seconds=0.2)
    assert out.is_file() and read_metadata(out)["num_keypoints"] == 17  # metadata carried over
    saved = json.loads((tmp_path / "tiny-int8.report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    md = (tmp_path / "tiny-int8.report.md").read_text()
    assert "cosine similarity" in md and "mean OKS" in md and "ONNX Runtime" in md
    # int8 transformer weights; the deconvolution head (most of this 2-block model) stays fp32
    assert report["size_mb"]["int8"] < 0.6 * report["size_mb"]["fp32"]
    groups = [g["layer"] for g in report["layers"]]
    assert groups == ["backbone blocks 1-1 of 2", "backbone blocks 1-2 of 2", "heatmaps (output)"]
    for g in report["layers"]:
        assert 0.9 < g["cosine"] <= 1.0 and 10 < g["sqnr_db"] < 80, g
    assert 0 < report["keypoints"]["mean_oks"] <= 1
    assert report["calibration"]["people"] > 0 and report["agreement_people"] > 0
    assert set(report["ms_per_crop"]) >= {"FP32, ONNX Runtime"} and all(v > 0 for v in report["ms_per_crop"].values())

    # the INT8 model runs in the pipeline like any exported model, close to the FP32 one
    image = __import__("rapidpose.io", fromlist=["read_image"]).read_image(COCO_MMPOSE / "000000000785.jpg")
    box = np.array([[280, 40, 510, 420, 1.0]], np.float32)
    ref = PoseEstimator(str(fp32_onnx), device="cpu").predict([image], [box], return_heatmaps=True)[0]
    low = PoseEstimator(str(out), device="cpu").predict([image], [box], return_heatmaps=True)[0]
    assert agreement(ref.heatmaps, low.heatmaps)["cosine"] > 0.9
    if fmt == "onnx":  # OpenVINO reads the INT8 ONNX file too
        pytest.importorskip("openvino")
        other = PoseEstimator(str(out), device="cpu", backend="openvino").predict([image], [box], return_heatmaps=True)
        assert agreement(low.heatmaps, other[0].heatmaps)["cosine"] > 0.99


def test_agreement_and_oks_measure_what_they_say():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 17, 64, 48)).astype(np.float32)
    assert agreement(a, a) == {"cosine": 1.0, "sqnr_db": float("inf")}
    noisy = a + 0.1 * rng.normal(size=a.shape).astype(np.float32)  # noise power 1/100 of the signal's
    assert agreement(a, noisy)["sqnr_db"] == pytest.approx(20.0, abs=0.2)
    # one peak per keypoint, moved by 2 heatmap pixels in the second set
    peaks = np.zeros((1, 17, 64, 48), np.float32)
    moved = np.zeros_like(peaks)
    peaks[0, :, 30, 20] = 1
    moved[0, :, 30, 22] = 1
    sigmas = np.full(17, 0.1)
    area = 64 * 48 / 1.25 ** 2
    expected = np.exp(-(2 * 48 / 47) ** 2 / (2 * area * 0.2 ** 2))  # decode maps heatmap x by w/(w-1)
    assert keypoint_oks(peaks, peaks, sigmas)[0] == pytest.approx(1.0)
    assert keypoint_oks(peaks, moved, sigmas)[0] == pytest.approx(expected, rel=1e-3)


def test_bad_quantize_requests_get_clear_errors(fp32_onnx, tmp_path):
    with pytest.raises(InputError, match="format"):
        quantize_model(fp32_onnx, COCO_MMPOSE, fmt="tflite", detector=str(RTMDET))
    with pytest.raises(InputError, match="scheme"):
        quantize_model(fp32_onnx, COCO_MMPOSE, scheme="per-group", detector=str(RTMDET))
    with pytest.raises(InputError, match="--images"):
        quantize_model(fp32_onnx, COCO_MMPOSE, images=0, detector=str(RTMDET))
    with pytest.raises(InputError, match="must end in .xml"):
        quantize_model(fp32_onnx, COCO_MMPOSE, tmp_path / "x.onnx", fmt="openvino", detector=str(RTMDET))
    empty = tmp_path / "no-people"
    empty.mkdir()
    import cv2

    cv2.imwrite(str(empty / "grey.png"), np.full((240, 320, 3), 128, np.uint8))
    with pytest.raises(InputError, match="no person"):
        quantize_model(fp32_onnx, empty, tmp_path / "x.onnx", detector=str(RTMDET))
    with pytest.raises(InputError, match="does not exist"):
        quantize_model(fp32_onnx, tmp_path / "missing", tmp_path / "x.onnx", detector=str(RTMDET))


def test_report_gives_the_ap_of_both_models_when_annotations_are_given(fp32_onnx, tmp_path):
    report = quantize_model(fp32_onnx, COCO_MMPOSE, tmp_path / "tiny-int8.onnx", images=2, detector=str(RTMDET),
                            annotations=COCO_MMPOSE / "test_coco.json", seconds=0.1)
    assert set(report["ap"]) == {"fp32", "int8"}
    for metrics in report["ap"].values():
        assert 0.0 <= metrics["AP"] <= 1.0 and 0.0 <= metrics["AR"] <= 1.0
    assert "| INT8 |" in (tmp_path / "tiny-int8.report.md").read_text()


def test_quantize_command_writes_the_model_and_prints_the_report(fp32_onnx, tmp_path, capsys):
    from rapidpose.cli import main

    out = tmp_path / "cli-int8.onnx"
    code = main(["quantize", "--model", str(fp32_onnx), "--calibration", str(COCO_MMPOSE), "--images", "2",
                 "--detector", str(RTMDET), "--output", str(out)])
    assert code == 0 and out.is_file() and (tmp_path / "cli-int8.report.json").is_file()
    assert "INT8 report" in capsys.readouterr().out
    assert main(["quantize", "--model", str(fp32_onnx), "--calibration", str(tmp_path / "nowhere")]) == 2
