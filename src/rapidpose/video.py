"""Pose tracking over frames: detect (every N frames), track, pose in batches across frames, smooth.

`track_frames(est, source)` yields `(Frame, Poses)` in frame order. The stages overlap: a reader
thread decodes frames ahead (sources.FrameSource); person detection of a batch of frames runs on
a few detector copies in parallel while the previous batch's pose work runs; the pose network sees
all people of all frames of a batch in one run. Tracking is sequential by nature and cheap.

Tracking with `--detect-every N`: on the frames between detections the tracker's Kalman filter
carries each confirmed person's box forward (tracking.Tracker.predict), and the pose network
refines the keypoints in those boxes.
"""
from __future__ import annotations

import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from .errors import InputError
from .io import chunked
from .results import Poses
from .smoothing import KeypointSmoother
from .sources import Frame, FrameSource, open_source
from .tracking import Tracker

log = logging.getLogger("rapidpose")

TRACKERS = ("bytetrack", "sort", "none")
_LOW_SCORE = 0.1  # ByteTrack's second stage looks at detections down to this score
# detector copies by detector and (threshold, copies): loading them takes longer than tracking a short clip
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Detectors:
    """Runs the estimator's detector on many frames at once: copies of an ONNX detector with a few
    threads each, in parallel (onnxruntime releases the GIL), or the given callable one by one."""

    def __init__(self, detector, threshold: float, workers: int | None):
        from .detect import Detector, load_detector

        cores = os.cpu_count() or 1
        workers = workers or max(1, min(8, cores // 4))
        self._restore = None
        if isinstance(detector, Detector) and hasattr(detector, "path") and workers > 1:
            threads = max(1, cores // workers)
            cached = _COPIES.setdefault(detector, {})
            if (threshold, workers) not in cached:
                cached[(threshold, workers)] = [load_detector(detector.path, threshold=threshold, threads=threads)
                                                for _ in range(workers)]
            self.copies = cached[(threshold, workers)]
        else:
            if isinstance(detector, Detector):  # lowered for this run only
                self._restore = (detector, detector.threshold)
                detector.threshold = threshold
            self.copies, workers = [detector], 1
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="detect")

    def submit(self, images: list[np.ndarray]):
        """Futures of (boxes, scores), one per image, spread over the copies."""
        return [self.pool.submit(self.copies[i % len(self.copies)], image) for i, image in enumerate(images)]

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._restore is not None:
            detector, threshold = self._restore
            detector.threshold = threshold


def track_frames(est, source, tracker: str = "bytetrack", detect_every: int = 1, smooth: bool = False,
                 frames_per_batch: int | None = None, rotate: int = 0, oks_weight: float = 0.0,
                 detector_workers: int | None = None) -> Iterator[tuple[Frame, Poses]]:
    """(Frame, Poses) for each frame of `source` (a FrameSource, or anything open_source takes).

    tracker: 'bytetrack', 'sort' or 'none'. detect_every: run the detector on every Nth frame
    (tracking carries the boxes between; needs a tracker). smooth: One-Euro filter per track.
    frames_per_batch: frames whose people share one network batch (default 16 on GPUs, 4 on CPUs,
    1 for live sources, which then lag by no more than one frame). Frames that cannot be read come
    with an empty Poses and `frame.error` set.
    """
    if tracker not in TRACKERS:
        raise InputError(f"unknown tracker '{tracker}': use one of {', '.join(TRACKERS)}")
    if detect_every < 1:
        raise InputError(f"--detect-every must be at least 1; got {detect_every}")
    if detect_every > 1 and tracker == "none":
        raise InputError("--detect-every N > 1 needs a tracker to carry the boxes between detections: "
                         "use --track bytetrack or sort")
    src = source if isinstance(source, FrameSource) else open_source(source, rotate=rotate)
    if frames_per_batch is None:
        frames_per_batch = 1 if src.live else (16 if est.on_gpu else 4)
    tracks = None if tracker == "none" else Tracker(method=tracker, oks_weight=oks_weight)
    smoother = KeypointSmoother() if smooth else None
    threshold = getattr(est.detector, "threshold", 0.3)
    detectors = None
    if est.detector is not None:
        # ByteTrack matches low-score detections to existing tracks: ask the detector for them too
        low = min(threshold, _LOW_SCORE) if tracker == "bytetrack" else threshold
        detectors = _Detectors(est.detector, low, detector_workers)
    last_score: dict[int, float] = {}
    try:
        batches = chunked(src, max(int(frames_per_batch), 1))
        pending = _start_detection(next(batches, None), detectors, detect_every, tracks)
        while pending is not None:
            batch, futures = pending
            pending = _start_detection(next(batches, None), detectors, detect_every, tracks)  # overlaps the pose work
            yield from _finish_batch(est, batch, futures, tracks, smoother, threshold, last_score, oks_weight)
    finally:
        src.close()
        if detectors is not None:
            detectors.close()


def _start_detection(batch, detectors, detect_every, tracks):
    if batch is None:
        return None
    futures = {}
    if detectors is not None:
        wanted = [f for f in batch if f.image is not None and (f.index % detect_every == 0 or tracks is None)]
        futures = dict(zip((f.index for f in wanted), detectors.submit([f.image for f in wanted])))
    return batch, futures


def _finish_batch(est, batch, futures, tracks, smoother, threshold, last_score, oks_weight):
    good = [f for f in batch if f.image is not None]
    boxes, ids = [], []
    for frame in good:
        if frame.index in futures:
            b, s = futures[frame.index].result()
            t = tracks.update(b, s) if tracks is not None else None
            if t is not None:
                last_score.update(zip(t[t >= 0].tolist(), s[t >= 0].tolist()))
                keep = (t >= 0) | (s >= threshold)  # low-score boxes only as continuations of a track
                b, s, t = b[keep], s[keep], t[keep]
        elif tracks is not None and est.detector is not None:
            b, t = tracks.predict()
            s = np.array([last_score.get(int(i), 1.0) for i in t], np.float32)
        else:  # no detector: the whole frame is the person
            h, w = frame.image.shape[:2]
            b, s = np.array([[0, 0, w, h]], np.float32), np.ones(1, np.float32)
            t = tracks.update(b, s) if tracks is not None else None
        boxes.append(np.concatenate([np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32)[:, None]], 1))
        ids.append(t)
    results = est.predict([f.image for f in good], boxes) if good else []
    by_index = {}
    for frame, poses, t in zip(good, results, ids):
        if t is not None:
            poses.track_ids = t
            if smoother is not None and len(poses):
                poses.keypoints = smoother(t, poses.keypoints, frame.time).astype(np.float32)
        by_index[frame.index] = poses
    if tracks is not None and oks_weight > 0 and good:
        last = by_index[good[-1].index]
        tracks.correct(last.track_ids, keypoints=last.keypoints, keypoint_scores=last.keypoint_scores)
    for frame in batch:
        if frame.image is None:
            log.warning("frame %d skipped: %s", frame.index, frame.error)
        yield frame, by_index.get(frame.index, Poses.empty(est.skeleton))
