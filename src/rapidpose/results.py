"""`Poses`: the typed result of one image, arrays plus converters to JSON and COCO."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rapidpose.skeletons import COCO, Skeleton, get_skeleton, skeleton_for


@dataclass
class Poses:
    """People found in one image. Keypoints are (x, y) in image pixels; boxes are (x1, y1, x2, y2)."""

    boxes: np.ndarray  # (N, 4) float32
    box_scores: np.ndarray  # (N,) float32
    keypoints: np.ndarray  # (N, K, 2) float32
    keypoint_scores: np.ndarray  # (N, K) float32
    skeleton: Skeleton = field(default=COCO)
    track_ids: np.ndarray | None = None  # (N,) int64, set by trackers
    heatmaps: np.ndarray | None = None  # (N, K, h, w) float32, kept only when asked for

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        k = self.skeleton.num_keypoints
        self.box_scores = np.asarray(self.box_scores, np.float32).reshape(n)
        self.keypoints = np.asarray(self.keypoints, np.float32).reshape(n, k, 2)
        self.keypoint_scores = np.asarray(self.keypoint_scores, np.float32).reshape(n, k)
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, np.int64).reshape(n)

    @classmethod
    def empty(cls, skeleton: Skeleton = COCO) -> "Poses":
        k = skeleton.num_keypoints
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, k, 2)), np.zeros((0, k)), skeleton)

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return self.skeleton.keypoints

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index) -> "Poses":
        """Select people by an int, a slice, an index array or a boolean mask."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return replace(
            self,
            boxes=self.boxes[index],
            box_scores=self.box_scores[index],
            keypoints=self.keypoints[index],
            keypoint_scores=self.keypoint_scores[index],
            track_ids=None if self.track_ids is None else self.track_ids[index],
            heatmaps=None if self.heatmaps is None else self.heatmaps[index],
        )

    def person_scores(self, keypoint_threshold: float = 0.2) -> np.ndarray:
        """The official COCO rescoring: box score x mean of the keypoint scores above the threshold."""
        above = self.keypoint_scores > keypoint_threshold
        count = above.sum(axis=1)
        mean = np.where(count > 0, (self.keypoint_scores * above).sum(axis=1) / np.maximum(count, 1), 0.0)
        return (mean * self.box_scores).astype(np.float32)

    def to_list(self) -> list[dict]:
        """One dict per person: box, box_score, keypoints as [[x, y, score], ...] (and track_id)."""
        people = []
        kps = np.concatenate([self.keypoints, self.keypoint_scores[..., None]], axis=-1)
        for i in range(len(self)):
            person = {
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "box_score": round(float(self.box_scores[i]), 4),
                "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)] for x, y, s in kps[i]],
            }
            if self.track_ids is not None:
                person["track_id"] = int(self.track_ids[i])
            people.append(person)
        return people

    def to_coco(self, image_id: int, category_id: int = 1) -> list[dict]:
        """COCO keypoint results: flat [x, y, v, ...] keypoints, bbox as xywh, rescored person score."""
        scores = self.person_scores()
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            flat = np.concatenate([self.keypoints[i], self.keypoint_scores[i, :, None]], axis=1).ravel()
            out.append({
                "image_id": int(image_id),
                "category_id": int(category_id),
                "keypoints": [round(float(v), 3) for v in flat],
                "score": float(scores[i]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
            })
        return out

    # --- supervision (roboflow/supervision) interop: optional, imported only here ---

    def to_supervision(self, class_id: int = 0):
        """An `sv.KeyPoints`: xy (N, K, 2), keypoint_confidence (N, K), detection_confidence (the box
        scores, N), class_id (N, all `class_id`: 0, person), and in `data` the boxes ('xyxy', N x 4)
        and, when tracked, 'tracker_id' (N). Draw it with sv.EdgeAnnotator(edges=
        poses.supervision_edges()) and sv.VertexAnnotator. Needs `pip install supervision`."""
        sv = _supervision()
        n = len(self)
        data = {"xyxy": self.boxes.copy()}
        if self.track_ids is not None:
            data["tracker_id"] = self.track_ids.copy()
        xy, ids = self.keypoints.copy(), np.full(n, class_id, np.int64)
        if not hasattr(sv.KeyPoints, "keypoint_confidence"):  # supervision < 0.29: no box scores
            return sv.KeyPoints(xy=xy, class_id=ids, confidence=self.keypoint_scores.copy(),
                                data={**data, "detection_confidence": self.box_scores.copy()})
        return sv.KeyPoints(xy=xy, class_id=ids, keypoint_confidence=self.keypoint_scores.copy(),
                            detection_confidence=self.box_scores.copy(), data=data)

    def to_supervision_detections(self, class_id: int = 0):
        """An `sv.Detections` of the people: xyxy (the boxes), confidence (box scores), class_id (all
        `class_id`: 0, person) and tracker_id when tracked. Needs `pip install supervision`."""
        sv = _supervision()
        return sv.Detections(xyxy=self.boxes.copy(), confidence=self.box_scores.copy(),
                             class_id=np.full(len(self), class_id, np.int64),
                             tracker_id=None if self.track_ids is None else self.track_ids.copy())

    def supervision_edges(self) -> list[tuple[int, int]]:
        """This keypoint set's skeleton edges as supervision numbers them (from 1), for
        sv.EdgeAnnotator(edges=...): its own look-up by keypoint count knows only some sets."""
        return [(a + 1, b + 1) for a, b in self.skeleton.edges]

    @classmethod
    def from_supervision(cls, keypoints, detections=None, skeleton: "Skeleton | str | None" = None) -> "Poses":
        """Poses from an `sv.KeyPoints` (and optionally the `sv.Detections` of the same people, in
        the same order). Boxes: detections.xyxy, else keypoints.data['xyxy'] (as to_supervision
        writes it), else each person's keypoints' extent; box scores: detections.confidence, else
        keypoints.detection_confidence, else 1; track ids: detections.tracker_id, else
        keypoints.data['tracker_id']. skeleton: a Skeleton or its name ('coco', ...); by default the
        usual keypoint set of that many keypoints."""
        from rapidpose.errors import InputError

        if isinstance(skeleton, str):
            try:
                skeleton = get_skeleton(skeleton)
            except KeyError as exc:
                raise InputError(exc.args[0]) from None
        xy = np.asarray(keypoints.xy, np.float32)
        if xy.ndim != 3 or xy.shape[-1] != 2:
            raise InputError(f"keypoints.xy has shape {xy.shape}: expected (N, K, 2)")
        n, k = xy.shape[:2]
        if n == 0 and k == 0:  # sv.KeyPoints.empty() has no keypoint axis
            k = (skeleton or COCO).num_keypoints
            xy = np.zeros((0, k, 2), np.float32)
        skeleton = skeleton_for(k) if skeleton is None else skeleton
        if skeleton.num_keypoints != k:
            raise InputError(f"the keypoints have {k} points each but keypoint set '{skeleton.name}' has "
                             f"{skeleton.num_keypoints}: pass the matching skeleton=")
        if detections is not None and len(detections) != n:
            raise InputError(f"{len(detections)} detections for {n} keypoint sets: give the detections "
                             f"of the same people, in the same order")
        data = getattr(keypoints, "data", None) or {}
        scores = _first(getattr(keypoints, "keypoint_confidence", None), _old_confidence(keypoints))
        scores = np.ones((n, k), np.float32) if scores is None else scores
        boxes = _first(None if detections is None else detections.xyxy, data.get("xyxy"))
        boxes = _keypoint_extent(xy) if boxes is None else boxes
        box_scores = _first(None if detections is None else detections.confidence,
                            getattr(keypoints, "detection_confidence", None), data.get("detection_confidence"))
        box_scores = np.ones(n, np.float32) if box_scores is None else box_scores
        track_ids = _first(None if detections is None else detections.tracker_id, data.get("tracker_id"))
        return cls(boxes, box_scores, xy, scores, skeleton, track_ids=track_ids)


def _supervision():
    try:
        import supervision
    except ImportError as exc:
        from rapidpose.errors import MissingDependencyError

        raise MissingDependencyError("converting to supervision's KeyPoints / Detections needs the "
                                     "supervision package: pip install 'supervision>=0.30'") from exc
    return supervision


def _first(*values):
    return next((v for v in values if v is not None), None)


def _old_confidence(keypoints):
    """supervision before 0.29 kept keypoint scores in `confidence` (later a deprecated alias)."""
    if hasattr(type(keypoints), "keypoint_confidence") or "keypoint_confidence" in getattr(keypoints, "__dict__", {}):
        return None
    return getattr(keypoints, "confidence", None)


def _keypoint_extent(xy: np.ndarray) -> np.ndarray:
    """Each person's box around their finite keypoints ([0, 0] counts as missing, as in supervision)."""
    valid = np.isfinite(xy).all(-1) & ~(xy == 0).all(-1)
    lo = np.where(valid[..., None], xy, np.inf).min(1)
    hi = np.where(valid[..., None], xy, -np.inf).max(1)
    boxes = np.concatenate([lo, hi], axis=1)
    boxes[~valid.any(1)] = 0
    return boxes
