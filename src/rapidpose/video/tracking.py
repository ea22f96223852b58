"""Multi-person tracking by detection: ByteTrack (Zhang et al. 2022) or SORT, on numpy and scipy.

Every call of `Tracker.update` (a frame with detections) or `Tracker.predict` (a frame without)
moves every track on by exactly one frame, so a detector that runs only every N frames keeps the
motion model in step with the video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from rapidpose.errors import InputError
from rapidpose.topdown.geometry import box_iou
from rapidpose.skeletons import COCO

__all__ = ["Tracker", "TRACKER_OPTIONS", "tracker_defaults", "count_identity_switches", "box_iou"]

# ByteTrack's (and DeepSORT's) noise model: standard deviations proportional to the box height
_POS_STD = 1.0 / 20
_VEL_STD = 1.0 / 160
_LOW_MATCH_IOU = 0.5  # ByteTrack's second stage (its 0.5 on 1 - IoU): a low-score box must overlap well
_VISIBLE = 0.3  # keypoint score above which a keypoint takes part in OKS
_UNIFORM_SIGMA = 0.07  # OKS sigma for keypoint sets other than COCO's 17
_FORBIDDEN = 1e6  # assignment cost of a pair below the IoU gate (finite, as linear_sum_assignment needs)

_MOTION = np.eye(8)
_MOTION[:4, 4:] = np.eye(4)  # constant velocity, one frame per step


# the Tracker's settings that track_frames / PoseEstimator.track take as `tracker_options` (the method and
# oks_weight are arguments of their own there)
TRACKER_OPTIONS = ("high_threshold", "low_threshold", "new_track_threshold", "match_iou", "max_age", "min_hits")


def tracker_defaults() -> dict:
    """{option: default} of TRACKER_OPTIONS, read from Tracker's signature (one place for the numbers)."""
    import inspect

    params = inspect.signature(Tracker.__init__).parameters
    return {name: params[name].default for name in TRACKER_OPTIONS}


def _diag(std: np.ndarray) -> np.ndarray:
    """(M, d) standard deviations -> (M, d, d) diagonal covariances."""
    out = np.zeros(std.shape + std.shape[-1:])
    i = np.arange(std.shape[-1])
    out[:, i, i] = std ** 2
    return out


def _to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) -> (centre x, centre y, width / height, height): the filter's measurement."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def _to_xyxy(xyah: np.ndarray) -> np.ndarray:
    cx, cy, aspect, h = xyah[:, :4].T
    w = aspect * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _kalman_initiate(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New states from first measurements (M, 4): zero velocity, uncertain by a fraction of the height."""
    h, small = z[:, 3], np.ones(len(z))
    std = np.stack([2 * _POS_STD * h, 2 * _POS_STD * h, 1e-2 * small, 2 * _POS_STD * h,
                    10 * _VEL_STD * h, 10 * _VEL_STD * h, 1e-5 * small, 10 * _VEL_STD * h], axis=1)
    return np.concatenate([z, np.zeros_like(z)], axis=1), _diag(std)


def _kalman_predict(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead for M states at once."""
    h, small = mean[:, 3], np.ones(len(mean))
    std = np.stack([_POS_STD * h, _POS_STD * h, 1e-2 * small, _POS_STD * h,
                    _VEL_STD * h, _VEL_STD * h, 1e-5 * small, _VEL_STD * h], axis=1)
    return mean @ _MOTION.T, _MOTION @ cov @ _MOTION.T + _diag(std)


def _kalman_update(mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct M states with their measurements z (M, 4) in (cx, cy, aspect, h)."""
    h = mean[:, 3]
    r = np.stack([_POS_STD * h, _POS_STD * h, 1e-1 * np.ones(len(h)), _POS_STD * h], axis=1)
    s = cov[:, :4, :4] + _diag(r)
    gain = np.linalg.solve(s, cov[:, :4, :]).transpose(0, 2, 1)  # P H^T S^-1, with P and S symmetric
    mean = mean + (gain @ (z - mean[:, :4])[..., None])[..., 0]
    return mean, cov - gain @ s @ gain.transpose(0, 2, 1)


def count_identity_switches(gt_ids_per_frame: Sequence, predicted_ids_per_frame: Sequence) -> int:
    """MOT-style identity switches between ground truth and a tracker's ids.

    Each frame gives two aligned arrays: the ground-truth id of each detection and the id the tracker
    gave it (-1 = none, which is a miss, not a switch). A switch is a ground-truth object whose
    predicted id differs from the one it last had.
    """
    if len(gt_ids_per_frame) != len(predicted_ids_per_frame):
        raise InputError(
            f"count_identity_switches got {len(gt_ids_per_frame)} frames of ground truth and "
            f"{len(predicted_ids_per_frame)} of predictions: give one entry per frame in both"
        )
    last: dict[int, int] = {}
    switches = 0
    for frame, (gt, pred) in enumerate(zip(gt_ids_per_frame, predicted_ids_per_frame)):
        gt, pred = np.asarray(gt).reshape(-1), np.asarray(pred).reshape(-1)
        if len(gt) != len(pred):
            raise InputError(
                f"frame {frame}: {len(gt)} ground-truth ids but {len(pred)} predicted ids: "
                "they must be aligned, one per detection"
            )
        for g, p in zip(gt.tolist(), pred.tolist()):
            if p < 0:
                continue
            if g in last and last[g] != p:
                switches += 1
            last[g] = p
    return switches


def _array(value, name: str, shape: tuple, hint: str) -> np.ndarray:
    """value as a finite float64 array of this shape (None: any size), or an InputError that names it."""
    names = ["N" if i == 0 and s is None else "K" if s is None else str(s) for i, s in enumerate(shape)]
    wanted = f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a numeric array of shape {wanted}: {hint}") from exc
    empty = tuple(0 if s is None else s for s in shape)
    if arr.size == 0 and np.prod(empty) == 0:
        arr = arr.reshape(empty)
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        raise InputError(f"{name} must have shape {wanted}, {hint}; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinity: drop those people before tracking")
    return arr


@dataclass(eq=False)  # compared and hashed by identity
class _Track:
    mean: np.ndarray  # (8,) cx, cy, aspect, h and their velocities per frame
    cov: np.ndarray  # (8, 8)
    id: int = 0  # 0 while tentative (not yet matched min_hits times)
    hits: int = 1  # detections matched, the first included
    missed: int = 0  # frames since the last matched detection
    lost: bool = False  # unmatched at the last detector frame
    keypoints: np.ndarray | None = None  # (K, 2) relative to the centre of their box, for OKS
    keypoint_scores: np.ndarray | None = None  # (K,)


class Tracker:
    """Give each detected person an id that stays with them from frame to frame.

    ByteTrack: high-score detections (>= high_threshold) are matched to all tracks, then the
    low-score ones (>= low_threshold) to the tracks still unmatched that were seen at the last
    detector frame, so a person whose score dips (occlusion, blur) keeps their id. "sort" skips
    that second stage. Matching is Hungarian on 1 - IoU between each track's Kalman-predicted box and
    the detections; a pair needs IoU >= match_iou (low-score stage: 0.5, as in ByteTrack). With
    oks_weight w > 0 and keypoints known for both, the cost is (1 - w)(1 - IoU) + w (1 - OKS): the
    IoU gate still decides which pairs are possible, the keypoints decide between overlapping people.

    An unmatched high-score detection that also reaches new_track_threshold starts a track; it gets an
    id once it has been matched min_hits times in a row (at once on the first frame), so a one-frame
    false positive costs no id. Ids start at 1 and are not reused until reset(). A track that goes
    more than max_age frames without a detection is dropped (ByteTrack's track buffer).

    The defaults suit small, fast person detectors such as RTMDet-nano, whose scores for real people
    often stay between 0.3 and 0.6: ByteTrack's own 0.5 / 0.6 (high / new track, tuned for YOLOX-X on
    MOT17) left a third of such people without an id. 0.35 for both, a margin above the usual
    detector threshold of 0.3, gives most people an id within two frames; boxes between 0.3 and 0.35
    (often a detector's second box on one person) only continue tracks, in the second stage.

    With a detector every N frames: call `update` on detector frames and `predict` on the others
    (each advances the motion model one frame); `correct` feeds back the pose network's boxes and
    keypoints without advancing it.
    """

    def __init__(
        self,
        method: str = "bytetrack",
        high_threshold: float = 0.35,
        low_threshold: float = 0.1,
        new_track_threshold: float = 0.35,
        match_iou: float = 0.2,
        max_age: int = 30,
        min_hits: int = 2,
        oks_weight: float = 0.0,
    ):
        if method not in ("bytetrack", "sort"):
            raise InputError(f"unknown tracking method {method!r}: use 'bytetrack' or 'sort'")
        if not 0.0 <= low_threshold <= high_threshold <= 1.0:
            raise InputError(
                f"need 0 <= low_threshold <= high_threshold <= 1; got low_threshold={low_threshold}, "
                f"high_threshold={high_threshold}"
            )
        for name, value in (("new_track_threshold", new_track_threshold), ("match_iou", match_iou),
                            ("oks_weight", oks_weight)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must lie in [0, 1]; got {value}")
        if max_age < 0 or min_hits < 1:
            raise InputError(
                f"need max_age >= 0 and min_hits >= 1 (frames); got max_age={max_age}, min_hits={min_hits}"
            )
        self.method = method
        self.high_threshold, self.low_threshold = float(high_threshold), float(low_threshold)
        self.new_track_threshold, self.match_iou = float(new_track_threshold), float(match_iou)
        self.max_age, self.min_hits, self.oks_weight = int(max_age), int(min_hits), float(oks_weight)
        self.reset()

    def reset(self) -> None:
        """Forget every track and start ids from 1 again (a new video)."""
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._started = False  # whether a detector frame has been seen
        self._num_keypoints: int | None = None

    def update(self, boxes, scores, keypoints=None, keypoint_scores=None) -> np.ndarray:
        """Track one frame of detections; returns each detection's track id (N,) int64, -1 for none.

        boxes (N, 4) x1, y1, x2, y2 in pixels; scores (N,); keypoints (N, K, 2) and keypoint_scores
        (N, K) are optional, for OKS matching. A box without area gets -1.
        """
        boxes = _array(boxes, "boxes", (None, 4), "one x1, y1, x2, y2 row per person")
        n = len(boxes)
        scores = _array(scores, "scores", (n,), "one detection score per box")
        keypoints, keypoint_scores = self._check_keypoints(n, keypoints, keypoint_scores)
        self._step()
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        high = np.flatnonzero(valid & (scores >= self.high_threshold))
        low = np.flatnonzero(valid & (scores >= self.low_threshold) & (scores < self.high_threshold))

        oks = (keypoints, keypoint_scores) if keypoints is not None and self.oks_weight > 0 else None
        confirmed = [t for t in self._tracks if t.id]
        pairs, unmatched, high = self._associate(confirmed, high, boxes, self.match_iou, oks)
        more, _, high = self._associate([t for t in self._tracks if not t.id], high, boxes, self.match_iou, oks)
        pairs += more
        if self.method == "bytetrack":
            pairs += self._associate([t for t in unmatched if not t.lost], low, boxes, _LOW_MATCH_IOU, None)[0]

        matched = {t for t, _ in pairs}
        self._correct([t for t, _ in pairs], boxes[[d for _, d in pairs]])
        for track, d in pairs:
            track.hits, track.missed, track.lost = track.hits + 1, 0, False
            self._remember(track, keypoints, keypoint_scores, d, boxes[d])
        for track in confirmed:
            track.lost = track not in matched
        self._tracks = [t for t in self._tracks if t.id or t in matched]  # a tentative track must not miss

        fresh = [d for d in high.tolist() if scores[d] >= self.new_track_threshold]
        if fresh:
            for d, mean, cov in zip(fresh, *_kalman_initiate(_to_xyah(boxes[fresh]))):
                track = _Track(mean, cov)
                self._remember(track, keypoints, keypoint_scores, d, boxes[d])
                self._tracks.append(track)
                pairs.append((track, d))

        ids = np.full(n, -1, np.int64)
        for track, d in pairs:
            if not track.id and (track.hits >= self.min_hits or not self._started):
                track.id, self._next_id = self._next_id, self._next_id + 1
            ids[d] = track.id or -1
        self._started = True
        return ids

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """A frame without detections: move every track one frame on and return the boxes (M, 4)
        float32 and ids (M,) int64 of the confirmed tracks seen at the last detector frame.

        Only a detector frame can mark a track lost, so predicting never ends a track by itself.
        """
        self._step()
        shown = [t for t in self._tracks if t.id and not t.lost]
        boxes = _to_xyxy(np.stack([t.mean for t in shown])) if shown else np.zeros((0, 4))
        return boxes.astype(np.float32), np.array([t.id for t in shown], np.int64)

    def correct(self, track_ids, boxes=None, keypoints=None, keypoint_scores=None) -> None:
        """Feed back what the pose network found for tracked people in this frame, without a time step.

        boxes (M, 4), e.g. refined from the keypoints on a predicted frame, correct the tracks' Kalman
        states (the motion model follows people who change speed between detector frames); this does
        not count as a detection, so a person the detector no longer finds still expires. keypoints
        (M, K, 2) and keypoint_scores (M, K) are kept for OKS matching at the next update. Ids that
        name no track (such as -1) are skipped.
        """
        ids = np.asarray(track_ids).reshape(-1)
        if len(ids) and not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"track_ids must be integers from update() or predict(); got dtype {ids.dtype}")
        if boxes is not None:
            boxes = _array(boxes, "boxes", (len(ids), 4), "one x1, y1, x2, y2 row per track id")
        keypoints, keypoint_scores = self._check_keypoints(len(ids), keypoints, keypoint_scores)
        by_id = {t.id: t for t in self._tracks if t.id}
        chosen = [(by_id[i], row) for row, i in enumerate(ids.tolist()) if i in by_id]
        if boxes is not None:
            usable = [(t, row) for t, row in chosen
                      if boxes[row, 2] > boxes[row, 0] and boxes[row, 3] > boxes[row, 1]]
            self._correct([t for t, _ in usable], boxes[[row for _, row in usable]])
        if keypoints is not None:
            for track, row in chosen:
                box = _to_xyxy(track.mean[None])[0] if boxes is None else boxes[row]
                self._remember(track, keypoints, keypoint_scores, row, box)

    def _check_keypoints(self, n: int, keypoints, keypoint_scores):
        if keypoints is None:
            if keypoint_scores is not None:
                raise InputError("keypoint_scores were given without keypoints: pass both or neither")
            return None, None
        keypoints = _array(keypoints, "keypoints", (n, None, 2), "(x, y) per keypoint per person")
        k = keypoints.shape[1]
        if keypoint_scores is not None:
            keypoint_scores = _array(keypoint_scores, "keypoint_scores", (n, k), "one score per keypoint")
        if n and self._num_keypoints not in (None, k):
            raise InputError(
                f"keypoints have {k} per person but this tracker has seen {self._num_keypoints}: "
                "use one tracker per skeleton, or call reset()"
            )
        if n:
            self._num_keypoints = k
        return keypoints, keypoint_scores

    def _step(self) -> None:
        """One frame passes: drop tracks missing too long, predict the rest."""
        self._tracks = [t for t in self._tracks if not (t.lost and t.missed > self.max_age)]
        if not self._tracks:
            return
        mean = np.stack([t.mean for t in self._tracks])
        mean[[t.lost for t in self._tracks], 7] = 0.0  # as ByteTrack: unseen boxes keep their size
        mean, cov = _kalman_predict(mean, np.stack([t.cov for t in self._tracks]))
        for track, m, c in zip(self._tracks, mean, cov):
            track.mean, track.cov, track.missed = m, c, track.missed + 1

    def _correct(self, tracks: list[_Track], boxes: np.ndarray) -> None:
        if not tracks:
            return
        mean, cov = _kalman_update(np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]),
                                   _to_xyah(boxes))
        for track, m, c in zip(tracks, mean, cov):
            track.mean, track.cov = m, c

    @staticmethod
    def _remember(track: _Track, keypoints, keypoint_scores, row: int, box: np.ndarray) -> None:
        """Keep a person's keypoints relative to their box centre (None when not given)."""
        if keypoints is None:
            track.keypoints = track.keypoint_scores = None
            return
        track.keypoints = keypoints[row] - (box[:2] + box[2:]) / 2
        track.keypoint_scores = np.ones(len(keypoints[row])) if keypoint_scores is None else keypoint_scores[row]

    def _associate(self, tracks: list[_Track], dets: np.ndarray, boxes: np.ndarray, min_iou: float, oks):
        """Hungarian matching of tracks to the detections dets (indices into boxes).

        Returns the (track, detection) pairs, the unmatched tracks and the unmatched detections.
        """
        if not tracks or not len(dets):
            return [], list(tracks), dets
        predicted = _to_xyxy(np.stack([t.mean for t in tracks]))
        iou = box_iou(predicted, boxes[dets])
        cost = 1.0 - iou
        if oks is not None:
            similarity = self._oks(tracks, predicted, boxes[dets], oks[0][dets],
                                   None if oks[1] is None else oks[1][dets])
            similarity = np.where(np.isnan(similarity), iou, similarity)  # no keypoints: neutral
            cost = (1 - self.oks_weight) * cost + self.oks_weight * (1 - similarity)
        rows, cols = linear_sum_assignment(np.where(iou >= min_iou, cost, _FORBIDDEN))
        keep = iou[rows, cols] >= min_iou
        rows, cols = rows[keep], cols[keep]
        taken = set(rows.tolist())
        return ([(tracks[r], int(dets[c])) for r, c in zip(rows, cols)],
                [t for i, t in enumerate(tracks) if i not in taken], np.delete(dets, cols))

    @staticmethod
    def _oks(tracks, predicted, det_boxes, det_keypoints, det_scores) -> np.ndarray:
        """COCO object keypoint similarity (M, N) of each track's last keypoints, moved to its predicted
        box, with each detection's; scale = detection box area. NaN where no keypoint is seen by both."""
        k = det_keypoints.shape[1]
        sigmas = np.asarray(COCO.sigmas) if k == 17 else np.full(k, _UNIFORM_SIGMA)
        centres = (predicted[:, :2] + predicted[:, 2:]) / 2
        track_kps = np.zeros((len(tracks), k, 2))
        track_seen = np.zeros((len(tracks), k), bool)
        for i, t in enumerate(tracks):
            if t.keypoints is not None:
                track_kps[i] = t.keypoints + centres[i]
                track_seen[i] = t.keypoint_scores > _VISIBLE
        det_seen = np.ones(det_keypoints.shape[:2], bool) if det_scores is None else det_scores > _VISIBLE
        seen = track_seen[:, None] & det_seen[None]
        d2 = ((track_kps[:, None] - det_keypoints[None]) ** 2).sum(-1)
        area = np.prod(det_boxes[:, 2:] - det_boxes[:, :2], axis=1)
        similarity = np.exp(-d2 / (2 * area[None, :, None] * (2 * sigmas) ** 2)) * seen
        count = seen.sum(-1)
        return np.where(count > 0, similarity.sum(-1) / np.maximum(count, 1), np.nan)
