"""Pose tracking over frames: detect (every N frames), track, pose in batches across frames, smooth.

`track_frames(est, source)` yields `(Frame, Poses)` in frame order. The stages overlap: a reader
thread decodes frames ahead (sources.FrameSource); the next batch of frames is prepared while the
pose work of this one runs; the pose network sees all people of all frames of a batch in one run.
Tracking is sequential by nature and cheap. Where the frames are prepared:

- on a GPU (pose network there, RTMDet or no detector): the frames are decoded there by NVDEC where
  PyNvVideoCodec is installed (nvdec.py), else go to the GPU as FFmpeg decoded them (I420); they are
  converted there, RTMDet runs on the whole batch, and the pose crops are cut from those frames; the
  host only tracks and encodes (_DeviceStage).
- otherwise on the host: copies of the ONNX detector run frames in parallel (_HostStage).

Tracking with `--detect-every N`: on the frames between detections the tracker's Kalman filter
carries each confirmed person's box forward (tracking.Tracker.predict), and the pose network
refines the keypoints in those boxes.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from rapidpose.errors import InputError, check_choice
from rapidpose.io import chunked
from rapidpose.results import Poses
from rapidpose.video.smoothing import KeypointSmoother
from rapidpose.video.sources import Frame, FrameSource, open_source
from rapidpose.video.tracking import TRACKER_OPTIONS, Tracker

log = logging.getLogger("rapidpose")

TRACKERS = ("bytetrack", "sort", "none")
DECODERS = ("auto", "ffmpeg", "nvdec")  # auto: NVDEC where the frames go to a GPU and it can, else FFmpeg
# per detector: its host copies by (threshold, copies), its GPU version by device; loading them takes longer
# than tracking a short clip
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _HostStage:
    """Detection on the host: copies of an ONNX detector with a few threads each, in parallel
    (onnxruntime releases the GIL), or the given callable one frame at a time. Frames stay numpy."""

    def __init__(self, detector, threshold: float, workers: int | None):
        from rapidpose.detect import Detector, load_detector

        cores = os.cpu_count() or 1
        workers = workers or max(1, min(8, cores // 4))
        self._restore = None
        self.copies: list = []
        if detector is None:
            workers = 1
        elif isinstance(detector, Detector) and hasattr(detector, "path") and workers > 1:
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

    def submit(self, frames: list[Frame], wanted: set[int]) -> "_Pending":
        futures = {}
        for i, frame in enumerate(f for f in frames if f.index in wanted and self.copies):
            # the worker converts a decoded I420 frame to RGB (frame.image), off the main thread
            futures[frame.index] = self.pool.submit(lambda d, f: d(f.image), self.copies[i % len(self.copies)], frame)
        return _Pending(frames, lambda: {k: f.result() for k, f in futures.items()},
                        lambda: [f.image for f in frames], lambda poses: _draw_on_host(frames, poses))

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._restore is not None:
            detector, threshold = self._restore
            detector.threshold = threshold


class _DeviceStage:
    """Frames to the GPU and people found there, a batch ahead of the pose work: one worker thread
    with its own CUDA stream uploads a batch (I420 as decoded, half the bytes of RGB), converts it to
    RGB and runs the batched RTMDet; the pose crops are then cut from those frames on the GPU."""

    def __init__(self, est, threshold: float):
        import torch

        from rapidpose.detect.rtmdet_torch import BatchedRTMDet
        from rapidpose.topdown.gpu_ops import PinnedUploader

        self.torch, self.threshold = torch, threshold
        self.device = torch.device(est.runtime.device)
        self.detector = None
        if est.detector is not None:
            cached = _COPIES.setdefault(est.detector, {})
            if self.device not in cached:
                cached[self.device] = BatchedRTMDet(est.detector, self.device)
            self.detector = cached[self.device]
        on_cuda = self.device.type == "cuda"  # a CPU device runs the same steps in order (tests)
        self.stream = torch.cuda.Stream(self.device) if on_cuda else None
        self.pose_stream = torch.cuda.current_stream(self.device) if on_cuda else None  # where the pose work runs
        self.uploader = PinnedUploader(self.device)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="device")
        self.draw_stream = torch.cuda.Stream(self.device) if on_cuda else None
        self.drawer = ThreadPoolExecutor(1, thread_name_prefix="draw")

    def submit(self, frames: list[Frame], wanted: set[int]) -> "_Pending":
        future = self.pool.submit(self._work, frames, wanted)

        def images():
            images, uploaded = future.result()[1:3]
            if uploaded is not None:
                self.pose_stream.wait_event(uploaded)  # the pose work starts once the frames are there
            return images

        return _Pending(frames, lambda: future.result()[0], images, lambda poses: self._draw(future, frames, poses))

    def _draw(self, future, frames, poses) -> list:
        """The frames with their poses drawn, on a thread of its own (the tracking thread goes on): for
        each frame a callable that waits for its drawing (Frame.drawn calls it on first use)."""
        drawing = self.drawer.submit(self._draw_batch, future, frames, poses)
        return [functools.partial(_drawn, drawing, i) for i in range(len(frames))]

    def _draw_batch(self, future, frames, poses) -> list:
        """The I420 frames drawn on the GPU (gpu_draw) into the frames uploaded for the crops, then
        copied back in one piece; any others on the host."""
        torch = self.torch
        from rapidpose.draw.gpu import draw_poses_i420_batch

        drawn = _draw_on_host(frames, poses, [i for i, f in enumerate(frames) if f.yuv is None])
        _, _, uploaded, batches = future.result()
        with torch.cuda.stream(self.draw_stream) if self.draw_stream is not None else contextlib.nullcontext():
            if uploaded is not None:
                self.draw_stream.wait_event(uploaded)
            for members, batch in batches:
                draw_poses_i420_batch(batch, [poses[i] for i in members])
                if self.draw_stream is None:
                    done, host = None, batch
                else:  # pinned: a fast copy; torch's host allocator reuses the buffer once it is free
                    batch.record_stream(self.draw_stream)  # drawn here: not to be reused before that is done
                    host = torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True)
                    host.copy_(batch, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record()
                for i, frame in zip(members, host.numpy()):  # waited for by whoever asks first (the mp4's feeder)
                    drawn[i] = frame if done is None else functools.partial(_when_done, done, frame)
        return drawn

    def _work(self, frames, wanted):
        torch = self.torch
        from rapidpose.topdown.gpu_ops import i420_to_rgb

        images, found, uploaded, yuv = [None] * len(frames), {}, None, []
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            by_size: dict = {}
            for i, frame in enumerate(frames):  # one group in a video; image folders may mix sizes
                by_size.setdefault((frame.size, frame.yuv is not None), []).append(i)
            for (_, is_yuv), members in by_size.items():
                arrays = [frames[i].yuv if is_yuv else frames[i].image for i in members]
                if isinstance(arrays[0], torch.Tensor):  # decoded on this GPU (NVDEC)
                    for array in arrays:  # read here: not to be reused by the decoder's stream before that
                        array.record_stream(torch.cuda.current_stream(self.device))
                    batch = torch.stack(arrays)
                else:
                    batch = torch.stack(self.uploader(arrays))
                rgb = i420_to_rgb(batch) if is_yuv else batch.permute(0, 3, 1, 2).float()
                if is_yuv:
                    yuv.append((members, batch))  # drawn into, when asked to draw
                if self.stream is not None:
                    for used in (rgb, batch):  # used there too: not to be reused before that is done
                        used.record_stream(self.pose_stream)
                for i, image in zip(members, rgb):
                    images[i] = image.permute(1, 2, 0)  # (H, W, 3) views, as predict takes images
                asked = [k for k, i in enumerate(members) if frames[i].index in wanted]
                if self.detector is not None and asked:
                    for k, result in zip(asked, self.detector(rgb[asked], self.threshold)):
                        found[frames[members[k]].index] = result
            if self.stream is not None:
                uploaded = torch.cuda.Event()
                uploaded.record(self.stream)
        return found, images, uploaded, yuv

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.drawer.shutdown(wait=True)  # frames handed out already wait for their drawing


class _Pending:
    """A batch on its way: `detections()` {frame index: (boxes, scores)}, `images()` for the pose work,
    `draw(poses)` the frames with their poses drawn."""

    def __init__(self, frames, detections, images, draw):
        self.frames, self.detections, self.images, self.draw = frames, detections, images, draw


def _when_done(event, array):
    event.synchronize()
    return array


def _drawn(drawing, i):
    """Frame i of a batch whose drawing is under way (a Future of _draw_batch's list)."""
    drawn = drawing.result()[i]
    return drawn() if callable(drawn) else drawn


def _draw_on_host(frames, poses, which=None) -> list:
    """Frames (all, or those at positions `which`) drawn by cv2 into copies; None for the others."""
    from rapidpose.draw.cpu import draw_frame

    drawn = [None] * len(frames)
    for i in range(len(frames)) if which is None else which:
        frame = frames[i]
        drawn[i] = draw_frame(frame.yuv.copy() if frame.yuv is not None else frame.image, poses[i])
    return drawn


def track_frames(est, source, tracker: str = "bytetrack", detect_every: int = 1, smooth: bool = False,
                 frames_per_batch: int | None = None, rotate: int = 0, oks_weight: float = 0.0,
                 detector_workers: int | None = None, draw: bool = False, decoder: str = "auto",
                 tracker_options: dict | None = None) -> Iterator[tuple[Frame, Poses]]:
    """(Frame, Poses) for each frame of `source` (a FrameSource, or anything open_source takes).

    tracker: 'bytetrack', 'sort' or 'none'. detect_every: run the detector on every Nth frame
    (tracking carries the boxes between; needs a tracker). smooth: One-Euro filter per track.
    frames_per_batch: frames whose people share one network batch (default on GPUs 32 frames up to
    1080p, fewer for larger ones; 4 on CPUs; 1 for live sources, which then lag by no more than one
    frame). draw: each frame comes with `frame.drawn`, its poses drawn (draw.draw_poses_i420 /
    draw_poses): on the GPU where the frames are there (draws_on_device), else by cv2 on this thread.
    decoder: 'auto' decodes a video file on the GPU (NVDEC) where the frames go there and
    PyNvVideoCodec can decode it, else with FFmpeg on the CPU; 'ffmpeg' always on the CPU; 'nvdec' on
    the GPU or fail. tracker_options: settings of tracking.Tracker, by name (high_threshold 0.35,
    low_threshold 0.1, new_track_threshold 0.35, match_iou 0.2, max_age 30 frames, min_hits 2 by
    default); e.g. {"new_track_threshold": 0.5, "min_hits": 3} for fewer, surer tracks. With bytetrack
    the detector is asked for boxes down to low_threshold; a box below the detector's own threshold is
    kept only when it has a track id. Frames that cannot be read come with an empty Poses and
    `frame.error` set.
    """
    check_choice("tracker", tracker, TRACKERS)
    check_choice("decoder", decoder, DECODERS)
    if detect_every < 1:
        raise InputError(f"--detect-every must be at least 1; got {detect_every}")
    if detect_every > 1 and tracker == "none":
        raise InputError("--detect-every N > 1 needs a tracker to carry the boxes between detections: "
                         "use --track bytetrack or sort")
    tracks = _make_tracker(tracker, oks_weight, tracker_options)
    src = source if isinstance(source, FrameSource) else open_source(source, rotate=rotate)
    if frames_per_batch is None:
        frames_per_batch = 1 if src.live else (gpu_batch(src.size) if est.on_gpu else 4)
    smoother = KeypointSmoother() if smooth else None
    threshold = getattr(est.detector, "threshold", 0.3)
    # ByteTrack matches low-score detections to existing tracks: ask the detector for them too
    low = min(threshold, tracks.low_threshold) if tracker == "bytetrack" else threshold
    stage = _make_stage(est, low, detector_workers)
    last_score: dict[int, float] = {}
    try:
        _choose_decoder(src, stage, decoder)
        batches = chunked(src, max(int(frames_per_batch), 1))
        pending = _start(next(batches, None), stage, detect_every, tracks)
        while pending is not None:
            batch, work = pending
            pending = _start(next(batches, None), stage, detect_every, tracks)  # overlaps the pose work
            yield from _finish_batch(est, batch, work, tracks, smoother, threshold, last_score, oks_weight, draw)
    finally:
        src.close()
        stage.close()


def _make_tracker(tracker: str, oks_weight: float, options: dict | None) -> Tracker | None:
    """The Tracker for `tracker` with these settings (tracking.TRACKER_OPTIONS), or None for 'none'."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(TRACKER_OPTIONS))
    if unknown:
        raise InputError(f"unknown tracker option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}: "
                         f"use {', '.join(TRACKER_OPTIONS)} (oks_weight is an argument of its own)")
    if tracker == "none":
        if options:
            raise InputError(f"tracker options ({', '.join(sorted(options))}) need a tracker: use tracker "
                             "'bytetrack' or 'sort', or leave the options out")
        return None
    return Tracker(method=tracker, oks_weight=oks_weight, **options)


def gpu_batch(size) -> int:
    """Frames a batch on a GPU for frames of `size` (w, h): 32 up to 1080p (a batch's per-call costs
    spread over more frames: 16 -> 32 frames, 344 -> 360 and 322 -> 371 frames/s on an H100 with the
    mp4), fewer for larger frames, whose 32 would take 3 GB as float RGB at 4K."""
    w, h = size
    return int(np.clip(32 * 1920 * 1080 // max(int(w) * int(h), 1), 4, 32))


def draws_on_device(est) -> bool:
    """Whether track_frames brings the frames to the GPU (the pose network and the detector can both
    run there), where drawing them is nearly free."""
    from rapidpose.detect import RTMDet

    return est.on_gpu and (est.detector is None or type(est.detector) is RTMDet)


def _choose_decoder(src, stage, decoder: str) -> None:
    """NVDEC where the frames go to a CUDA GPU anyway and it can decode them (decoder 'auto' or
    'nvdec'), else FFmpeg, into page-locked memory when the frames go to a GPU."""
    on_cuda = isinstance(stage, _DeviceStage) and stage.stream is not None
    if decoder == "nvdec" and not on_cuda:
        raise InputError("--decoder nvdec decodes into the GPU that prepares the frames: that needs the pose model "
                         "on a CUDA device and RTMDet or no detector; use --decoder ffmpeg (or auto) here")
    if not on_cuda:
        return
    if decoder != "ffmpeg":
        why = src.decode_on_gpu(stage.device)
        if why is None:
            log.info("decoding %s on the GPU (NVDEC)", src.name)
            return
        if decoder == "nvdec":
            raise InputError(f"--decoder nvdec: '{src.name}' cannot be decoded on the GPU: {why}")
        log.info("decoding %s with FFmpeg on the CPU: %s", src.name, why)
    from rapidpose.topdown.gpu_ops import pinned_empty

    src.allocate = pinned_empty  # frames decoded straight into page-locked memory: one copy less


def _make_stage(est, threshold, detector_workers):
    if draws_on_device(est):
        return _DeviceStage(est, threshold)
    return _HostStage(est.detector, threshold, detector_workers)


def _start(batch, stage, detect_every, tracks):
    if batch is None:
        return None
    good = [f for f in batch if f.ok]
    wanted = {f.index for f in good if f.index % detect_every == 0 or tracks is None}
    return batch, stage.submit(good, wanted)


def _finish_batch(est, batch, work, tracks, smoother, threshold, last_score, oks_weight, draw):
    good, found = work.frames, work.detections()
    boxes, ids = [], []
    for frame in good:
        if frame.index in found:
            b, s = found[frame.index]
            t = tracks.update(b, s) if tracks is not None else None
            if t is not None:
                last_score.update(zip(t[t >= 0].tolist(), s[t >= 0].tolist()))
                keep = (t >= 0) | (s >= threshold)  # low-score boxes only as continuations of a track
                b, s, t = b[keep], s[keep], t[keep]
        elif tracks is not None and est.detector is not None:
            b, t = tracks.predict()
            s = np.array([last_score.get(int(i), 1.0) for i in t], np.float32)
        else:  # no detector: the whole frame is the person
            w, h = frame.size
            b, s = np.array([[0, 0, w, h]], np.float32), np.ones(1, np.float32)
            t = tracks.update(b, s) if tracks is not None else None
        boxes.append(np.concatenate([np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32)[:, None]], 1))
        ids.append(t)
    results = est.predict(work.images(), boxes) if good else []
    by_index = {}
    for frame, poses, t in zip(good, results, ids):
        if t is not None:
            poses.track_ids = t
            if smoother is not None and len(poses):
                poses.keypoints = smoother(t, poses.keypoints, frame.time).astype(np.float32)
        by_index[frame.index] = poses
    if draw and good:
        for frame, drawn in zip(good, work.draw([by_index[f.index] for f in good])):
            frame.drawn = drawn
    if tracks is not None and oks_weight > 0 and good:
        last = by_index[good[-1].index]
        tracks.correct(last.track_ids, keypoints=last.keypoints, keypoint_scores=last.keypoint_scores)
    for frame in batch:
        if not frame.ok:
            log.warning("frame %d skipped: %s", frame.index, frame.error)
        poses = by_index.get(frame.index)
        yield frame, poses if poses is not None else Poses.empty(est.skeleton)
