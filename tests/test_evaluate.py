"""COCO keypoint evaluation: the protocol (rescoring, OKS-NMS, pycocotools) against known answers,
mmpose's box handling, and `rapidpose eval` end to end on the shared COCO images."""
import json
import shutil

import numpy as np
import pytest
from conftest import ASSETS
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rapidpose.cli import main
from rapidpose.errors import InputError
from rapidpose.evaluate.coco import (METRICS, clean_gt_box, detection_boxes, evaluate, evaluate_predictions, gt_boxes,
                                     gt_people, image_results, load_annotations, oks_iou, oks_nms, rescore,
                                     select_images)
from rapidpose.results import Poses
from rapidpose.skeletons import COCO as COCO_SKELETON
from rapidpose.topdown.geometry import boxes_to_center_scale

COCO_MINI = ASSETS / "images" / "coco-mini"
COCO_MMPOSE = ASSETS / "images" / "coco-mmpose"
MINI_ANNOTATIONS = COCO_MINI / "person_keypoints.json"
MMPOSE_ANNOTATIONS = COCO_MMPOSE / "test_coco.json"
DETECTIONS = COCO_MMPOSE / "test_coco_det_AP_H_56.json"
SIGMAS = np.array(COCO_SKELETON.sigmas)


def gt_as_predictions(coco, image_id, shift=0.0, rng=None) -> Poses:
    """The image's ground-truth people as Poses: labelled keypoints score 1 (moved by `shift` pixels in
    random directions), unlabelled ones 0, box score 1."""
    people = gt_people(coco, image_id)
    keypoints = np.array([obj["keypoints"] for obj, _ in people], np.float64).reshape(-1, 17, 3)
    xy = keypoints[..., :2]
    if shift:
        angle = rng.uniform(0, 2 * np.pi, xy.shape[:2])
        xy = xy + shift * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    boxes = gt_boxes(coco, [image_id])[image_id]
    return Poses(boxes[:, :4], boxes[:, 4], xy, (keypoints[..., 2] > 0).astype(np.float32))


def protocol_results(coco, shift=0.0, seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [r for im in coco.dataset["images"]
            for r in image_results(gt_as_predictions(coco, im["id"], shift, rng), im["id"], SIGMAS)]


@pytest.mark.parametrize("annotations, people", [(MINI_ANNOTATIONS, 29), (MMPOSE_ANNOTATIONS, 12)])
def test_ground_truth_as_predictions_scores_one(annotations, people):
    coco = load_annotations(annotations)
    results = protocol_results(coco)
    assert len(results) == people  # OKS-NMS keeps every distinct person
    metrics = evaluate_predictions(coco, results)
    assert list(metrics) == list(METRICS)
    assert metrics["AP"] == 1.0 and metrics["AR"] == 1.0


def test_moved_keypoints_score_as_pycocotools_does_and_worse_with_distance(tmp_path):
    coco = load_annotations(MINI_ANNOTATIONS)
    aps = []
    for shift in (0.0, 2.0, 5.0, 10.0, 20.0):
        results = protocol_results(coco, shift, seed=int(shift))
        path = tmp_path / f"shift{shift}.json"
        path.write_text(json.dumps(results))
        ours = evaluate_predictions(str(MINI_ANNOTATIONS), json.loads(path.read_text()))

        direct_gt = COCO(str(MINI_ANNOTATIONS))
        direct = COCOeval(direct_gt, direct_gt.loadRes(str(path)), "keypoints")
        direct.params.kpt_oks_sigmas = SIGMAS
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
        assert list(ours.values()) == direct.stats.tolist()
        aps.append(ours["AP"])
    assert aps[0] == 1.0 and all(a >= b for a, b in zip(aps, aps[1:])) and aps[-1] < 0.5


def test_one_oks_by_hand():
    """A person whose labelled keypoints all moved 3 px right: COCOeval's OKS and rapidpose's (over the
    same keypoints and area) are both the mean over them of exp(-d^2 / (2 * area * (2 sigma)^2))."""
    coco = load_annotations(MINI_ANNOTATIONS)
    image_id = next(im["id"] for im in coco.dataset["images"] if gt_people(coco, im["id"]))
    obj, _ = gt_people(coco, image_id)[0]
    keypoints = np.array(obj["keypoints"], np.float64).reshape(17, 3)
    moved = keypoints.copy()
    moved[:, 0] += 3.0
    result = {"image_id": image_id, "category_id": 1, "keypoints": moved.ravel().tolist(), "score": 1.0}
    ev = COCOeval(coco, coco.loadRes([result]), "keypoints")
    ev.params.kpt_oks_sigmas = SIGMAS
    ev.params.imgIds = [image_id]
    ev.evaluate()
    labelled = keypoints[:, 2] > 0
    expected = np.mean(np.exp(-9.0 / (2 * obj["area"] * (2 * SIGMAS[labelled]) ** 2)))
    assert ev.ious[(image_id, 1)][0, 0] == pytest.approx(expected, rel=1e-12)
    ours = oks_iou(keypoints[labelled, :2], moved[None, labelled, :2], obj["area"], [obj["area"]], SIGMAS[labelled])
    assert ours[0] == pytest.approx(expected, rel=1e-9)


def test_rescoring_by_hand():
    scores = np.zeros((2, 17), np.float32)
    scores[0, :7] = [0.9, 0.1, 0.5, 0.21, 0.19, 0.25, 0.35]  # around the threshold: 0.2 exactly sorts them
    scores[1, :] = 0.2  # nothing above the threshold
    poses = Poses(np.array([[0, 0, 10, 10]] * 2), np.array([0.8, 1.0]), np.zeros((2, 17, 2)), scores)
    np.testing.assert_allclose(rescore(poses), [np.mean([0.9, 0.5, 0.21, 0.25, 0.35]) * 0.8, 0.0], rtol=1e-6)


def _pose(x0=100.0, y0=100.0):
    rng = np.random.default_rng(3)
    return np.stack([x0 + rng.uniform(0, 60, 17), y0 + rng.uniform(0, 150, 17)], axis=1)


def test_oks_iou_by_hand():
    g = np.array([[0.0, 0.0], [10.0, 0.0]])
    d = np.array([[[3.0, 4.0], [10.0, 0.0]], [[0.0, 0.0], [10.0, 2.0]]])
    sigmas = np.array([0.1, 0.2])
    area_g, areas_d = 1000.0, np.array([3000.0, 1000.0])
    expected = [(np.exp(-25 / 0.04 / 2000 / 2) + 1) / 2, (1 + np.exp(-4 / 0.16 / 1000 / 2)) / 2]
    np.testing.assert_allclose(oks_iou(g, d, area_g, areas_d, sigmas), expected, rtol=1e-12)


def test_oks_nms_keeps_distinct_people_and_drops_duplicates():
    pose = _pose()
    area = 150.0 * 200.0

    def nms(poses, scores):
        return oks_nms(np.array(poses), np.array(scores), np.full(len(poses), area), SIGMAS).tolist()

    assert nms([pose, pose], [0.5, 0.9]) == [1]  # the identical, lower-scored copy goes
    assert nms([pose, _pose(500.0)], [0.9, 0.5]) == [0, 1]  # someone else stays
    # a copy moved by delta has OKS mean(exp(-delta^2 / (2 area (2 sigma)^2))): find delta where it is 0.9
    low, high = 0.0, 100.0
    for _ in range(100):
        mid = (low + high) / 2
        oks = oks_iou(pose, (pose + [mid, 0])[None], area, [area], SIGMAS)[0]
        low, high = (mid, high) if oks > 0.9 else (low, mid)
    assert nms([pose, pose + [low * 0.99, 0]], [0.9, 0.5]) == [0]  # OKS just over 0.9: removed
    assert nms([pose, pose + [high * 1.01, 0]], [0.9, 0.5]) == [0, 1]  # OKS just under 0.9: kept
    # a chain: 1 suppresses 0 (a near copy), 2 is far from both
    assert nms([pose + [0.5, 0], pose, _pose(900.0)], [0.6, 0.8, 0.7]) == [1, 2]
    assert nms([], []) == []


def test_nms_area_is_the_padded_crop_box():
    """Two people whose OKS with plain box areas would be under 0.9 but with the 1.25-padded 192:256
    crop areas (as mmpose) is over it: the lower-scored one goes."""
    pose = _pose()
    box = np.array([100.0, 100.0, 160.0, 250.0])  # 60 x 150: grown to 112.5 x 150, then x 1.25
    _, scale = boxes_to_center_scale(box[None])
    padded = float(np.prod(scale * 200))
    assert padded == pytest.approx(112.5 * 1.25 * 150 * 1.25)
    moved = pose + [6.0, 0]
    assert oks_iou(pose, moved[None], 60 * 150, [60 * 150], SIGMAS)[0] < 0.9
    assert oks_iou(pose, moved[None], padded, [padded], SIGMAS)[0] > 0.9
    poses = Poses(np.array([box, box]), np.ones(2), np.array([pose, moved]), np.array([[1.0] * 17, [0.9] * 17]))
    results = image_results(poses, 7, SIGMAS)
    assert len(results) == 1 and results[0]["score"] == pytest.approx(1.0)
    assert results[0]["image_id"] == 7 and len(results[0]["keypoints"]) == 51 and "bbox" not in results[0]


def test_gt_boxes_are_cleaned_as_mmpose_does(tmp_path):
    kps = [100, 100, 2] + [0] * 48
    anns = [
        {"id": 1, "image_id": 1, "bbox": [-10.0, 5.0, 700.0, 300.0], "area": 5000, "num_keypoints": 1,
         "keypoints": kps},
        {"id": 2, "image_id": 1, "bbox": [10.0, 10.0, 50.0, 80.0], "area": 0, "num_keypoints": 1, "keypoints": kps},
        {"id": 3, "image_id": 1, "bbox": [10.0, 10.0, 0.5, 80.0], "area": 40, "num_keypoints": 1, "keypoints": kps},
        {"id": 4, "image_id": 1, "bbox": [10.0, 10.0, 50.0, 80.0], "area": 4000, "num_keypoints": 0,
         "keypoints": [0] * 51},
        {"id": 5, "image_id": 1, "bbox": [10.0, 10.0, 50.0, 80.0], "area": 4000},
        {"id": 6, "image_id": 1, "bbox": [10.0, 10.0, 50.0, 80.0], "area": 4000, "iscrowd": 1, "num_keypoints": 1,
         "keypoints": kps},
        {"id": 7, "image_id": 1, "bbox": [20.0, 30.0, 41.0, 81.0], "area": 3000, "num_keypoints": 1, "keypoints": kps},
    ]
    for ann in anns:
        ann["category_id"] = 1
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 426}], "annotations": anns,
           "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_SKELETON.keypoints)}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    coco = load_annotations(path)
    # off the image: x1 = max(0, x), x2 = min(width - 1, x1 + w - 1)
    assert clean_gt_box(anns[0], 640, 426) == [0.0, 5.0, 639.0, 299.0]
    assert [obj["id"] for obj, _ in gt_people(coco, 1)] == [1, 7]  # zero area, no keypoints, crowd: skipped
    boxes = gt_boxes(coco, [1])[1]
    np.testing.assert_allclose(boxes, [[0, 5, 639, 304, 1], [20, 30, 60, 110, 1]])
    # xyxy -> center / scale is mmpose's _xywh2cs of the clean [x, y, w, h] = [20, 30, 40, 80]
    center, scale = boxes_to_center_scale(boxes[1:, :4])
    np.testing.assert_allclose(center[0], [20 + 40 / 2, 30 + 80 / 2])
    np.testing.assert_allclose(scale[0], [80 * 0.75 / 200 * 1.25, 80 / 200 * 1.25], rtol=1e-6)


def test_detection_boxes_keep_people_above_the_minimum_score(tmp_path):
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "score": 0.9},
            {"image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 40], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.05},
            {"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    np.testing.assert_allclose(detection_boxes(path, [1, 2])[1], [[10, 20, 40, 60, 0.9], [0, 0, 5, 5, 0.05]])
    assert len(detection_boxes(path, [1, 2])[2]) == 0
    assert len(detection_boxes(path, [1], min_score=0.1)[1]) == 1


def test_eval_cli_on_coco_mmpose(tiny_checkpoint, tmp_path, capsys):
    metrics_path = tmp_path / "m.json"
    args = ["eval", "--annotations", str(MMPOSE_ANNOTATIONS), "--images", str(COCO_MMPOSE),
            "--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(args + ["--json", str(metrics_path)]) == 0
    doc = json.loads(metrics_path.read_text())
    assert list(doc["metrics"]) == list(METRICS)
    assert doc["images"] == 4 and doc["people"] == 12 and doc["seconds"] > 0
    assert doc["settings"]["boxes"] == "gt" and doc["settings"]["precision"] == "fp32"
    predictions = tmp_path / "m.keypoints.json"
    assert doc["predictions"] == str(predictions)
    gt = COCO(str(MMPOSE_ANNOTATIONS))
    assert len(gt.loadRes(str(predictions)).getAnnIds()) == len(json.loads(predictions.read_text())) > 0
    # the metrics are pycocotools' for the predictions written beside them
    assert doc["metrics"] == evaluate_predictions(str(MMPOSE_ANNOTATIONS), json.loads(predictions.read_text()))
    out = capsys.readouterr().out
    assert "AP50" in out and "4 images, 12 people" in out

    # detection boxes instead: every detection goes through the network, OKS-NMS may drop some
    det_path, det_predictions = tmp_path / "d.json", tmp_path / "preds" / "d.json"
    assert main(args + ["--backend", "torch", "--boxes", str(DETECTIONS), "--json", str(det_path),
                        "--predictions", str(det_predictions)]) == 0
    doc = json.loads(det_path.read_text())
    detections = json.loads(DETECTIONS.read_text())
    assert doc["people"] == len(detections) == 118
    assert 0 < len(json.loads(det_predictions.read_text())) <= len(detections)
    assert doc["metrics"] == evaluate_predictions(str(MMPOSE_ANNOTATIONS), json.loads(det_predictions.read_text()))

    # --limit 2: the first two images of the file, and only they are scored
    assert main(args + ["--backend", "torch", "--limit", "2", "--json", str(tmp_path / "l.json")]) == 0
    doc = json.loads((tmp_path / "l.json").read_text())
    first_two = {im["id"] for im in json.loads(MMPOSE_ANNOTATIONS.read_text())["images"][:2]}
    assert doc["images"] == 2
    assert {r["image_id"] for r in json.loads((tmp_path / "l.keypoints.json").read_text())} <= first_two


def test_evaluate_reports_time_and_scores_unread_images_as_missed(tiny_checkpoint, tmp_path, caplog):
    from rapidpose.topdown.estimator import PoseEstimator

    folder = tmp_path / "images"
    shutil.copytree(COCO_MMPOSE, folder, ignore=shutil.ignore_patterns("*.json"))
    (folder / "000000040083.jpg").write_text("not an image")
    est = PoseEstimator(tiny_checkpoint, device="cpu", backend="torch", precision="fp32")
    result = evaluate(est, MMPOSE_ANNOTATIONS, folder, limit=2)
    assert result.images == 2 and result.skipped == [str(folder / "000000040083.jpg")]
    assert "000000040083.jpg" in caplog.text
    assert result.seconds > 0 and result.people_per_s == pytest.approx(result.people / result.seconds)
    assert {r["image_id"] for r in result.predictions} == {785}

    # the same images scored with the ground truth: the unread image's people are missed, not dropped
    coco = load_annotations(MMPOSE_ANNOTATIONS)
    perfect = [r for i in (785, 40083) for r in image_results(gt_as_predictions(coco, i), i, SIGMAS)]
    only_first = [r for r in perfect if r["image_id"] == 785]
    assert evaluate_predictions(coco, perfect, [785, 40083])["AR"] == 1.0
    assert evaluate_predictions(coco, only_first, [785, 40083])["AR"] < 1.0
    assert evaluate_predictions(coco, [], [785])["AP"] == 0.0
    with pytest.raises(InputError, match="not in the annotations"):
        evaluate_predictions(coco, [dict(perfect[0], image_id=12345)])


def test_eval_cli_rejects_bad_inputs_before_loading_the_model(tmp_path, caplog, capsys):
    def run(*extra, annotations=MMPOSE_ANNOTATIONS, images=COCO_MMPOSE):
        caplog.clear()
        code = main(["eval", "--annotations", str(annotations), "--images", str(images),
                     "--model", str(tmp_path / "no-model.pth"), *extra])
        assert "Traceback" not in caplog.text and "no-model.pth" not in caplog.text  # failed before the model
        return code

    assert run(annotations=tmp_path / "missing.json") == 2 and "missing.json' does not exist" in caplog.text
    assert run(annotations=DETECTIONS) == 2 and "not a COCO keypoint annotation file" in caplog.text
    (tmp_path / "broken.json").write_text("{not json")
    assert run(annotations=tmp_path / "broken.json") == 2 and "not valid JSON" in caplog.text
    assert run(images=tmp_path / "nowhere") == 2 and "images folder" in caplog.text
    (tmp_path / "empty").mkdir()
    assert run(images=tmp_path / "empty") == 2 and "none of the 4 annotated images" in caplog.text
    assert run("--boxes", str(MMPOSE_ANNOTATIONS)) == 2 and "not COCO detections" in caplog.text
    with pytest.raises(SystemExit) as stopped:  # refused by the option's type, before anything loads
        run("--limit", "0")
    assert stopped.value.code == 2 and "--limit: must be a whole number, 1 or more" in capsys.readouterr().err

    coco = load_annotations(MMPOSE_ANNOTATIONS)
    with pytest.raises(InputError, match="at least 1"):
        select_images(coco, COCO_MMPOSE, limit=-1)
    with pytest.raises(InputError, match="not COCO detections"):
        detection_boxes(MMPOSE_ANNOTATIONS, [785])
