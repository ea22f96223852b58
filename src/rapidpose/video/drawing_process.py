"""The drawn mp4 made by a process of its own, outside the GIL of the process that tracks.

At hundreds of frames/s the drawing (a few dozen cv2 calls a frame) and the x264 encoder threads
each take Python's GIL back after every native call; in the process that also decodes, tracks and
feeds the GPU, those hand-offs queue behind its Python work (py-spy on an H100 host: drawing threads
waiting for the GIL, 3-4 of 16 cores busy, 110-150 frames/s against 490 without the mp4). So
`DrawnVideo` copies each frame into a slot of shared memory and sends its poses down a pipe; a worker
process (`python -m rapidpose.video.drawing_process`, started with subprocess: a user's script without a
`__main__` guard is never run twice) copies the slot out, hands the slot back, draws and feeds
video_writer.VideoWriter. The file and the drawing are those of the in-process path. Frames that
come drawn already (on the GPU: video.track_frames(draw=True)) are only encoded there. A feeder
thread of DrawnVideo does the copying, so that the tracking thread only queues frames.

A worker that dies is reported at the next `write()` (and `close()`); the worker ignores Ctrl-C and
finishes the file when the tracking process closes it or exits.
"""
from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path

import cv2
import numpy as np

from rapidpose.errors import InputError
from rapidpose.results import Poses

log = logging.getLogger("rapidpose")

_SLOTS_BYTES = 512 << 20  # frames in shared memory at most (about 170 frames of 1080p I420)


class DrawnVideo:
    """`write(frame, poses)` for each frame (sources.Frame: I420 or RGB, all of one size), `close()`.

    The mp4 is what VideoWriter(path, fps, size, crf, preset, encoders, frame_count) writes from the
    frames drawn by video_cli's drawing (draw_poses / draw_poses_i420). `frames` after close: frames
    in the file.
    """

    def __init__(self, path, fps: float, size, skeleton, crf: int = 23, preset: str = "veryfast",
                 encoders: int | None = None, slots: int = 64, frame_count: int | None = None):
        from rapidpose.video.writer import check_preset

        check_preset(preset)  # here, before any frame: the worker's own errors come back later
        self.path, self.size, self.frames, self.error = Path(path), tuple(int(v) for v in size), 0, None
        self._settings = dict(path=str(path), fps=fps, size=self.size, crf=crf, preset=preset, encoders=encoders,
                              skeleton=skeleton, frame_count=frame_count)
        self._slots, self._memory, self._shape, self._size, self._feeder = slots, None, None, None, None
        self._free: queue.Queue = queue.Queue()
        self._waiting: queue.Queue = queue.Queue(maxsize=32)  # frames for the feeder thread
        # started now (or earlier, by start_worker): it imports its modules while the first frames are tracked
        self._process, replies = _SPARE.pop() if _SPARE else _spawn()
        self._listener = threading.Thread(target=self._listen, args=(replies,), name="drawing replies", daemon=True)
        self._listener.start()

    def _start(self, shape):
        """The shared slots, sized by the first frame (I420 or RGB), and the worker's file."""
        self._shape = shape
        nbytes = int(np.prod(shape))
        slots = max(2, min(self._slots, _SLOTS_BYTES // nbytes))
        self._memory = shared_memory.SharedMemory(create=True, size=nbytes * slots)
        self._views = np.ndarray((slots,) + shape, np.uint8, self._memory.buf)
        for slot in range(slots):
            self._free.put(slot)
        self._send(("open", {**self._settings, "memory": self._memory.name, "shape": shape, "slots": slots}))
        self._feeder = threading.Thread(target=self._feed, name="drawing feeder", daemon=True)
        self._feeder.start()

    def write(self, frame, poses: Poses) -> None:
        """Queue `frame` with `poses`. A frame that comes drawn (`frame.drawn`: video.track_frames(draw=
        True)) is only encoded. A thread of this object copies the frames into the shared slots (and
        waits for drawn frames still on their way from the GPU), so that the caller goes on at once."""
        if self.error:
            raise InputError(f"writing '{self.path}' failed: {self.error}")
        w, h = size = frame.size
        if self._shape is None:  # slots of the first frame's kind: I420 as decoded, else RGB
            self._start((h * 3 // 2, w) if frame.yuv is not None else (h, w, 3))
            self._size = size
        if size != self._size:
            raise InputError(f"frame {frame.index} of {w}x{h}: this video's frames are {self._size[0]}x"
                             f"{self._size[1]}; all frames of one video need one size")
        self._waiting.put((frame, poses))

    def _feed(self) -> None:
        while (item := self._waiting.get()) is not None:
            if self.error:
                continue  # drain; write() reports it
            frame, poses = item
            try:
                self._send_frame(frame, poses)
            except Exception as exc:  # noqa: BLE001 (a dead worker, say: the next write() says so)
                self.error = self.error or f"{type(exc).__name__}: {exc}"

    def _send_frame(self, frame, poses: Poses) -> None:
        drawn = frame.drawn  # waits for one still on its way from the GPU
        pixels = drawn if drawn is not None else frame.yuv if frame.yuv is not None else frame.image
        if pixels.shape != self._shape:  # the frame came in the other kind (RGB, I420) of this size
            pixels = cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_I420 if pixels.ndim == 2 else cv2.COLOR_RGB2YUV_I420)
        slot = self._take_slot()
        np.copyto(self._views[slot], pixels)
        self._send(("frame", slot, None if drawn is not None else (poses.boxes, poses.box_scores, poses.keypoints,
                                                                   poses.keypoint_scores, poses.track_ids)))

    def _take_slot(self) -> int:
        while True:
            if self.error:
                raise InputError(f"writing '{self.path}' failed: {self.error}")
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                if self._process.poll() is not None:
                    self.error = self.error or f"the drawing process stopped (exit code {self._process.returncode})"

    def _send(self, message) -> None:
        try:
            pickle.dump(message, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.error = self.error or f"the drawing process stopped ({exc})"
            raise InputError(f"writing '{self.path}' failed: {self.error}") from None

    def _listen(self, replies) -> None:
        with replies:
            while True:
                try:
                    kind, value = pickle.load(replies)
                except (EOFError, pickle.UnpicklingError, OSError):
                    return
                if kind == "free":
                    self._free.put(value)
                elif kind == "done":
                    self.frames, error = value
                    self.error = self.error or error

    def close(self) -> None:
        if self._process is None:
            return
        if self._feeder is not None:
            self._waiting.put(None)
            self._feeder.join()
        process, self._process = self._process, None
        try:
            pickle.dump(("close", None), process.stdin)
            process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        process.wait()
        self._listener.join(timeout=10)
        self._views = None
        if self._memory is not None:
            self._memory.close()
            self._memory.unlink()
        if process.returncode and not self.error:
            self.error = f"the drawing process stopped (exit code {process.returncode})"
        if self.error:
            log.error("video '%s': %s (%d frames written)", self.path, self.error, self.frames)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_SPARE: list = []  # a worker started ahead of its video (start_worker), with the end of its reply pipe


def _spawn():
    replies, their_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "rapidpose.video.drawing_process", str(their_end)], stdin=subprocess.PIPE,
        pass_fds=(their_end,), start_new_session=True)  # its own session: Ctrl-C reaches only us
    os.close(their_end)
    return process, os.fdopen(replies, "rb")


def start_worker(wait: bool = False) -> None:
    """Start the next DrawnVideo's worker now (`rapidpose video` does while the model loads): a Python
    process takes a fraction of a second to import what it needs. wait: until it is ready. One that is
    never used ends with this process."""
    if not _SPARE:
        _SPARE.append(_spawn())
    if wait:
        process, replies = _SPARE[0]
        try:
            kind, _ = pickle.load(replies)  # its first word, once its imports are done
        except (EOFError, pickle.UnpicklingError, OSError):
            kind = None
        if kind != "ready":
            _SPARE.clear()
            raise InputError(f"the drawing process did not start (exit code {process.poll()})")


def _attach(name: str) -> shared_memory.SharedMemory:
    """The tracking process's shared memory, which it alone removes (before Python 3.13 an attaching
    process registers the memory with its own resource tracker, which would remove it at its exit)."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    from multiprocessing import resource_tracker

    memory = shared_memory.SharedMemory(name=name)
    resource_tracker.unregister(memory._name, "shared_memory")  # noqa: SLF001 (the documented workaround)
    return memory


def _serve(reply_fd: int) -> None:
    """The worker: frames from shared slots, drawn on a few threads, written in order."""
    import av  # noqa: F401 (the writer's: imported while the first frames are tracked)

    from rapidpose.draw.cpu import draw_frame
    from rapidpose.video.writer import VideoWriter

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the tracking process decides when the file ends
    requests, replies = sys.stdin.buffer, os.fdopen(reply_fd, "wb")
    reply_lock = threading.Lock()

    def reply(message):
        with reply_lock:
            pickle.dump(message, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()

    reply(("ready", None))
    try:
        kind, settings = pickle.load(requests)
    except EOFError:
        kind = "close"
    if kind != "open":  # closed before any frame came: no file
        reply(("done", (0, None)))
        return
    memory = _attach(settings["memory"])
    views = np.ndarray((settings["slots"],) + tuple(settings["shape"]), np.uint8, memory.buf)
    skeleton, error = settings["skeleton"], None
    try:
        writer = VideoWriter(settings["path"], settings["fps"], settings["size"], crf=settings["crf"],
                             preset=settings["preset"], encoders=settings["encoders"], frame_count=settings["frame_count"])
    except Exception as exc:  # an unwritable path, say: the tracking process says so at its next frame
        memory.close()
        reply(("done", (0, str(exc))))
        return
    pool, drawn = ThreadPoolExecutor(4, thread_name_prefix="draw"), deque()

    def draw(slot, arrays):
        pixels = views[slot].copy()
        reply(("free", slot))
        if arrays is None:  # drawn already
            return pixels
        poses = Poses(*arrays[:4], skeleton=skeleton, track_ids=arrays[4])
        return draw_frame(pixels, poses)

    try:
        while True:
            try:
                message = pickle.load(requests)
            except EOFError:  # the tracking process is gone: finish what came
                break
            if message[0] == "close":
                break
            _, slot, arrays = message
            drawn.append(pool.submit(draw, slot, arrays))
            while len(drawn) > 8 or (drawn and drawn[0].done()):
                writer.write(drawn.popleft().result())
        while drawn:
            writer.write(drawn.popleft().result())
    except Exception as exc:  # a full disk, say: the file keeps what was written
        error = f"{type(exc).__name__}: {exc}"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.close()
        views = None
        memory.close()
        reply(("done", (writer.frames, error or writer.error)))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
