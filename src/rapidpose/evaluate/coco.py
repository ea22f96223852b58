"""COCO keypoint evaluation, the top-down protocol behind ViTPose's published numbers (mmpose 0.x
TopDownCocoDataset): person boxes from ground truth or a detections file -> poses -> rescoring ->
OKS-NMS per image -> pycocotools COCOeval('keypoints') with the keypoint set's sigmas.

    from rapidpose import PoseEstimator
    from rapidpose.evaluate.coco import evaluate
    result = evaluate(PoseEstimator("vitpose-b", flip_test=True), "person_keypoints_val2017.json", "val2017/",
                      boxes="COCO_val2017_detections_AP_H_56_person.json")
    result.metrics["AP"]
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rapidpose.errors import InputError, RapidPoseError
from rapidpose.results import Poses
from rapidpose.skeletons import COCO as COCO_SKELETON
from rapidpose.topdown.geometry import INPUT_SIZE, PIXEL_STD, boxes_to_center_scale

log = logging.getLogger("rapidpose")

METRICS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")  # COCOeval.stats order
KEYPOINT_THRESHOLD = 0.2  # mmpose's vis_thr: keypoints scoring above it make up the person score
OKS_THRESHOLD = 0.9  # mmpose's oks_thr


@dataclass
class EvalResult:
    """Metrics (METRICS -> float, -1 where COCO has no person of that size), the COCO keypoint results
    that were scored, and how long the whole evaluation took."""

    metrics: dict[str, float]
    predictions: list[dict]
    images: int  # evaluated images (skipped ones included: their people count as missed)
    people: int  # person boxes that went through the network
    seconds: float
    skipped: list[str] = field(default_factory=list)  # images that could not be read

    @property
    def people_per_s(self) -> float:
        return self.people / self.seconds if self.seconds > 0 else 0.0


# --- annotations and person boxes -------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """pycocotools prints its progress; the caller decides what to show."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _read_json(path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{what} '{path}' does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} '{path}' is a folder, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} '{path}' is not valid JSON: {exc}") from None


def load_annotations(path):
    """A pycocotools COCO of a keypoint annotation file (person_keypoints_val2017.json and the like)."""
    from pycocotools.coco import COCO

    if not Path(path).is_file():
        raise InputError(f"annotation file '{path}' does not exist: pass COCO keypoint annotations "
                         f"(e.g. person_keypoints_val2017.json)")
    doc = _read_json(path, "annotation file")
    if not (isinstance(doc, dict) and isinstance(doc.get("images"), list)
            and isinstance(doc.get("annotations"), list) and isinstance(doc.get("categories"), list)
            and any(isinstance(c, dict) and "keypoints" in c for c in doc["categories"])):
        raise InputError(f"'{path}' is not a COCO keypoint annotation file (it needs 'images', 'annotations' and a "
                         f"category with 'keypoints'): pass one like person_keypoints_val2017.json")
    if not doc["images"]:
        raise InputError(f"annotation file '{path}' lists no images")
    coco = COCO()
    coco.dataset = doc
    try:
        with _quiet():
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        what = f"an entry without {exc}" if isinstance(exc, KeyError) else "a malformed entry"
        raise InputError(f"annotation file '{path}' has {what}: pass valid COCO keypoint annotations") from None
    return coco


def keypoint_category(coco) -> dict:
    """The category that has keypoints (COCO: person, id 1): the one predictions are made for."""
    return next(c for c in coco.dataset["categories"] if "keypoints" in c)


def select_images(coco, images_dir, limit: int | None = None) -> list[dict]:
    """The `images` entries to evaluate: in file order, the first `limit` of them."""
    if limit is not None and limit < 1:
        raise InputError(f"limit (--limit) must be at least 1, got {limit}")
    folder = Path(images_dir)
    if not folder.is_dir():
        raise InputError(f"images folder '{folder}' does not exist or is not a folder: pass the folder holding "
                         f"the annotated images (for COCO, val2017/)")
    images = coco.dataset["images"][:limit]
    if not any((folder / im["file_name"]).is_file() for im in images):
        raise InputError(f"none of the {len(images)} annotated images (such as '{images[0]['file_name']}') is in "
                         f"'{folder}': pass the folder that holds the annotation file's images")
    return images


def clean_gt_box(obj: dict, width: int, height: int) -> list[float] | None:
    """mmpose's sanitised ground-truth box as [x, y, w, h] (clipped, with its inclusive-pixel width),
    or None for an annotation it drops."""
    if "bbox" not in obj:
        return None
    x, y, w, h = obj["bbox"]
    x1, y1 = max(0, x), max(0, y)
    x2 = min(width - 1, x1 + max(0, w - 1))
    y2 = min(height - 1, y1 + max(0, h - 1))
    if ("area" not in obj or obj["area"] > 0) and x2 > x1 and y2 > y1:
        return [x1, y1, x2 - x1, y2 - y1]
    return None


def _has_keypoints(obj: dict) -> bool:
    return "keypoints" in obj and max(obj["keypoints"]) > 0 and obj.get("num_keypoints", 1) != 0


def gt_people(coco, image_id) -> list[tuple[dict, list[float]]]:
    """The annotations of one image that mmpose evaluates with ground-truth boxes, in file order, each
    with its clean [x, y, w, h] box: not crowds, a usable box, at least one labelled keypoint."""
    info = coco.imgs[image_id]
    people = []
    for obj in coco.imgToAnns.get(image_id, []):
        if obj.get("iscrowd", 0):  # mmpose reads getAnnIds(iscrowd=False)
            continue
        box = clean_gt_box(obj, info["width"], info["height"])
        if box is not None and _has_keypoints(obj):
            people.append((obj, box))
    return people


def gt_boxes(coco, image_ids) -> dict[int, np.ndarray]:
    """Per image its ground-truth people's clean boxes as (N, 5) x1, y1, x2, y2, score 1."""
    return {i: np.asarray([[x, y, x + w, y + h, 1.0] for _, (x, y, w, h) in gt_people(coco, i)],
                          np.float32).reshape(-1, 5) for i in image_ids}


def detection_boxes(path, image_ids, min_score: float = 0.0) -> dict[int, np.ndarray]:
    """Per image the person detections (category 1) of a COCO detections file scoring at least
    `min_score`, as (N, 5) x1, y1, x2, y2, score, in file order. Nothing else is filtered, as in mmpose."""
    doc = _read_json(path, "boxes file")
    if not (isinstance(doc, list) and all(isinstance(d, dict) and {"image_id", "bbox", "score"} <= d.keys()
                                          and len(d["bbox"]) == 4 for d in doc)):
        raise InputError(f"boxes file '{path}' is not COCO detections (a JSON list of {{'image_id', "
                         f"'category_id', 'bbox': [x, y, w, h], 'score'}}): pass such a file, or --boxes gt for "
                         f"the annotations' boxes")
    rows: dict[int, list] = {i: [] for i in image_ids}
    for det in doc:
        if det.get("category_id", 1) != 1 or det["image_id"] not in rows or det["score"] < min_score:
            continue
        x, y, w, h = det["bbox"]
        rows[det["image_id"]].append([x, y, x + w, y + h, det["score"]])
    if doc and not any(rows.values()):
        log.warning("boxes file '%s' has no person detections for the evaluated images", path)
    return {i: np.asarray(r, np.float32).reshape(-1, 5) for i, r in rows.items()}


def person_boxes(coco, boxes, image_ids, min_score: float = 0.0) -> dict[int, np.ndarray]:
    """boxes: 'gt', a COCO detections file, or an already made {image_id: (N, 5) array}."""
    if isinstance(boxes, dict):
        return {i: np.asarray(boxes.get(i, np.zeros((0, 5))), np.float32).reshape(-1, 5) for i in image_ids}
    if str(boxes) == "gt":
        return gt_boxes(coco, image_ids)
    return detection_boxes(boxes, image_ids, min_score)


# --- the protocol: rescoring and OKS-NMS --------------------------------------------------------------

def rescore(poses: Poses) -> np.ndarray:
    """Person scores: mean of the keypoint scores above 0.2, times the box score (0 with none above)."""
    return poses.person_scores(KEYPOINT_THRESHOLD)


def oks_iou(g, d, area_g: float, areas_d, sigmas) -> np.ndarray:
    """OKS of one pose g (K, 2) with poses d (M, K, 2), as mmpose's oks_iou: every keypoint counts and
    the scale is the mean of the two areas (not a ground truth's, as in COCOeval)."""
    variances = (2 * np.asarray(sigmas, np.float64)) ** 2
    squared = ((np.asarray(d, np.float64).reshape(-1, len(variances), 2) - np.asarray(g, np.float64)) ** 2).sum(-1)
    scale = (area_g + np.asarray(areas_d, np.float64).reshape(-1, 1)) / 2 + np.spacing(1)
    return np.exp(-(squared / variances / scale / 2)).mean(axis=1)


def oks_nms(keypoints, scores, areas, sigmas, threshold: float = OKS_THRESHOLD) -> np.ndarray:
    """Indices of the poses kept, best first: greedily take the best and drop those with OKS > threshold."""
    keypoints, areas = np.asarray(keypoints), np.asarray(areas)
    order = np.asarray(scores).argsort()[::-1]  # mmpose's order, ties included
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas) <= threshold]
    return np.asarray(keep, np.int64)


def image_results(poses: Poses, image_id: int, sigmas, input_size=INPUT_SIZE, category_id: int = 1) -> list[dict]:
    """One image's poses as COCO keypoint results after rescoring and OKS-NMS.

    The NMS area of a pose is its padded crop box (scale * 200 squared), as the official code's. The
    results carry no 'bbox', as mmpose's: pycocotools then takes a prediction's area from its keypoints'
    extent, which decides whether it counts towards APM / APL.
    """
    if not len(poses):
        return []
    scores = rescore(poses)
    _, scale = boxes_to_center_scale(poses.boxes, input_size)
    areas = np.prod(scale * np.float32(PIXEL_STD), axis=1)
    flat = np.concatenate([poses.keypoints, poses.keypoint_scores[..., None]], axis=-1).reshape(len(poses), -1)
    return [{"image_id": int(image_id), "category_id": int(category_id), "keypoints": flat[i].tolist(),
             "score": float(scores[i])} for i in oks_nms(poses.keypoints, scores, areas, sigmas)]


# --- scoring --------------------------------------------------------------------------------------------

def _no_results(gt):
    """An empty results set (pycocotools' loadRes cannot take an empty list)."""
    from pycocotools.coco import COCO

    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": []}
    with _quiet():
        dt.createIndex()
    return dt


def evaluate_predictions(coco_gt, results: list[dict], image_ids=None, sigmas=None) -> dict[str, float]:
    """pycocotools keypoint AP/AR of COCO keypoint results, scored as given (rescore and NMS them with
    `image_results` first for the official protocol).

    coco_gt: a COCO object or an annotation file. image_ids: the evaluated images (default all of the
    file's); those without results count as misses. sigmas: OKS sigmas (default COCO's).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = coco_gt if isinstance(coco_gt, COCO) else load_annotations(coco_gt)
    unknown = {r["image_id"] for r in results} - set(gt.imgs)
    if unknown:
        raise InputError(f"{len(unknown)} image ids of the results (such as {min(unknown)}) are not in the "
                         f"annotations: score results against the annotation file they were made for")
    with _quiet():
        dt = gt.loadRes([dict(r) for r in results]) if results else _no_results(gt)  # loadRes edits its input
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(COCO_SKELETON.sigmas if sigmas is None else sigmas, np.float64)
        ev.params.useSegm = None
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(METRICS, (float(s) for s in ev.stats)))


def _sigmas_for(skeleton, coco) -> np.ndarray:
    names = keypoint_category(coco)["keypoints"]
    if skeleton.sigmas is None:
        raise InputError(f"keypoint set '{skeleton.name}' has no OKS sigmas, so COCO keypoint AP is not defined "
                         f"for it: evaluate a model of a set that has them (coco, aic, ap10k)")
    if len(names) != skeleton.num_keypoints:
        raise InputError(f"the model predicts {skeleton.num_keypoints} keypoints ('{skeleton.name}') but the "
                         f"annotations have {len(names)}: use a model of the annotations' keypoint set "
                         f"(ViTPose++: --dataset-index)")
    return np.asarray(skeleton.sigmas, np.float64)


def evaluate(estimator, annotations, images_dir, boxes="gt", limit: int | None = None,
             min_box_score: float = 0.0, images_per_batch: int = 16) -> EvalResult:
    """The whole protocol with a PoseEstimator: annotations (file or COCO object), the folder of their
    images, boxes ('gt', a COCO detections file, or {image_id: (N, 5)}), the first `limit` images.

    An unreadable image is reported and skipped; its people count as missed.
    """
    from rapidpose.io import chunked, read_ahead
    from rapidpose.progress import progress

    start = time.perf_counter()
    coco, images, table, paths = _inputs(annotations, images_dir, boxes, limit, min_box_score)
    scoring = _Scoring(coco, estimator.skeleton, estimator.input_size)
    with progress(len(images), "eval") as bar:
        for chunk in chunked(zip(images, read_ahead(paths)), max(images_per_batch, 1)):
            good = []
            for info, (path, image) in chunk:
                if isinstance(image, RapidPoseError):
                    scoring.skip(path, image)
                else:
                    good.append((info["id"], image))
            if good:
                found = estimator.predict([image for _, image in good], [table[i] for i, _ in good])
                for (image_id, _), poses in zip(good, found):
                    scoring.add(image_id, poses)
            bar.update(len(chunk))
            bar.set_postfix(people=scoring.people)
    return scoring.result(images, start)


def evaluate_on_devices(settings, devices: list[str], annotations, images_dir, boxes="gt",
                        limit: int | None = None, min_box_score: float = 0.0) -> EvalResult:
    """evaluate() with a worker process per device (photos.devices: `eval --device cuda` on every GPU):
    settings, a photos.devices.WorkerSettings, says how each worker makes its PoseEstimator; the person
    boxes go to the workers with the images, the poses come back exact and are scored here."""
    import dataclasses

    from rapidpose.photos.devices import DeviceWorkers
    from rapidpose.progress import progress

    start = time.perf_counter()
    coco, images, table, paths = _inputs(annotations, images_dir, boxes, limit, min_box_score)
    settings = dataclasses.replace(settings, detector=None, boxes=None, coco=False, poses=True, draw_dir=None,
                                   box_table={str(p): table[im["id"]] for p, im in zip(paths, images)})
    with DeviceWorkers(devices, settings) as workers:
        scoring = _Scoring(coco, workers.skeleton, tuple(workers.header["input_size"]))
        with progress(len(images), f"eval on {len(devices)} devices") as bar:
            for index, path, _, _, poses, error in workers.run(list(enumerate(paths))):
                if error is not None:
                    scoring.skip(path, error)
                else:
                    scoring.add(images[index]["id"], poses)
                bar.update(1)
                bar.set_postfix(people=scoring.people, refresh=False)
    return scoring.result(images, start)


def _inputs(annotations, images_dir, boxes, limit, min_box_score):
    """The annotations, the images evaluated, their person boxes {image_id: (N, 5)} and their paths."""
    coco = load_annotations(annotations) if isinstance(annotations, (str, Path)) else annotations
    images = select_images(coco, images_dir, limit)
    table = person_boxes(coco, boxes, [im["id"] for im in images], min_box_score)
    return coco, images, table, [Path(images_dir) / im["file_name"] for im in images]


class _Scoring:
    """The COCO results of each image's poses as they come (rescored, OKS-NMS), then the metrics."""

    def __init__(self, coco, skeleton, input_size):
        self.coco, self.input_size = coco, input_size
        self.sigmas = _sigmas_for(skeleton, coco)
        self.category_id = keypoint_category(coco)["id"]
        self.predictions, self.skipped, self.people = [], [], 0

    def add(self, image_id, poses: Poses) -> None:
        self.predictions.extend(image_results(poses, image_id, self.sigmas, self.input_size, self.category_id))
        self.people += len(poses)

    def skip(self, path, error) -> None:
        log.warning("%s: skipped, its people count as missed", error)
        self.skipped.append(str(path))

    def result(self, images, start: float) -> EvalResult:
        metrics = evaluate_predictions(self.coco, self.predictions, [im["id"] for im in images], self.sigmas)
        return EvalResult(metrics, self.predictions, len(images), self.people, time.perf_counter() - start,
                          self.skipped)
