"""Frames from a video file, a folder or glob of images, a webcam or a stream, read ahead on a thread.

`open_source(spec)` gives a FrameSource; iterating it yields Frames (index, time in seconds, RGB
image) while a reader thread decodes the next ones, so decoding overlaps detection and pose work.
Video files are decoded by PyAV with FFmpeg's frame threads (1.7x OpenCV's single-threaded reader on
a 16-core host, 4.5x on 2 cores: benchmarks/video_io_speed.py); webcams and streams by OpenCV.
A source that ends early (a truncated or corrupt file, a dropped stream) stops cleanly: the frames
read so far are kept and `source.error` says what happened.
"""
from __future__ import annotations

import glob
import logging
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, RapidPoseError
from .io import IMAGE_SUFFIXES, expand_paths, read_image

log = logging.getLogger("rapidpose")

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
ROTATIONS = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_OPEN_TIMEOUT_MS = 10_000  # streams and cameras: fail with a clear message instead of hanging


@dataclass
class Frame:
    index: int  # position in the source, from 0
    time: float  # seconds from the start (the container's timestamp where there is one)
    image: np.ndarray | None  # RGB uint8 (H, W, 3); None when this frame could not be read
    error: str | None = None


class FrameSource:
    """An opened source. Attributes: name, kind ('video', 'images', 'camera', 'stream'), fps, size
    (width, height) after rotation, frame_count (None when unknown or live), error (why reading
    stopped early, else None). Iterate once; `close()` (or the end) stops the reader thread."""

    def __init__(self, name: str, kind: str, frames, fps: float, size, frame_count, rotate: int, read_ahead: int,
                 release=None):
        self.name, self.kind, self.fps, self.size = name, kind, fps, size
        self.frame_count, self.error = frame_count, None
        self._frames, self._rotate, self._release = frames, ROTATIONS[rotate], release
        self._queue: queue.Queue = queue.Queue(maxsize=max(read_ahead, 1))
        self._stop = threading.Event()
        self._thread = None

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")

    def __iter__(self):
        self._thread = threading.Thread(target=self._read, name=f"read {self.name}", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                yield item
        finally:
            self.close()

    def _read(self):
        try:
            for frame in self._frames():
                if self._stop.is_set():
                    break
                if frame.image is not None and self._rotate is not None:
                    frame.image = cv2.rotate(frame.image, self._rotate)
                self._put(frame)
        except Exception as exc:  # a decoder failure ends the source, never the run
            self.error = f"reading stopped: {type(exc).__name__}: {exc}"
        finally:
            if self._release is not None:
                self._release()
            self._put(None)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        count = "live" if self.live else f"{self.frame_count} frames"
        return f"FrameSource({self.name!r}, {self.kind}, {self.size[0]}x{self.size[1]}, {self.fps:.2f} fps, {count})"


def open_source(spec, rotate: int = 0, fps: float | None = None, read_ahead: int = 16) -> FrameSource:
    """A FrameSource for: a video file; a folder of images or a glob ('frames/*.jpg'); a webcam index
    (0, '0'); a stream URL (rtsp://, http(s)://, ...). rotate: 0, 90, 180 or 270 degrees clockwise.
    fps: the frame rate of image sequences (default 30), or an override for videos without one."""
    if rotate not in ROTATIONS:
        raise InputError(f"--rotate must be 0, 90, 180 or 270 (degrees clockwise); got {rotate}")
    text = str(spec)
    if isinstance(spec, int) or re.fullmatch(r"\d+", text):
        return _open_capture(int(text), "camera", f"camera {text}", rotate, fps, read_ahead)
    if text.lower().startswith(STREAM_SCHEMES):
        return _open_capture(text, "stream", text, rotate, fps, read_ahead)
    path = Path(text).expanduser()
    if glob.has_magic(text) or path.is_dir():
        return _open_images(text, rotate, fps, read_ahead)
    if not path.exists():
        raise InputError(f"'{text}' does not exist: pass a video file, a folder or glob of frames, "
                         f"a webcam index (0) or a stream URL (rtsp://...)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _open_images(text, rotate, fps, read_ahead)
    return _open_video_file(path, rotate, fps, read_ahead)


def _open_video_file(path: Path, rotate: int, fps_override, read_ahead) -> FrameSource:
    import av

    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.FFmpegError, IndexError, UnicodeDecodeError) as exc:
        what = f"could not open video '{path}': it is not a video FFmpeg can read, or it is corrupt ({exc})"
        if _mp4_without_index(path):
            what = (f"could not open video '{path}': it is an mp4/mov without its index (moov atom), which is "
                    f"written last: the recording or copy was cut before it finished. Nothing can be decoded "
                    f"without it; recover it with a tool such as untrunc, or record with the index first "
                    f"(ffmpeg -movflags +faststart)")
        raise InputError(what) from None
    stream.thread_type = "AUTO"  # frame threads: decoding the next frames on all cores
    rate = stream.guessed_rate or stream.average_rate
    fps = fps_override or (float(rate) if rate else 30.0)
    count = stream.frames or 0
    source = None

    def decoded():
        index = 0
        try:
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="rgb24")
                turn = (-int(frame.rotation or 0)) % 360  # the file's display rotation, as players apply it
                if turn in ROTATIONS and turn:
                    image = cv2.rotate(image, ROTATIONS[turn])
                yield Frame(index, frame.time if frame.time is not None else index / fps, image)
                index += 1
        except av.FFmpegError as exc:  # corrupt data: keep what was decoded
            if source is None:
                raise InputError(f"could not open video '{path}': its first frame cannot be decoded ({exc})") from None
            source.error = f"decoding stopped at frame {index}: {exc}; the file is truncated or corrupt from there"
            return
        if count and index < count:
            source.error = (f"read {index} of the {count} frames the file announces: it is truncated or "
                            f"corrupt from frame {index} on")

    frames = decoded()
    first = next(frames, None)  # the size as shown (after the file's own rotation), and a check that it decodes
    if first is None:
        container.close()
        raise InputError(f"could not open video '{path}': no frame of it can be decoded")
    h, w = first.image.shape[:2]
    if rotate in (90, 270):
        w, h = h, w

    def all_frames():
        yield first
        yield from frames

    source = FrameSource(str(path), "video", all_frames, fps, (w, h), count or None, rotate, read_ahead,
                         container.close)
    return source


def _open_capture(target, kind: str, name: str, rotate: int, fps_override, read_ahead) -> FrameSource:
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, _OPEN_TIMEOUT_MS]
    cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    if not cap.isOpened():
        cap.release()
        what = {"camera": f"could not open camera {target}: it is missing, busy or not permitted; check the "
                          f"index (0 is the first camera) and that no other program uses it",
                "stream": f"could not open stream '{target}': it is unreachable or not a video stream; check "
                          f"the URL, the network and the credentials"}[kind]
        raise InputError(what)
    fps = fps_override or cap.get(cv2.CAP_PROP_FPS) or 0.0
    if not 0 < fps < 1000:
        fps = 30.0  # cameras and some streams report nothing usable
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if rotate in (90, 270):
        w, h = h, w
    source = None

    def frames():
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            yield Frame(index, index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
        source.error = f"the {kind} ended after {index} frames"

    source = FrameSource(name, kind, frames, fps, (w, h), None, rotate, read_ahead, cap.release)
    return source


def _open_images(text: str, rotate: int, fps, read_ahead) -> FrameSource:
    files = expand_paths([text])
    fps = fps or 30.0
    size = None
    for file in files:  # the size of the first readable image
        try:
            size = read_image(file).shape[1::-1]
            break
        except RapidPoseError:
            continue
    if size is None:
        raise InputError(f"none of the {len(files)} images of '{text}' can be read")
    w, h = size
    if rotate in (90, 270):
        w, h = h, w

    def frames():
        for index, file in enumerate(files):
            try:
                yield Frame(index, index / fps, read_image(file))
            except RapidPoseError as exc:
                yield Frame(index, index / fps, None, str(exc))

    return FrameSource(text, "images", frames, fps, (w, h), len(files), rotate, read_ahead)


def _mp4_without_index(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read(12)[4:8] != b"ftyp":
                return False
            f.seek(0)
            tail = b""
            while chunk := f.read(1 << 24):
                if b"moov" in tail + chunk:
                    return False
                tail = chunk[-3:]
        return True
    except OSError:
        return False
