"""The trainer end to end on CPU: it learns, its checkpoints are models, it resumes, two processes train as one."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import ASSETS, GPU

from rapidpose.cli import main
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig
from rapidpose.model.weights import load_model
from rapidpose.train import TrainOptions, train

COCO_MINI = ASSETS / "images" / "coco-mini"
ANNOTATIONS = COCO_MINI / "person_keypoints.json"
IMAGES = COCO_MINI / "images"
STILL = {"flip_p": 0, "half_body_p": 0, "rotation_p": 0, "scale_factor": 0, "drop_path": 0,
         "center_jitter_p": 0}  # no randomness


def micro_checkpoint(path, keypoints=17, seed=0):
    """A 2-block, 128-wide ViTPose with the simple head (no BatchNorm: processes agree exactly)."""
    torch.manual_seed(seed)
    model = ViTPose(ViTPoseConfig(dim=128, depth=2, heads=2, head="simple", num_keypoints=keypoints))
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def eight_people(tmp_path):
    """Eight well-labelled people of coco-mini: one batch, a set a small model can learn in a minute."""
    coco = json.loads(ANNOTATIONS.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a.get("num_keypoints", 0) >= 10 and not a.get("iscrowd")][:8]
    ids = {a["image_id"] for a in coco["annotations"]}
    coco["images"] = [im for im in coco["images"] if im["id"] in ids]
    path = tmp_path / "eight.json"
    path.write_text(json.dumps(coco))
    return path


def test_a_small_model_learns_its_people(tmp_path):
    from rapidpose.evaluate.coco import evaluate
    from rapidpose.topdown.estimator import PoseEstimator

    annotations = eight_people(tmp_path)
    start = micro_checkpoint(tmp_path / "start.pth")
    before = evaluate(PoseEstimator(load_model(start), backend="torch", precision="fp32"), annotations, IMAGES)
    out = tmp_path / "run"
    result = train(TrainOptions(annotations, IMAGES, out, model=str(start), val_annotations=annotations,
                                val_images=IMAGES, epochs=400, batch_size=8, lr=1e-3, log_every=10, val_every=400,
                                recipe={**STILL, "warmup_iters": 5}), progress_bar=False)
    log = lines(out / "log.jsonl")
    losses = [e["loss"] for e in log if "loss" in e]
    assert set(log[0]) == {"epoch", "step", "lr", "loss", "images_per_s"} and log[0]["images_per_s"] > 0
    assert losses[-1] < 0.5 * losses[0], losses  # from step 10 on: past the first, largest errors
    ap = [e["ap"] for e in log if "ap" in e]
    assert len(ap) == 1 and ap[0] == result.best_ap
    assert ap[0] > before.metrics["AP"] + 0.1, (before.metrics["AP"], ap)  # measured 0.0 -> 0.156
    assert (out / "best.pth").is_file() and (out / "epoch_400.pth").is_file()
    assert cv2.imread(str(out / "training.png")).shape == (360, 960, 3)


def custom_set(tmp_path):
    """coco-mini's people with five keypoints of their own names (an animal's, say), sigmas given."""
    coco = json.loads(ANNOTATIONS.read_text())
    take = [0, 9, 10, 15, 16]  # nose, wrists, ankles
    names = ["snout", "left_paw", "right_paw", "left_hind_paw", "right_hind_paw"]
    coco["categories"] = [{"id": 1, "name": "critter", "keypoints": names, "skeleton": [[1, 2], [1, 3], [2, 4], [3, 5]],
                           "sigmas": [0.026, 0.062, 0.062, 0.089, 0.089]}]
    for a in coco["annotations"]:
        k = np.array(a["keypoints"]).reshape(17, 3)[take]
        a["keypoints"] = k.ravel().tolist()
        a["num_keypoints"] = int((k[:, 2] > 0).sum())
    path = tmp_path / "critters.json"
    path.write_text(json.dumps(coco))
    return path, names


def test_a_custom_keypoint_set_trains_and_its_checkpoint_is_a_model(tmp_path, caplog):
    annotations, names = custom_set(tmp_path)
    start = micro_checkpoint(tmp_path / "start.pth")  # 17 keypoints: the backbone stays, the head is new
    out = tmp_path / "run"
    code = main(["train", "--annotations", str(annotations), "--images", str(IMAGES), "--output", str(out),
                 "--model", str(start), "--epochs", "2", "--batch-size", "4", "--max-steps", "3", "--log-every", "1"])
    assert code == 0
    assert "its backbone is kept, the head starts afresh" in caplog.text
    settings = json.loads((out / "settings.json").read_text())
    assert settings["keypoint_set"]["keypoints"] == names and "scaled linearly to the global batch of 4" in settings["lr_rule"]
    model = load_model(out / "epoch_001.pth")
    assert list(model.skeleton.keypoints) == names and model.skeleton.flip_pairs == ((1, 2), (3, 4))
    start_backbone = torch.load(start)["state_dict"]["backbone.blocks.0.attn.qkv.weight"]
    assert not torch.equal(model.state_dict()["backbone.blocks.0.attn.qkv.weight"], start_backbone)  # it trained
    js = tmp_path / "poses.json"
    assert main(["predict", str(IMAGES), "--model", str(out / "epoch_001.pth"), "--detector", "none",
                 "--backend", "torch", "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert doc["keypoint_names"] == names and len(doc["images"][0]["people"][0]["keypoints"]) == 5
    # exported, the file carries the whole set: predict names the keypoints from it
    onnx, js = tmp_path / "critter.onnx", tmp_path / "exported.json"
    assert main(["export", "--model", str(out / "epoch_001.pth"), "--output", str(onnx)]) == 0
    assert main(["predict", str(IMAGES), "--model", str(onnx), "--detector", "none", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["keypoint_names"] == names
    # and eval scores it against the annotations with their own sigmas
    assert main(["eval", "--annotations", str(annotations), "--images", str(IMAGES), "--model", str(out / "epoch_001.pth"),
                 "--backend", "torch", "--limit", "4", "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["AP"] >= 0


def weights(path):
    return torch.load(path, map_location="cpu")["state_dict"]


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    start = micro_checkpoint(tmp_path / "start.pth")
    common = dict(model=str(start), epochs=3, batch_size=8, log_every=1, recipe=STILL)
    whole = train(TrainOptions(ANNOTATIONS, IMAGES, tmp_path / "whole", **common), progress_bar=False)
    cut = tmp_path / "cut"
    first = train(TrainOptions(ANNOTATIONS, IMAGES, cut, max_steps=whole.steps // 3, **common), progress_bar=False)
    assert first.epochs == 1 and not (cut / "epoch_002.pth").exists()
    resumed = train(TrainOptions(ANNOTATIONS, IMAGES, cut, resume=True, **common), progress_bar=False)
    assert resumed.steps == whole.steps and resumed.epochs == 3
    for name, value in weights(tmp_path / "whole" / "last.pth").items():
        torch.testing.assert_close(weights(cut / "last.pth")[name], value, rtol=1e-5, atol=1e-6)
    assert [e["step"] for e in lines(cut / "log.jsonl")] == [e["step"] for e in lines(tmp_path / "whole" / "log.jsonl")]


def test_a_compiled_network_trains_as_the_plain_one(tmp_path):
    start = micro_checkpoint(tmp_path / "start.pth")
    common = dict(model=str(start), epochs=1, max_steps=2, batch_size=4, log_every=1, recipe=STILL)
    plain = train(TrainOptions(ANNOTATIONS, IMAGES, tmp_path / "plain", **common), progress_bar=False)
    compiled = train(TrainOptions(ANNOTATIONS, IMAGES, tmp_path / "compiled", compile=True, **common), progress_bar=False)
    assert compiled.last_loss == pytest.approx(plain.last_loss, rel=1e-3)
    for name, value in weights(tmp_path / "plain" / "last.pth").items():  # saved without torch.compile's prefix
        torch.testing.assert_close(weights(tmp_path / "compiled" / "last.pth")[name], value, rtol=1e-3, atol=1e-4)


def test_two_processes_train_as_one_on_the_same_global_batch(tmp_path):
    start = micro_checkpoint(tmp_path / "start.pth")
    args = ["-m", "rapidpose", "-q", "train", "--annotations", str(ANNOTATIONS), "--images", str(IMAGES),
            "--model", str(start), "--epochs", "1", "--max-steps", "3", "--device", "cpu",
            "--recipe", json.dumps(STILL), "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    one = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one"), "--batch-size", "8"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29517", *args, "--output", str(tmp_path / "two"),
                          "--batch-size", "4"], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    settings = json.loads((tmp_path / "two" / "settings.json").read_text())
    assert settings["processes"] == 2 and settings["global_batch"] == 8
    a, b = weights(tmp_path / "one" / "last.pth"), weights(tmp_path / "two" / "last.pth")
    assert not torch.equal(a["keypoint_head.final_layer.weight"], weights(start)["keypoint_head.final_layer.weight"])
    for name in a:  # gradients averaged over the processes: the same steps, up to float summation order
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    losses = [[e["loss"] for e in lines(tmp_path / run / "log.jsonl")] for run in ("one", "two")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_bad_training_input_gets_a_clear_message_and_unreadable_images_are_skipped(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["train", "--annotations", str(tmp_path / "missing.json"), "--images", str(IMAGES),
                 "--output", str(out)]) == 2
    assert "missing.json" in caplog.text
    assert main(["train", "--annotations", str(ANNOTATIONS), "--images", str(IMAGES), "--output", str(out),
                 "--recipe", "[1, 2]"]) == 2
    assert "--recipe must be a JSON object" in caplog.text
    assert main(["train", "--annotations", str(ANNOTATIONS), "--images", str(IMAGES), "--output", str(out),
                 "--val-annotations", str(ANNOTATIONS)]) == 2
    assert "needs both --val-annotations and --val-images" in caplog.text
    # an image that cannot be read: its people are skipped and counted, the run goes on
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    coco = json.loads(ANNOTATIONS.read_text())
    used = {a["image_id"] for a in coco["annotations"] if a.get("num_keypoints", 0) > 0}
    broken = next(im for im in coco["images"] if im["id"] in used)
    (images / broken["file_name"]).write_bytes(b"not a jpeg")
    start = micro_checkpoint(tmp_path / "start.pth")
    result = train(TrainOptions(ANNOTATIONS, images, out, model=str(start), epochs=1, batch_size=8, log_every=1,
                                recipe=STILL), progress_bar=False)
    assert result.steps >= 1 and broken["file_name"] in caplog.text and "could not be read" in caplog.text


@pytest.mark.gpu
@GPU
def test_on_the_gpu_crops_are_the_cpus_and_bf16_steps_learn(tmp_path):
    from rapidpose.io import read_image
    from rapidpose.train.data import load_keypoint_set
    from rapidpose.train.recipe import recipe_for
    from rapidpose.train.trainer import _Feeder

    data = load_keypoint_set(ANNOTATIONS, IMAGES)
    cfg = ViTPoseConfig.from_variant("s")
    images = [read_image(s.image) for s in data.samples[:6]]
    rng = np.random.default_rng(0)
    matrices = np.stack([np.array([[0.5, 0.1, rng.uniform(-50, 0)], [-0.1, 0.5, rng.uniform(-30, 0)]], np.float32)
                         for _ in images])
    on_cpu = _Feeder(data, recipe_for("s"), cfg, torch.device("cpu"), 0)._crops(images, matrices)
    on_gpu = _Feeder(data, recipe_for("s"), cfg, torch.device("cuda"), 0)._crops(images, matrices).cpu()
    assert (on_gpu - on_cpu).abs().max() < 2 / 255 / 0.224  # a level of a uint8 crop, normalised (grid_sample vs cv2)
    train(TrainOptions(eight_people(tmp_path), IMAGES, tmp_path / "run", model=str(micro_checkpoint(tmp_path / "m.pth")),
                                epochs=40, batch_size=8, lr=1e-3, device="cuda", log_every=10, recipe={**STILL, "warmup_iters": 5}),
                         progress_bar=False)
    losses = [e["loss"] for e in lines(tmp_path / "run" / "log.jsonl")]
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["precision"] == "bf16"
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
    assert load_model(tmp_path / "run" / "last.pth").cfg.num_keypoints == 17
