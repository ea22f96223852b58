"""`Poses`: the typed result of one image, arrays plus converters to JSON and COCO."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rapidpose.skeletons import COCO, Skeleton


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
