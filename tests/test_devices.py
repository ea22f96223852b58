"""photos.devices: a worker process per device, results in input order, a dead worker's photos not lost."""
import logging
import os
import signal

import numpy as np
import pytest
from conftest import ASSETS, RTMDET

from rapidpose.errors import InputError
from rapidpose.photos import devices
from rapidpose.photos.devices import DeviceWorkers, WorkerSettings, parse_devices
from rapidpose.photos.pipeline import predict_photos
from rapidpose.photos.records import photo_record
from rapidpose.topdown.estimator import PoseEstimator

PHOTOS = sorted((ASSETS / "images" / "coco-mmpose").glob("*.jpg")) + sorted(
    (ASSETS / "images" / "coco-val2017-100").glob("*.jpg"))[:20]


def settings(checkpoint):
    return WorkerSettings(model=str(checkpoint), detector=str(RTMDET), backend="torch", precision="fp32",
                          images_per_batch=4, coco=True)


def assert_same_entry(got, want):
    assert got["image"] == want["image"] and got.get("error") == want.get("error")
    assert len(got["people"]) == len(want["people"])
    for g, w in zip(got["people"], want["people"]):
        np.testing.assert_allclose(g["box"], w["box"], atol=0.011)
        np.testing.assert_allclose(np.array(g["keypoints"])[:, :2], np.array(w["keypoints"])[:, :2], atol=0.05)


def test_devices_are_parsed_as_every_visible_gpu_or_the_ones_named(monkeypatch):
    torch = pytest.importorskip("torch")
    assert parse_devices("cpu") == ["cpu"] and parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices("cuda:0,2") == ["cuda:0", "cuda:2"] and parse_devices("cuda:1, cuda:3") == ["cuda:1", "cuda:3"]
    monkeypatch.setattr(devices, "visible_gpus", lambda: 4)
    assert parse_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    monkeypatch.setattr(devices, "visible_gpus", lambda: 1)
    assert parse_devices("cuda") == ["cuda"]
    monkeypatch.undo()
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert devices.visible_gpus() == expected  # the driver's count is torch's
    for bad in ("gpu", "cuda:x", " , "):
        with pytest.raises(InputError, match="--device"):
            parse_devices(bad)


def test_two_workers_give_one_process_results_in_input_order(tiny_checkpoint, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    photos = PHOTOS[:2] + [junk] + PHOTOS[2:]
    todo = list(enumerate(photos))
    est = PoseEstimator(tiny_checkpoint, detector=RTMDET, backend="torch", precision="fp32")
    want = [photo_record(r.path, error=r.error) if r.error else photo_record(r.path, r.size, r.poses)
            for r in predict_photos(est, photos, images_per_batch=4)]
    with DeviceWorkers(["cpu", "cpu"], settings(tiny_checkpoint), chunk=4) as workers:
        assert workers.header["keypoint_names"][0] == "nose" and len(workers.pids()) == 2
        got = list(workers.run(todo))
    assert [(i, p) for i, p, *_ in got] == [(i, str(p)) for i, p in todo]
    for (_, _, entry, coco, _, error), w in zip(got, want):
        assert_same_entry(entry, w)
        assert (error is None) == ("error" not in w) and len(coco) == len(w["people"])
    assert "junk.jpg" in got[2][5]


def test_a_dead_workers_photos_go_to_the_others_and_are_reported_without_any(tiny_checkpoint, caplog):
    caplog.set_level(logging.ERROR, logger="rapidpose")
    todo = list(enumerate(PHOTOS))
    with DeviceWorkers(["cpu", "cpu"], settings(tiny_checkpoint), chunk=3) as workers:
        results = workers.run(todo)
        first = next(results)
        os.kill(workers.pids()[0], signal.SIGKILL)
        rest = list(results)
    got = [first, *rest]
    assert [i for i, *_ in got] == list(range(len(PHOTOS))) and all(error is None for *_, error in got)
    assert "the worker on cpu stopped (exit code -9)" in caplog.text and "go to the other workers" in caplog.text

    with DeviceWorkers(["cpu"], settings(tiny_checkpoint), chunk=3) as workers:
        results = workers.run(todo)
        first = next(results)
        os.kill(workers.pids()[0], signal.SIGKILL)
        rest = list(results)
    got = [first, *rest]
    assert [i for i, *_ in got] == list(range(len(PHOTOS)))  # every photo comes back, the lost ones as errors
    lost = [error for *_, error in got if error is not None]
    assert lost and all("no worker left" in e for e in lost) and "no worker is left" in caplog.text


def test_a_worker_that_cannot_start_says_why(tmp_path):
    with pytest.raises(InputError, match="the worker on cpu could not start: .*missing.pth"):
        DeviceWorkers(["cpu"], WorkerSettings(model=str(tmp_path / "missing.pth"), detector="none", backend="torch"))


def test_predict_on_two_cpu_workers_writes_what_one_process_writes(tiny_checkpoint, tmp_path, caplog):
    import json

    from rapidpose.cli import main

    outputs = {}
    for device in ("cpu", "cpu,cpu"):
        out = tmp_path / device.replace(",", "-")
        code = main(["predict", *map(str, PHOTOS[:8]), "--model", str(tiny_checkpoint), "--detector", str(RTMDET),
                     "--backend", "torch", "--precision", "fp32", "--device", device, "--images-per-batch", "4",
                     "--jsonl", str(out / "poses.jsonl"), "--coco", str(out / "coco.json"), "--draw", str(out / "drawn")])
        assert code == 0
        outputs[device] = out
    assert "predicting on 2 devices (cpu, cpu): a worker process each" in caplog.text
    one, two = ([json.loads(line) for line in (outputs[d] / "poses.jsonl").read_text().splitlines()] for d in outputs)
    assert [e["image"] for e in two] == [str(p) for p in PHOTOS[:8]]
    for got, want in zip(two, one):
        assert_same_entry(got, want)
    coco_one, coco_two = (json.loads((outputs[d] / "coco.json").read_text()) for d in outputs)
    assert [r["image_id"] for r in coco_two] == [r["image_id"] for r in coco_one]
    assert sorted(p.name for p in (outputs["cpu,cpu"] / "drawn").iterdir()) == sorted(
        p.name for p in (outputs["cpu"] / "drawn").iterdir())


def test_eval_on_two_workers_scores_what_one_process_scores(tiny_checkpoint, tmp_path):
    """`eval --device cpu,cpu`: the boxes go out with the images, the exact poses come back, and the
    metrics and results equal one process's; an unreadable image counts as missed on both paths."""
    import json
    import shutil

    from rapidpose.cli import main

    folder = tmp_path / "images"
    shutil.copytree(ASSETS / "images" / "coco-mmpose", folder, ignore=shutil.ignore_patterns("*.json"))
    (folder / "000000040083.jpg").write_text("not an image")
    annotations = ASSETS / "images" / "coco-mmpose" / "test_coco.json"
    detections = ASSETS / "images" / "coco-mmpose" / "test_coco_det_AP_H_56.json"
    docs = {}
    for device in ("cpu", "cpu,cpu"):
        out = tmp_path / device.replace(",", "-")
        assert main(["eval", "--annotations", str(annotations), "--images", str(folder), "--model",
                     str(tiny_checkpoint), "--device", device, "--backend", "torch", "--boxes", str(detections),
                     "--images-per-batch", "2", "--json", str(out / "m.json")]) == 1  # 1: an image was skipped
        docs[device] = json.loads((out / "m.json").read_text())
        docs[device]["results"] = json.loads((out / "m.keypoints.json").read_text())
    one, two = docs["cpu"], docs["cpu,cpu"]
    assert two["settings"]["device"] == "cpu,cpu" and len(two["skipped_images"]) == 1 == len(one["skipped_images"])
    assert two["people"] == one["people"] > 0 and len(two["results"]) == len(one["results"]) > 0
    for g, w in zip(sorted(two["results"], key=lambda r: (r["image_id"], -r["score"])),
                    sorted(one["results"], key=lambda r: (r["image_id"], -r["score"]))):
        assert g["image_id"] == w["image_id"]
        np.testing.assert_allclose(g["keypoints"], w["keypoints"], atol=1e-3)
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, abs=1e-6)
