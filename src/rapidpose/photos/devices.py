"""Photos over several devices: a worker process per device, the photos shared out, results in input order.

    devices = parse_devices("cuda")            # every visible GPU: ['cuda:0', 'cuda:1', ...]
    with DeviceWorkers(devices, settings) as workers:
        for index, path, entry, coco, poses, error in workers.run(todo):   # todo: [(input position, path)]
            ...

Each worker is a fresh interpreter (worker_process.py: no fork of a process with CUDA and threads, no
re-import of the caller's main module) that makes a
PoseEstimator on its device and runs one photo pipeline (photos/pipeline.py) over the stream of chunks
of photos it is sent, answering each chunk with its photos' JSON entries (records.photo_record), COCO
results and errors. The pipeline stays up between chunks (its decoders, its detection thread, its
batches of 64 photos spanning chunks): a pipeline per chunk ran two H200s at a quarter of one's rate.
So a worker is kept supplied with the photos its pipeline reads ahead (`in_hand`, a few batches) and
told to finish what it holds ('end') once no chunk is left; the fastest workers take the most, and the
results come back in input order through a reorder buffer. A worker that dies (a crash, out of memory, killed)
is reported with its device and exit code; its chunks go to the others, and only when none is left do
its photos come back as errors: reported, never lost.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from rapidpose.errors import InputError
from rapidpose.worker_process import WorkerGroup, WorkerProcess

log = logging.getLogger("rapidpose")

CHUNK = 64  # photos a worker is sent at a time


def parse_devices(device: str) -> list[str]:
    """The devices a run uses: 'cuda' -> every visible GPU (one: ['cuda']); 'cuda:0,2' -> those two;
    'cpu' -> ['cpu']; a list may repeat a device ('cpu,cpu': two workers on the CPU, as tests do)."""
    device = str(device).strip()
    parts = [p.strip() for p in device.split(",") if p.strip()]
    if not parts:
        raise InputError("--device is empty: give cpu, cuda, cuda:N or a list such as cuda:0,2")
    if len(parts) > 1 and parts[0].startswith("cuda:") and all(p.isdigit() for p in parts[1:]):
        parts = [parts[0]] + [f"cuda:{p}" for p in parts[1:]]  # cuda:0,2 -> cuda:0, cuda:2
    if parts == ["cuda"]:
        count = visible_gpus()
        return [f"cuda:{i}" for i in range(count)] if count > 1 else ["cuda"]
    for p in parts:
        if not (p in ("cpu", "cuda", "auto") or (p.startswith("cuda:") and p[5:].isdigit())):
            raise InputError(f"unknown device '{p}' in --device {device}: use cpu, cuda, cuda:N or a "
                             f"comma-separated list of them (cuda:0,2)")
    return parts


def visible_gpus() -> int:
    """The CUDA devices this process sees (CUDA_VISIBLE_DEVICES applies), asked of the driver itself:
    the parent of the workers then needs no torch, whose import (3 s and more) would delay them all."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0:
            return count.value
        return 0
    except OSError:  # no NVIDIA driver here (or not Linux): ask torch, if it is there
        try:
            import torch
        except ImportError:
            return 0
        return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class WorkerSettings:
    """What each worker's PoseEstimator and photo pipeline are made with (see PoseEstimator)."""

    model: str
    detector: str | None = "rtmdet-nano"
    flip_test: bool = False
    detector_threshold: float = 0.3
    batch_size: int = 64
    dataset_index: int = 0
    backend: str = "auto"
    precision: str = "auto"
    compile: bool = False
    keypoint_set: str | None = None
    images_per_batch: int | None = None
    decoder: str = "auto"
    coco: bool = False  # answer each photo's COCO results too
    boxes: str | None = None  # a boxes file (io.load_boxes) in place of the detector
    box_threshold: float = 0.3
    draw_dir: str | None = None  # each photo drawn there (draw.cpu.save_drawn) before its answer
    keypoint_threshold: float = 0.3
    heatmaps: bool = False
    box_table: dict | None = None  # {photo path as given: (N, 5) boxes}: the boxes of each photo, no detector
    poses: bool = False  # answer each photo's Poses too (exact, unrounded: what evaluation scores)


class DeviceWorkers(WorkerGroup):
    """Worker processes, one per device (see the module). `header` is the skeleton header the first
    worker answered with once it was ready, `skeleton` the model's keypoint set."""

    def __init__(self, devices: list[str], settings: WorkerSettings, chunk: int = CHUNK):
        if not isinstance(settings.model, (str, os.PathLike)):
            raise InputError("several devices need the model as a name or a file (each worker loads it), "
                             "not a loaded module")
        self.devices, self.settings, self.chunk = list(devices), settings, max(int(chunk), 1)
        # photos a worker holds: what its pipeline reads ahead (the decoders' window, the batch in the
        # detector, the ones queued behind it, the one in the pose network) and a batch more, so that it
        # never waits for a chunk to finish the one before (and no more: the last photos stay shared out)
        per_batch = settings.images_per_batch or 64
        self.in_hand = max(2 * self.chunk, 4 * per_batch + 96)
        self._workers: list[_Worker] = []
        self.header = None
        for device in self.devices:
            self._workers.append(_Worker(device, settings))
        for worker in self._workers:  # loading happens in parallel; wait for each to be ready
            ready = worker.receive()
            if ready is None or ready[0] != "ready":
                why = ready[1] if ready else f"it exited with code {worker.process.wait()}"
                self.close()
                raise InputError(f"the worker on {worker.device} could not start: {why}")
            self.header = self.header or ready[1]

    @property
    def skeleton(self):
        from rapidpose.skeletons import skeleton_from_meta

        return skeleton_from_meta(self.header["meta"])

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.alive]

    def run(self, todo):
        """(position, path, entry, coco results, poses, error message or None) for each (position, path)
        of `todo`, in its order (poses: the Poses with settings.poses, else None)."""
        todo = [(int(i), str(p)) for i, p in todo]
        size = self.chunk
        chunks = deque((k, todo[s:s + size]) for k, s in enumerate(range(0, len(todo), size)))
        total = len(chunks)
        done: dict[int, list] = {}
        next_chunk = 0
        in_hand: dict[int, _Worker] = {}
        per_worker = -(-self.in_hand // size)
        while next_chunk < total:
            # chunks handed out at most so far ahead of the next to write that the reorder buffer stays
            # small; the worker that holds that next chunk is always kept supplied (it may need the
            # photos after it to finish it: its batches span chunks)
            self._hand_out(chunks, in_hand, next_chunk + (per_worker + 2) * len(self._workers), per_worker,
                           in_hand.get(next_chunk))
            if not chunks:  # nothing left to hand out: each worker finishes what it holds
                for worker in self._workers:
                    if worker.alive and worker.chunks and not worker.flushed:
                        self._send(worker, ("end",), chunks, in_hand)
            if not in_hand:  # no worker left
                break
            self._collect(chunks, in_hand, done)
            while next_chunk in done:
                yield from done.pop(next_chunk)
                next_chunk += 1
        waiting = dict(chunks)
        for key in range(next_chunk, total):  # every worker died: what is left is reported, not lost
            if key in done:
                yield from done.pop(key)
                continue
            for index, path in waiting[key]:
                yield index, path, None, [], None, "no worker left to process it (see the errors above)"

    def _hand_out(self, chunks, in_hand, limit: int, per_worker: int, oldest) -> None:
        for worker in self._workers:
            while (worker.alive and len(worker.chunks) < per_worker and chunks
                   and (chunks[0][0] < limit or worker is oldest)):
                key, items = chunks.popleft()
                if not self._send(worker, ("chunk", key, items), chunks, in_hand, (key, items)):
                    break
                worker.chunks[key] = items
                worker.flushed = False
                in_hand[key] = worker

    def _send(self, worker, message, chunks, in_hand, item=None) -> bool:
        try:
            worker.send(message)
        except OSError:
            if item is not None:
                chunks.appendleft(item)
            self._lost(worker, chunks, in_hand)
            return False
        if message[0] == "end":
            worker.flushed = True
        return True

    def _collect(self, chunks, in_hand, done) -> None:
        by_conn = {w.conn: w for w in set(in_hand.values())}
        for conn in wait(list(by_conn)):
            worker = by_conn[conn]
            answer = worker.receive()
            if answer is None:
                self._lost(worker, chunks, in_hand)
                continue
            _, key, results = answer
            worker.chunks.pop(key, None)
            in_hand.pop(key, None)
            done[key] = results

    def _lost(self, worker, chunks, in_hand) -> None:
        code = worker.process.wait()
        worker.alive = False
        lost = sorted(worker.chunks.items())
        log.error("the worker on %s stopped (exit code %s) with %d photos in hand: %s", worker.device, code,
                  sum(len(items) for _, items in lost), "they go to the other workers" if any(
                      w.alive for w in self._workers) else "no worker is left")
        for key, items in reversed(lost):
            in_hand.pop(key, None)
            chunks.appendleft((key, items))
        worker.chunks.clear()


class _Worker(WorkerProcess):
    def __init__(self, device: str, settings: WorkerSettings):
        super().__init__("rapidpose.photos.devices:_serve", device, ("start", device, settings))
        self.flushed = True  # told to finish what it holds ('end') since its last chunk
        self.chunks: dict[int, list] = {}


def _serve(fd: int) -> None:
    """A worker's life: ('start', device, settings), then chunks ('chunk', key, [(position, path)]),
    each answered with ('done', key, [(position, path, entry, coco, poses, error)]) as the pipeline finishes
    it; ('end',) finishes every chunk in hand; ('stop',) ends the worker."""
    import queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    conn = Connection(fd)
    _, device, settings = conn.recv()
    try:
        est, boxes = _estimator(device, settings)
    except Exception as exc:  # a wrong model or detector: said once, by the parent
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    from rapidpose.skeletons import skeleton_to_meta

    conn.send(("ready", {"model": str(settings.model), **est.skeleton.to_dict(), "meta": skeleton_to_meta(est.skeleton),
                         "input_size": list(est.input_size)}))
    inbox: queue.Queue = queue.Queue()

    def listen():  # the parent's messages, taken as they come (the pipeline reads them when it wants photos)
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("stop",)
            inbox.put(message)
            if message[0] == "stop":
                return

    threading.Thread(target=listen, name="rapidpose-device-inbox", daemon=True).start()
    while (message := inbox.get())[0] != "stop":
        if message[0] == "chunk" and _pipeline_run(est, boxes, settings, message, inbox, conn) == "stop":
            return


def _pipeline_run(est, box_table, settings: WorkerSettings, first, inbox, conn):
    """One photo pipeline over `first` and the chunks that follow it until ('end',); 'stop' if the
    parent said stop (or went away) meanwhile."""
    from rapidpose.io import boxes_for, coco_image_id
    from rapidpose.photos.pipeline import predict_photos

    stream: dict[int, tuple] = {}  # pipeline index -> (chunk key, (position, path)), until its result is out
    pending: dict[int, list] = {}  # chunk key -> [photos still to come, answers so far]
    ended = []

    def photos():  # read by the pipeline's reader, a window ahead of the results
        message, indices = first, itertools.count()  # the pipeline numbers the photos it reads as they come
        while message[0] == "chunk":
            _, key, items = message
            pending[key] = [len(items), []]
            for item in items:
                stream[next(indices)] = (key, item)
                yield Path(item[1])
            message = inbox.get()
        ended.append(message[0])

    def given(index, path):  # the --boxes entry of a photo, above the threshold
        found = boxes_for(box_table, path, coco_image_id(path, stream[index][1][0]))
        return found[found[:, 4] >= settings.box_threshold]

    def listed(index, path):  # the photo's boxes as the caller gave them
        return settings.box_table.get(stream[index][1][1], np.zeros((0, 5), np.float32))

    boxes = listed if settings.box_table is not None else given if box_table is not None else None
    per_batch = settings.images_per_batch or (64 if est.on_gpu else 16)
    for result in predict_photos(est, photos(), boxes,
                                 images_per_batch=per_batch, return_heatmaps=settings.heatmaps,
                                 decoder=settings.decoder):
        key, (index, path) = stream.pop(result.index)
        count, answers = pending[key]
        answers.append(_answer(est, settings, index, path, result))
        if len(answers) == count:
            conn.send(("done", key, answers))
            del pending[key]
    return "stop" if ended and ended[0] == "stop" else None


def _answer(est, settings: WorkerSettings, index: int, path: str, result) -> tuple:
    from rapidpose.io import coco_image_id
    from rapidpose.photos.records import photo_record

    if result.error is not None:
        return index, path, photo_record(path, error=result.error), [], None, str(result.error)
    if settings.draw_dir:
        from rapidpose.draw.cpu import save_drawn

        save_drawn(result.numpy_image(), result.poses, Path(settings.draw_dir) / Path(path).stem,
                   settings.keypoint_threshold, settings.heatmaps, est.input_size)
    coco = result.poses.to_coco(coco_image_id(Path(path), index)) if settings.coco else []
    poses = result.poses if settings.poses else None
    return index, path, photo_record(path, result.size, result.poses), coco, poses, None


def _estimator(device, settings: WorkerSettings):
    from rapidpose.io import load_boxes
    from rapidpose.topdown.estimator import PoseEstimator

    detector = "none" if settings.boxes or settings.box_table is not None else settings.detector
    est = PoseEstimator(settings.model, detector=detector, device=device, flip_test=settings.flip_test,
                        detector_threshold=settings.detector_threshold, batch_size=settings.batch_size,
                        dataset_index=settings.dataset_index, backend=settings.backend,
                        precision=settings.precision, compile=settings.compile, keypoint_set=settings.keypoint_set)
    return est, (load_boxes(settings.boxes) if settings.boxes else None)
