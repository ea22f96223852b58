"""Photos through the top-down path as a pipeline: read -> detect -> pose, the stages overlapped.

    for result in predict_photos(est, paths):
        result.path, result.poses          # in input order; result.error for a file that failed

Three stages run at once, each a batch of `images_per_batch` photos apart:

- reading: where the network runs on a GPU, worker processes decode (DecodePool), or with
  decoder='gpu' nvImageCodec decodes the JPEGs on the GPU (photos.decode.GpuJpegDecoder: worth it
  where the host has few cores); on CPUs threads decode (the network needs the processes' cores);
- detecting: a worker thread takes the next batch from the reader and finds its people
  (PoseEstimator.detect: RTMDet / YOLOX batched on the GPU, on a CUDA stream of its own; copies of the
  ONNX session on CPUs) or looks up given boxes;
- pose: the caller's thread crops, runs the network on the people of the whole batch and decodes
  (PoseEstimator.predict), while the worker already detects the next batch.

So the GPU never waits for one photo's host work, and nothing holds more than a few batches of photos.
A file that cannot be read, or an image that fails on its way, comes back with its error, in its
place; the rest go on.
"""
from __future__ import annotations

import itertools
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from rapidpose.errors import InputError, RapidPoseError, check_choice
from rapidpose.results import Poses

log = logging.getLogger("rapidpose")

DECODERS = ("auto", "cpu", "gpu")
FIRST_BATCH = 8  # images in the first batch: a first result soon after the start  # auto: nvImageCodec where the network runs on a GPU and it is there


@dataclass
class PhotoResult:
    """One input photo: its position among the inputs, its path, the image (RGB: a numpy array, or a
    tensor on the GPU when it was decoded there; None if unreadable), its poses (None with an error)."""

    index: int
    path: Path
    image: Any
    poses: Poses | None
    error: RapidPoseError | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    def numpy_image(self) -> np.ndarray:
        """The image as an (H, W, 3) uint8 numpy array (copied from the GPU when it is there)."""
        image = self.image
        return image.cpu().numpy() if hasattr(image, "cpu") else image


def predict_photos(est, paths: Iterable, boxes: Callable[[int, Path], np.ndarray] | None = None,
                   images_per_batch: int = 16, return_heatmaps: bool = False, decoder: str = "auto",
                   ahead: int = 2) -> Iterator[PhotoResult]:
    """A PhotoResult for each path, in input order, as each batch of photos finishes (see the module).

    est: a PoseEstimator. boxes: in place of its detector, a function (position, path) -> (N, 4) or
    (N, 5) boxes of that photo. decoder: 'auto' or 'cpu' (worker processes or threads) or 'gpu'
    (nvImageCodec; an error where it cannot be used). ahead: batches read and detected ahead of the
    pose work. Closing the generator (or leaving the loop) stops the reading and the worker.
    """
    check_choice("decoder", decoder, DECODERS)
    size = max(int(images_per_batch), 1)
    if boxes is None and est.detector is None:  # the whole image is the person
        boxes = _whole_image
    reader, closers = open_reader(est, paths, decoder, size)
    stage = _DetectStage(est, boxes, _batches(enumerate(reader), size), first=min(size, FIRST_BATCH))
    pending: deque = deque(stage.submit() for _ in range(max(int(ahead), 1)))
    try:
        while pending:
            work = pending.popleft().result()
            if work is None:  # the reader is done
                break
            pending.append(stage.submit())  # queued behind the work in hand: the worker stays ahead
            yield from _pose(est, *work, return_heatmaps)
    finally:
        for work in pending:
            work.cancel()
        stage.close()  # before the reader closes: the worker may be reading
        for close in closers:
            close()


def _whole_image(index, path):
    return None  # predict's own default: the whole image as the box


def _batches(items, size: int):
    """Lists of `size` items, the first of FIRST_BATCH only: the first results come out sooner."""
    it = iter(items)
    take = min(size, FIRST_BATCH)
    while batch := list(itertools.islice(it, take)):
        yield batch
        take = size


def open_reader(est, paths, decoder: str = "auto", batch_size: int = 16):
    """(path, image or error) for each path, in order, decoded where `est` wants its images (see the
    module), and the functions that stop the reading."""
    from rapidpose.io import read_ahead
    from rapidpose.photos.decode import DecodePool, GpuJpegDecoder, gpu_decoding_unavailable

    check_choice("decoder", decoder, DECODERS)
    device = getattr(est.runtime, "device", "cpu")
    if decoder == "gpu":
        why = "the network does not run on a CUDA GPU" if not est.on_gpu else gpu_decoding_unavailable(device)
        if why is not None:
            raise InputError(f"--decoder gpu: JPEGs cannot be decoded on the GPU here: {why}; use --decoder auto "
                             f"or cpu")
    if not est.on_gpu:
        reader = read_ahead(paths)
        return reader, [reader.close]
    if decoder == "gpu":
        gpu = GpuJpegDecoder(device, pool=DecodePool(window=64))
        if gpu.reason is None:
            reader = gpu.map(paths, batch_size=batch_size)
            return reader, [reader.close, gpu.close]
        gpu.close()
        raise InputError(f"--decoder gpu: {gpu.reason}; use --decoder auto or cpu")
    pool = DecodePool(window=64)
    reader = pool.map(paths)
    return reader, [reader.close, pool.close]


class _DetectStage:
    """The worker thread that takes the next batch of photos from the reader and finds their people.
    On a GPU it works on a CUDA stream of its own, and the pose work waits for its event only."""

    def __init__(self, est, boxes, batches, first: int):
        self.est, self.boxes, self.batches = est, boxes, batches
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rapidpose-detect")
        self.stream = self.pose_stream = None
        if est.on_gpu:
            import torch

            device = torch.device(est.runtime.device)
            if device.type == "cuda":
                self.stream = torch.cuda.Stream(device)
                self.pose_stream = torch.cuda.current_stream(device)
                if boxes is None:  # the detector made and its first batch size captured while the reader starts
                    self.pool.submit(self._warm_up, first)

    def _warm_up(self, first: int):
        import torch

        with torch.cuda.stream(self.stream):
            self.est.detect([np.zeros((480, 640, 3), np.uint8)] * first)

    def submit(self):
        """The next batch, read and detected on the worker (its jobs run one after another, in order):
        a Future of (items, indices of the good ones, their boxes, event, pose stream), or of None
        once the reader is done."""
        return self.pool.submit(self._work)

    def _work(self):
        if self.stream is None:
            return self._next()
        import torch

        with torch.cuda.stream(self.stream):
            work = self._next()
            if work is not None:
                for k in work[1]:  # images made on this stream, used on the pose stream
                    if torch.is_tensor(work[0][k][2]):
                        work[0][k][2].record_stream(self.pose_stream)
                done = torch.cuda.Event()
                done.record(self.stream)
                work = (*work[:3], done, self.pose_stream)
        return work

    def _next(self):
        batch = next(self.batches, None)
        if batch is None:
            return None
        items = [(index, Path(path), image) for index, (path, image) in batch]
        good = [k for k, (_, _, image) in enumerate(items) if not isinstance(image, RapidPoseError)]
        if self.boxes is not None:
            found = [self.boxes(items[k][0], items[k][1]) for k in good]
        else:
            found = self.est.detect([items[k][2] for k in good]) if good else []
        return items, good, found, None, None

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


def _pose(est, items, good, found, done, pose_stream, return_heatmaps):
    if done is not None:
        pose_stream.wait_event(done)  # the images and boxes of this batch are ready on the GPU
    poses = {}
    if good:
        given = None if all(f is None for f in found) else found
        names = [str(items[k][1]) for k in good]
        results = est.predict([items[k][2] for k in good], given, return_heatmaps=return_heatmaps, names=names)
        poses = dict(zip(good, results))
    for k, (index, path, image) in enumerate(items):
        if isinstance(image, RapidPoseError):
            yield PhotoResult(index, path, None, None, image)
        else:
            yield PhotoResult(index, path, image, poses[k])
