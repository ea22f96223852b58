"""`rapidpose bench` reports every stage, throughput and memory, as a table, JSON and a plot."""
import argparse
import json

import cv2
import pytest
import torch
from conftest import ASSETS, GPU

from rapidpose.cli import main
from rapidpose.cli.bench import add_bench_parser
from rapidpose.evaluate.speed import bench_network


def test_bench_reports_stages_throughput_and_plot(tmp_path, capsys, caplog):
    out, plot = tmp_path / "bench.json", tmp_path / "throughput.png"
    code = main(["bench", str(ASSETS / "images" / "coco-mmpose"), "--model", "random-s", "--device", "cpu",
                 "--people", "2", "--images", "2", "--repeats", "1", "--batch", "1", "2", "--seconds", "0",
                 "--draw", "--json", str(out), "--plot", str(plot)])
    assert code == 0
    info = json.loads(out.read_text())
    assert info["images"] == 4 and info["people"] == 8
    stages = info["stages_ms_per_image"]
    assert set(stages) == {"read", "detect", "crop", "network", "decode", "draw"}
    assert all(stages[s] > 0 for s in ("read", "crop", "network", "decode", "draw"))
    assert stages["network"] == max(stages.values())  # the network dominates on a CPU
    assert [r["batch"] for r in info["throughput_by_batch"]] == [1, 2]
    assert all(r["crops_per_s"] > 0 for r in info["throughput_by_batch"]) and info["peak_memory_mb"] > 0
    assert info["people_per_s"] > 0 and info["network_crops_per_s"] > 0
    photo = info["photo_path"]  # as predict runs it: --detector none, the whole image is the person
    assert photo["images"] == 4 and photo["people"] == 4 and photo["images_per_s"] > 0
    assert cv2.imread(str(plot)).shape == (420, 720, 3)
    table = capsys.readouterr().out
    assert "| network |" in table and "people/s" in table and "photo path, stages overlapped" in table
    assert info["sweep_seconds"] == 0 and "(one run each: a rough figure)" in table
    # it says what it is doing while it works, stage by stage
    said = [r.getMessage() for r in caplog.records if r.name == "rapidpose"]
    stages = ["bench: loading random-s on cpu", "bench: warm-up, one batch of 2 images",
              "bench: timing each stage, 1 pass over 4 images (2 synthetic boxes each)",
              "bench: timing the network alone at batch sizes 1 2, one run each"]
    assert [s for s in said if s in stages] == stages, said


@pytest.mark.parametrize("flags, message", [
    (["--repeats", "0"], "--repeats: must be a whole number, 1 or more"),
    (["--images", "0"], "--images: must be a whole number, 1 or more"),
    (["--people", "0"], "--people: must be a whole number, 1 or more"),
    (["--synthetic", "0"], "--synthetic: must be a whole number, 1 or more"),
    (["--batch", "8", "0"], "--batch: must be a whole number, 1 or more"),
    (["--seconds", "-1"], "--seconds: must be a number, 0 or more"),
    (["--seconds", "nan"], "--seconds: must be a number, 0 or more"),
])
def test_bad_bench_requests_get_clear_errors(flags, message, capsys):
    # refused by the argument parser, before any model is loaded
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.gpu
@GPU
def test_bench_on_a_gpu_names_it_and_reports_its_memory(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "random-s", "--device", "cuda", "--synthetic", "4", "--images", "4",
                 "--repeats", "1", "--batch", "1", "8", "--seconds", "0", "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["device_name"] == torch.cuda.get_device_name(0) and info["peak_memory_mb"] > 0
    assert info["images"] == 4 and all(r["crops_per_s"] > 0 for r in info["throughput_by_batch"])


def test_every_bench_option_says_its_default():
    sub = argparse.ArgumentParser().add_subparsers()
    add_bench_parser(sub)
    for action in sub.choices["bench"]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.option_strings


class CountingRuntime:
    """A stand-in backend that counts its calls, per batch size."""

    input_size = (4, 4)

    def __init__(self):
        self.calls = {}

    def __call__(self, x):
        self.calls[len(x)] = self.calls.get(len(x), 0) + 1
        return x


def test_network_sweep_times_as_long_as_asked_and_once_with_zero_seconds():
    quick = CountingRuntime()
    rates = bench_network(quick, [1, 2], seconds=0)
    assert quick.calls == {1: 2, 2: 2}  # one warm-up run and one timed run per batch size
    assert [b for b, _ in rates] == [1, 2] and all(v > 0 for _, v in rates)
    full = CountingRuntime()
    bench_network(full, [1], seconds=0.01)
    assert full.calls[1] >= 3 + 2  # 3 warm-up runs, at least 2 timed ones


DETECTOR = str(ASSETS / "detectors" / "rtmdet-nano-person.onnx")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_holds_a_precision_to_the_fp32_model_on_the_people_of_the_photos(precision, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(ASSETS / "images" / "coco-mmpose"), "--model", "random-s", "--device", "cpu",
                 "--backend", "torch", "--precision", precision, "--detector", DETECTOR, "--images", "2",
                 "--repeats", "1", "--batch", "4", "--seconds", "0", "--agreement", "--json", str(out)]) == 0
    agreement = json.loads(out.read_text())["agreement"]
    assert agreement["people"] == 14  # coco-mmpose's people, as the detector finds them
    if precision == "fp32":  # the same arithmetic as the reference: nothing apart
        assert agreement["cosine"] == 1.0 and agreement["sqnr_db"] > 100 and agreement["oks_mean"] == 1.0
    else:  # bf16 autocast: close, not equal (random weights' flat heatmaps make OKS say little here)
        assert agreement["cosine"] > 0.999 and 20 < agreement["sqnr_db"] < 80
    assert "against the fp32 torch model, 14 people of INPUT: heatmap cosine" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    ([], "--agreement compares on real people: give photos with people as INPUT"),
    ([str(ASSETS / "images" / "coco-mmpose"), "--model", "pose.onnx"],
     "--agreement holds the model to its fp32 torch form, which an exported file ('pose.onnx') does not have"),
])
def test_bench_agreement_without_what_it_needs_is_refused_first(flags, message, capsys, caplog):
    code = main(["bench", "--device", "cpu", "--agreement", *flags])
    said = capsys.readouterr().err + caplog.text
    assert code == 2 and message in said and "loading" not in caplog.text
