"""`rapidpose quantize`: INT8 models that the backends run, and a report that measures them."""
import argparse
import copy
import json
import logging

import numpy as np
import onnx  # noqa: F401  # declared test dependencies: a broken install fails loudly, never skips
import pytest
from conftest import ASSETS, RTMDET

from rapidpose.cli.quantize import add_quantize_parser
from rapidpose.deploy.quantize import X86, choose_format, quantize_model, time_models
from rapidpose.evaluate.agreement import agreement, keypoint_oks
from rapidpose.errors import InputError
from rapidpose.io import expand_paths, read_image
from rapidpose.runtime.metadata import read_metadata
from rapidpose.topdown.estimator import PoseEstimator

COCO_MMPOSE = ASSETS / "images" / "coco-mmpose"
PHOTOS = expand_paths([COCO_MMPOSE])  # 4 photos: the order quantize takes them in


@pytest.fixture(scope="module")
def fp32_onnx(tiny_checkpoint, tmp_path_factory):
    from rapidpose.deploy.export import export_onnx
    from rapidpose.model.weights import load_model

    return export_onnx(load_model(tiny_checkpoint, "cpu"), tmp_path_factory.mktemp("fp32") / "tiny.onnx")


@pytest.fixture(scope="module")
def people_per_photo():
    """How many people the calibration detector finds in each of PHOTOS."""
    from rapidpose.detect import load_detector

    detector = load_detector(str(RTMDET))
    counts = [len(detector(read_image(p))[0]) for p in PHOTOS]
    assert len(PHOTOS) == 4 and all(counts), counts  # what the tests below rely on
    return counts


def assert_agreement_labelled(report, md, on, people, images):
    """The report (.json and .md) says truthfully where FP32 and INT8 were compared."""
    assert (report["agreement_on"], report["agreement_people"], report["agreement_images"]) == (on, people, images)
    if on == "held-out":
        assert f"agreement measured on {people} other people, in {images} images held out from calibration" in md
        assert "calibration people themselves" not in md
    else:
        assert f"agreement measured on {people} of the calibration people themselves, in {images} of the " \
               f"calibration images" in md
        assert "other people" not in md and "held out from" not in md


def assert_timed(report, md):
    assert set(report["ms_per_crop"]) >= {"FP32, ONNX Runtime"}
    assert all(v > 0 for v in report["ms_per_crop"].values()) and report["speedup_vs_fp32_onnxruntime"] > 0
    assert "Speed: one round after a warm-up (timing turned down to 0 s)" in md  # the tests time briefly
    assert all(f"| {name} | {ms} |" in md for name, ms in report["ms_per_crop"].items())


@pytest.mark.parametrize("fmt, scheme, symmetric", [("onnx", "per-tensor", False), ("openvino", "per-channel", True)])
def test_int8_model_is_written_runs_in_its_backend_and_is_reported(fp32_onnx, people_per_photo, tmp_path, fmt,
                                                                   scheme, symmetric, caplog, capfd):
    if fmt == "openvino":
        import nncf  # noqa: F401  # a declared test dependency: imported plainly, so a broken one fails here

    out = tmp_path / f"tiny-int8.{'onnx' if fmt == 'onnx' else 'xml'}"
    caplog.set_level(logging.INFO)  # a program that shows every library's notes
    report = quantize_model(fp32_onnx, COCO_MMPOSE, out, images=2, fmt=fmt, scheme=scheme,
                            symmetric=symmetric, detector=str(RTMDET), seconds=0)
    # the toolchains' chatter stays out: onnxruntime's notes on the root logger, NNCF's bars on stdout
    assert "Ignore MatMul" not in caplog.text
    printed = capfd.readouterr()
    assert "Statistics collection" not in printed.out + printed.err and "nncf" not in printed.out, printed
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
    # calibrated on the people of the first 2 photos, compared on those of the other 2
    assert report["calibration"]["people"] == sum(people_per_photo[:2]) and report["calibration"]["images"] == 2
    assert_agreement_labelled(report, md, "held-out", sum(people_per_photo[2:]), 2)
    assert report["timing_seconds"] == 0
    assert_timed(report, md)

    # the INT8 model runs in the pipeline like any exported model, close to the FP32 one
    image = read_image(COCO_MMPOSE / "000000000785.jpg")
    box = np.array([[280, 40, 510, 420, 1.0]], np.float32)
    ref = PoseEstimator(str(fp32_onnx), device="cpu").predict([image], [box], return_heatmaps=True)[0]
    low = PoseEstimator(str(out), device="cpu").predict([image], [box], return_heatmaps=True)[0]
    assert agreement(ref.heatmaps, low.heatmaps)["cosine"] > 0.9
    if fmt == "onnx":  # OpenVINO reads the INT8 ONNX file too
        import openvino  # noqa: F401  # a declared test dependency: imported plainly, so a broken one fails here

        other = PoseEstimator(str(out), device="cpu", backend="openvino").predict([image], [box], return_heatmaps=True)
        assert agreement(low.heatmaps, other[0].heatmaps)["cosine"] > 0.99


def test_format_auto_is_openvino_on_x86_where_openvino_and_nncf_import_else_onnx_and_says_why(monkeypatch):
    import platform
    import sys

    fmt, why = choose_format()  # openvino and nncf are test dependencies: a broken one fails the first assert
    if platform.machine().lower() in X86:
        assert fmt == "openvino" and why.startswith("openvino and nncf are installed and this"), why
        assert why.endswith("OpenVINO's INT8 kernels use"), why
    else:
        assert fmt == "onnx" and "not x86" in why, why
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails from here on
    assert choose_format() == ("onnx", "openvino cannot be imported (pip install 'rapidpose[quantize]' for "
                                       "OpenVINO's INT8, the fastest on x86 CPUs)")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.delitem(sys.modules, "openvino")
    assert choose_format() == ("onnx", "this CPU is aarch64, not x86: OpenVINO's fast INT8 kernels (VNNI/AMX) "
                                       "are x86's, ONNX Runtime's run on every CPU")


def people_and_keypoints(json_path):
    """Per image of a `rapidpose predict --json` file: its people's keypoints, (N, 17, 3) as x, y, score."""
    return [np.array([p["keypoints"] for p in image["people"]]) for image in json.loads(json_path.read_text())["images"]]


def test_quantize_by_default_writes_openvino_int8_that_predict_runs_with_openvino_at_its_best(
        fp32_onnx, tmp_path, monkeypatch, capsys):
    from rapidpose.cli import main
    from rapidpose.runtime.onnx_runtime import physical_cores
    from rapidpose.runtime.openvino_runtime import OpenVinoRuntime, cpu_supports_bf16

    if choose_format()[0] != "openvino":  # not an x86 CPU (the test above checks the why)
        pytest.skip(f"--format auto is ONNX here: {choose_format()[1]}")
    monkeypatch.chdir(tmp_path)  # the default output is ./<model>-int8.xml
    assert main(["quantize", "--model", str(fp32_onnx), "--calibration", str(COCO_MMPOSE), "--images", "2",
                 "--detector", str(RTMDET), "--timing-seconds", "0"]) == 0
    xml = tmp_path / "tiny-int8.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and not (tmp_path / "tiny-int8.onnx").exists()
    report = json.loads((tmp_path / "tiny-int8.report.json").read_text())
    # the defaults of auto: OpenVINO's fastest recipe, and why OpenVINO, in the report and its .md
    assert (report["format"], report["scheme"], report["symmetric"]) == ("openvino", "per-channel", True)
    assert report["format_reason"] == f"chosen by --format auto: {choose_format()[1]}"
    md = capsys.readouterr().out
    assert f"Format: openvino, run by OpenVINO; {report['format_reason']}." in md
    assert "(openvino, per-channel, symmetric)" in md and "INT8, OpenVINO" in report["ms_per_crop"]

    # the default backend runs it with OpenVINO: one stream on every physical core, the LATENCY hint (a
    # request of a batch at a time), bf16 for the layers left in float where the CPU has it
    runtime = PoseEstimator(str(xml), device="cpu").runtime
    assert isinstance(runtime, OpenVinoRuntime)
    assert runtime.precision == ("bf16" if cpu_supports_bf16() else "fp32")
    assert str(runtime.compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert int(str(runtime.compiled.get_property("NUM_STREAMS"))) == 1
    assert runtime.compiled.get_property("INFERENCE_NUM_THREADS") == physical_cores()

    # `rapidpose predict --model x-int8.xml` with the default backend: the same people as FP32, keypoints
    # on them (random weights: not the same keypoints, whose flat heatmaps any rounding moves)
    image = COCO_MMPOSE / "000000000785.jpg"
    for model, name in ((fp32_onnx, "fp32.json"), (xml, "int8.json")):
        assert main(["predict", str(image), "--model", str(model), "--detector", str(RTMDET),
                     "--json", str(tmp_path / name)]) == 0
    (fp32,), (int8,) = people_and_keypoints(tmp_path / "fp32.json"), people_and_keypoints(tmp_path / "int8.json")
    height, width = read_image(image).shape[:2]
    assert int8.shape == fp32.shape and len(int8) > 0
    assert np.isfinite(int8).all() and (int8[..., 2] > 0).all()
    assert ((int8[..., 0] >= 0) & (int8[..., 0] < width) & (int8[..., 1] >= 0) & (int8[..., 1] < height)).all()


def test_format_auto_without_openvino_writes_the_onnx_int8_model_and_says_why(fp32_onnx, tmp_path, monkeypatch):
    import sys

    from rapidpose.runtime.onnx_runtime import OnnxRuntime

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails
    monkeypatch.chdir(tmp_path)
    report = quantize_model(fp32_onnx, COCO_MMPOSE, images=2, detector=str(RTMDET), seconds=0)
    out = tmp_path / "tiny-int8.onnx"
    assert report["int8_model"] == str(out) and out.is_file() and not (tmp_path / "tiny-int8.xml").exists()
    # ONNX Runtime's fastest recipe; why ONNX, in the report and its .md
    assert (report["format"], report["scheme"], report["symmetric"]) == ("onnx", "per-channel", False)
    assert report["format_reason"] == f"chosen by --format auto: {choose_format()[1]}"
    assert "openvino cannot be imported" in report["format_reason"] or "not x86" in report["format_reason"]
    md = (tmp_path / "tiny-int8.report.md").read_text()
    assert f"Format: onnx, run by ONNX Runtime; {report['format_reason']}." in md
    assert set(report["ms_per_crop"]) == {"FP32, ONNX Runtime", "INT8, ONNX Runtime"}  # no OpenVINO to time
    assert isinstance(PoseEstimator(str(out), device="cpu").runtime, OnnxRuntime)


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


def test_timing_takes_as_long_as_asked_and_one_round_with_zero_seconds():
    calls = {"a": 0, "b": 0}

    def runtime(name):
        def run(x):
            assert x.shape == (8, 3, 4, 4)  # always a batch of 8, the crops repeated to fill it
            calls[name] += 1
        return run

    crops = np.zeros((3, 3, 4, 4), np.float32)
    speed = time_models({"a": runtime("a"), "b": runtime("b")}, crops, seconds=0)
    assert calls == {"a": 2, "b": 2}  # one warm-up run and one timed round each
    assert set(speed) == {"a", "b"} and all(v >= 0 for v in speed.values())
    calls.update(a=0, b=0)
    time_models({"a": runtime("a"), "b": runtime("b")}, crops, seconds=0.01)
    assert calls["a"] >= 1 + 3 and calls["b"] >= 1 + 3  # at least 3 rounds when timing is asked for


def test_bad_quantize_requests_get_clear_errors(fp32_onnx, tmp_path):
    out = tmp_path / "x.onnx"  # never the working directory, even if a request is wrongly let through
    with pytest.raises(InputError, match="format"):
        quantize_model(fp32_onnx, COCO_MMPOSE, out, fmt="tflite", detector=str(RTMDET))
    with pytest.raises(InputError, match="scheme"):
        quantize_model(fp32_onnx, COCO_MMPOSE, out, scheme="per-group", detector=str(RTMDET))
    with pytest.raises(InputError, match="--images"):
        quantize_model(fp32_onnx, COCO_MMPOSE, out, images=0, detector=str(RTMDET))
    with pytest.raises(InputError, match="--timing-seconds must be 0 or more"):
        quantize_model(fp32_onnx, COCO_MMPOSE, out, seconds=-1, detector=str(RTMDET))
    with pytest.raises(InputError, match="annotation file .* does not exist"):
        quantize_model(fp32_onnx, COCO_MMPOSE, out, annotations=tmp_path / "absent.json", detector=str(RTMDET))
    with pytest.raises(InputError, match="--eval-images needs --annotations"):
        quantize_model(fp32_onnx, COCO_MMPOSE, out, eval_images=COCO_MMPOSE, detector=str(RTMDET))
    with pytest.raises(InputError, match="eval images folder .* does not exist"):
        quantize_model(fp32_onnx, COCO_MMPOSE, out, annotations=COCO_MMPOSE / "test_coco.json",
                       eval_images=tmp_path / "absent", detector=str(RTMDET))
    with pytest.raises(InputError, match="must end in .xml"):
        quantize_model(fp32_onnx, COCO_MMPOSE, tmp_path / "x.onnx", fmt="openvino", detector=str(RTMDET))
    with pytest.raises(InputError, match=r"output '.*x\.tflite' must end in \.xml \(OpenVINO\) or \.onnx"):
        quantize_model(fp32_onnx, COCO_MMPOSE, tmp_path / "x.tflite", detector=str(RTMDET))  # format auto
    empty = tmp_path / "no-people"
    empty.mkdir()
    import cv2

    cv2.imwrite(str(empty / "grey.png"), np.full((240, 320, 3), 128, np.uint8))
    with pytest.raises(InputError, match="no person"):
        quantize_model(fp32_onnx, empty, out, detector=str(RTMDET))
    with pytest.raises(InputError, match="does not exist"):
        quantize_model(fp32_onnx, tmp_path / "missing", out, detector=str(RTMDET))
    assert not out.exists()  # each refused before anything was written


def fp32_keypoints_as_annotations(fp32_onnx, path):
    """test_coco.json with each evaluated person's keypoints replaced by the FP32 model's (all visible),
    boxes and areas kept: against these the FP32 model scores AP 1 and the INT8 model less, so the AP
    of each says which model was evaluated (random weights score 0 against the real keypoints)."""
    from rapidpose.evaluate.coco import gt_boxes, gt_people, load_annotations

    source = COCO_MMPOSE / "test_coco.json"
    coco, doc = load_annotations(source), json.loads(source.read_text())
    ids = [im["id"] for im in doc["images"]]
    boxes = gt_boxes(coco, ids)  # the boxes evaluate(boxes="gt") crops
    found = PoseEstimator(str(fp32_onnx), device="cpu").predict(
        [read_image(COCO_MMPOSE / im["file_name"]) for im in doc["images"]], [boxes[i] for i in ids])
    annotations = {a["id"]: a for a in copy.deepcopy(doc)["annotations"]}
    for image_id, poses in zip(ids, found):
        people = gt_people(coco, image_id)
        assert len(people) == len(poses) > 0
        for (obj, _), keypoints in zip(people, poses.keypoints.tolist()):
            annotations[obj["id"]].update(keypoints=[v for x, y in keypoints for v in (x, y, 2)], num_keypoints=17)
    path.write_text(json.dumps({**doc, "annotations": list(annotations.values())}))
    return path


def test_report_gives_the_ap_of_both_models_when_annotations_are_given(fp32_onnx, people_per_photo, tmp_path):
    import cv2

    from rapidpose.evaluate.coco import METRICS, evaluate

    annotations = fp32_keypoints_as_annotations(fp32_onnx, tmp_path / "fp32-keypoints.json")
    # two photos with people, then one with nobody: no person is left over to hold out
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "tiny-int8.onnx"
    report = quantize_model(fp32_onnx, PHOTOS[:2] + [grey], out, images=2, detector=str(RTMDET),
                            annotations=annotations, eval_images=COCO_MMPOSE, seconds=0)
    md = (tmp_path / "tiny-int8.report.md").read_text()

    # the AP of each model is rapidpose's evaluation of that model on the same images and annotations
    for name, model in (("fp32", fp32_onnx), ("int8", out)):
        direct = evaluate(PoseEstimator(str(model), device="cpu"), annotations, COCO_MMPOSE, boxes="gt").metrics
        assert list(report["ap"][name]) == list(METRICS)
        for metric in METRICS:
            assert report["ap"][name][metric] == pytest.approx(direct[metric], abs=1e-4), (name, metric)
        m = report["ap"][name]
        assert f"| {name.upper()} | {m['AP']} | {m['AP50']} | {m['AP75']} | {m['AR']} |" in md
    assert report["ap"]["fp32"]["AP"] == 1.0 and report["ap"]["fp32"]["AR"] == 1.0  # its own keypoints
    assert 0.1 < report["ap"]["int8"]["AP"] < 1.0  # near, not equal: the two evaluations are told apart

    # the photo left over had nobody: the agreement is on the calibration people, and says so
    assert_agreement_labelled(report, md, "calibration", sum(people_per_photo[:2]), 2)


def test_quantize_command_writes_the_model_and_prints_the_report(fp32_onnx, people_per_photo, tmp_path, capsys,
                                                                 caplog):
    from rapidpose.cli import main

    out = tmp_path / "cli-int8.onnx"
    # the default --images 64 takes all 4 photos: nobody is left to hold out
    code = main(["quantize", "--model", str(fp32_onnx), "--calibration", str(COCO_MMPOSE),
                 "--detector", str(RTMDET), "--output", str(out), "--timing-seconds", "0"])
    assert code == 0 and out.is_file()
    report = json.loads((tmp_path / "cli-int8.report.json").read_text())
    md = capsys.readouterr().out
    assert "INT8 report" in md and md.strip() == (tmp_path / "cli-int8.report.md").read_text().strip()
    assert report["calibration"] == {"images": 4, "people": sum(people_per_photo), "source": str(COCO_MMPOSE)}
    assert_agreement_labelled(report, md, "calibration", sum(people_per_photo), 4)
    assert report["timing_seconds"] == 0
    assert_timed(report, md)
    # it says what it is doing while it works, stage by stage
    said = [r.getMessage() for r in caplog.records if r.name == "rapidpose"]
    stages = ["quantize: INT8 for ONNX Runtime, chosen by --format auto from the output's suffix (.onnx)",
              "quantize: looking for people in 4 calibration photos", "quantize: calibrating on",
              "quantize: comparing FP32 and INT8", "quantize: timing FP32, ONNX Runtime; INT8, ONNX Runtime",
              "wrote "]
    where = [next((i for i, m in enumerate(said) if m.startswith(s)), None) for s in stages]
    assert None not in where and where == sorted(where), said
    bad = ["--model", str(fp32_onnx), "--detector", str(RTMDET), "--output", str(tmp_path / "bad.onnx")]
    assert main(["quantize", *bad, "--calibration", str(tmp_path / "nowhere")]) == 2
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser
        main(["quantize", *bad, "--calibration", str(COCO_MMPOSE), "--timing-seconds", "-1"])
    assert exit_.value.code == 2 and "--timing-seconds: must be a number, 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()


def test_quantize_command_in_a_process_of_its_own_prints_no_toolchain_chatter(fp32_onnx, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "own-int8.onnx"
    result = subprocess.run([sys.executable, "-m", "rapidpose", "quantize", "--model", str(fp32_onnx),
                             "--calibration", str(COCO_MMPOSE), "--detector", str(RTMDET), "--output", str(out),
                             "--timing-seconds", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Ignore MatMul" not in result.stderr + result.stdout  # onnxruntime's notes, one per attention product
    assert result.stdout.strip() == (tmp_path / "own-int8.report.md").read_text().strip()  # the report, only
    lines = result.stderr.splitlines()
    assert lines[0] == "quantize: INT8 for ONNX Runtime, chosen by --format auto from the output's suffix (.onnx)"
    assert lines[1].startswith("quantize: looking for people") and lines[-1].startswith(f"wrote {out}"), lines


def test_every_quantize_option_says_its_default():
    parser = add_quantize_parser(argparse.ArgumentParser().add_subparsers())
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.option_strings
