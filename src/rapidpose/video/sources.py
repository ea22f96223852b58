"""Frames from a video file, a folder or glob of images, a webcam or a stream, read ahead on a thread.

`open_source(spec)` gives a FrameSource; iterating it yields Frames (index, time in seconds, pixels)
while a reader thread decodes the next ones, so decoding overlaps detection and pose work.
Video files are decoded by PyAV with FFmpeg's frame threads (1.7x OpenCV's single-threaded reader on
a 16-core host, 4.5x on 2 cores: benchmarks/video_io_speed.py); webcams and streams by OpenCV.
Most videos (yuv420p, even sides, not rotated) come as I420 frames (`Frame.yuv`) with no colour
conversion on the host: the mp4 writer takes them as they are, and `Frame.image` converts to RGB only
when something asks for it. Everything else comes as RGB.
A source that ends early (a truncated or corrupt file, a dropped stream) stops cleanly: the frames
read so far are kept and `source.error` says what happened.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import queue
import re
import threading
from pathlib import Path

import cv2
import numpy as np

from rapidpose.errors import InputError, RapidPoseError
from rapidpose.io import IMAGE_SUFFIXES, expand_paths, read_image

log = logging.getLogger("rapidpose")

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
ROTATIONS = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_OPEN_TIMEOUT_MS = 10_000  # streams and cameras: fail with a clear message instead of hanging


class Frame:
    """One frame of a source. index: position in the source, from 0; time: seconds from the start (the
    container's timestamp where there is one); error: why the frame could not be read, else None.

    Its pixels are `image`, RGB uint8 (H, W, 3), or `yuv`, I420 uint8 (H*3//2, W): the Y plane, then
    the U and V planes at half resolution, as decoded from most videos. A frame that holds only `yuv`
    converts it to RGB (BT.601 limited range, cv2.COLOR_YUV2RGB_I420) the first time `image` is read
    and keeps the result; setting `image` replaces the pixels (and drops `yuv`). `ok` and `size` never
    convert. Neither: the frame could not be read. `yuv` is a CUDA tensor where the frame was decoded
    on the GPU (FrameSource.decode_on_gpu); `image` is then still numpy. `drawn`: the frame with its
    poses drawn (I420 or RGB, as the frame came), where tracking was asked to draw
    (video.track_frames(draw=True)), else None.
    """

    __slots__ = ("index", "time", "_image", "error", "yuv", "_drawn")

    def __init__(self, index: int, time: float, image: np.ndarray | None = None, error: str | None = None,
                 yuv: np.ndarray | None = None):
        self.index, self.time, self._image, self.error, self.yuv = index, time, image, error, yuv
        self._drawn = None

    @property
    def drawn(self) -> np.ndarray | None:
        """The drawn frame; one still on its way from the GPU is waited for here, on first use."""
        drawn = self._drawn
        if callable(drawn):
            drawn = self._drawn = drawn()
        return drawn

    @drawn.setter
    def drawn(self, value) -> None:
        """An array, or a callable that gives it (called once, when first asked for)."""
        self._drawn = value

    @property
    def image(self) -> np.ndarray | None:
        """RGB uint8 (H, W, 3), converted from `yuv` on first use; None when the frame could not be read."""
        image = self._image
        if image is None and self.yuv is not None:
            yuv = self.yuv if isinstance(self.yuv, np.ndarray) else self.yuv.cpu().numpy()  # decoded on the GPU
            image = self._image = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
        return image

    @image.setter
    def image(self, value: np.ndarray | None) -> None:
        """New pixels (RGB): the I420 ones, now out of date, are dropped."""
        self._image, self.yuv = value, None

    @property
    def ok(self) -> bool:
        """The frame has pixels (RGB or I420)."""
        return self._image is not None or self.yuv is not None

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the frame, None when it could not be read."""
        if self._image is not None:
            return self._image.shape[1], self._image.shape[0]
        if self.yuv is not None:
            return self.yuv.shape[1], self.yuv.shape[0] * 2 // 3
        return None

    def __repr__(self):
        pixels = "unread" if not self.ok else "%dx%d %s" % (*self.size, "rgb" if self._image is not None else "i420")
        error = f", error={self.error!r}" if self.error else ""
        return f"Frame({self.index}, {self.time:.3f} s, {pixels}{error})"


def i420_planes(yuv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y (H, W), U and V (H/2, W/2) planes of an I420 frame (H*3//2, W), W and H even."""
    w, h = yuv.shape[1], yuv.shape[0] * 2 // 3
    flat = yuv.reshape(-1)
    return (flat[:w * h].reshape(h, w), flat[w * h:w * h * 5 // 4].reshape(h // 2, w // 2),
            flat[w * h * 5 // 4:].reshape(h // 2, w // 2))


def av_planes(frame) -> list[np.ndarray]:
    """Views of a PyAV yuv420p frame's Y, U and V planes (without FFmpeg's row padding)."""
    views = []
    for i, plane in enumerate(frame.planes):
        pw, ph = (frame.width, frame.height) if i == 0 else (frame.width // 2, frame.height // 2)
        views.append(np.frombuffer(plane, np.uint8)[:plane.line_size * ph].reshape(ph, plane.line_size)[:, :pw])
    return views


class FrameSource:
    """An opened source. Attributes: name, kind ('video', 'images', 'camera', 'stream'), fps, size
    (width, height) after rotation, frame_count (None when unknown or live), error (why reading
    stopped early, else None). Iterate once; `close()` (or the end) stops the reader thread.
    `allocate(shape)` gives the arrays that decoded I420 frames are copied into (numpy's by default;
    the GPU video path gives page-locked memory, which goes to the GPU without another copy), unless
    `decode_on_gpu(device)` moved the decoding to the GPU."""

    def __init__(self, name: str, kind: str, frames, fps: float, size, frame_count, rotate: int, read_ahead: int,
                 release=None):
        self.name, self.kind, self.fps, self.size = name, kind, fps, size
        self.frame_count, self.error = frame_count, None
        self._frames, self._rotate, self._release = frames, ROTATIONS[rotate], release
        self._queue: queue.Queue = queue.Queue(maxsize=max(read_ahead, 1))
        self._stop = threading.Event()
        self._thread = None
        self.allocate = _empty
        # (device) -> (frames, release) decoding on that GPU, or why this source cannot be decoded there
        self._gpu_frames = "only video files are decoded on the GPU"

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")

    def decode_on_gpu(self, device) -> str | None:
        """Decode with `device`'s NVDEC (nvdec.py) instead of FFmpeg on the CPU, from the first frame
        (call before iterating). Returns None when it will, else why it cannot (and nothing changes):
        a source that is not a video file, frames that are not 8-bit I420, no PyNvVideoCodec, or a
        codec the GPU does not decode."""
        from rapidpose.video import nvdec

        if self._thread is not None:
            return "its frames are being read already"
        reason = self._gpu_frames if isinstance(self._gpu_frames, str) else nvdec.unavailable()
        if reason is not None:
            return reason
        try:
            frames, release = self._gpu_frames(device)
        except Exception as exc:  # noqa: BLE001 (PyNvVideoCodec's own errors: an unsupported codec, say)
            return f"NVDEC cannot decode it: {str(exc).strip().splitlines()[0]}"
        if self._release is not None:
            self._release()  # FFmpeg's reader, which gave the first frame
        self._frames, self._release = frames, release
        return None

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
                if self._rotate is not None and frame.ok:  # RGB: rotated videos are not decoded to I420
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


def open_source(spec, rotate: int = 0, fps: float | None = None, read_ahead: int | None = None) -> FrameSource:
    """A FrameSource for: a video file; a folder of images or a glob ('frames/*.jpg'); a webcam index
    (0, '0'); a stream URL (rtsp://, http(s)://, ...). rotate: 0, 90, 180 or 270 degrees clockwise.
    fps: the frame rate of image sequences (default 30), or an override for videos without one.
    read_ahead: frames read before they are asked for (default 32, a GPU batch; 16 for live sources,
    whose frames wait there when the work is slower than the camera)."""
    if rotate not in ROTATIONS:
        raise InputError(f"--rotate must be 0, 90, 180 or 270 (degrees clockwise); got {rotate}")
    text = str(spec)
    camera, stream = isinstance(spec, int) or re.fullmatch(r"\d+", text), text.lower().startswith(STREAM_SCHEMES)
    read_ahead = read_ahead or (16 if camera or stream else 32)
    if camera:
        return _open_capture(int(text), "camera", f"camera {text}", rotate, fps, read_ahead)
    if stream:
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


def _empty(shape) -> np.ndarray:
    return np.empty(shape, np.uint8)


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
    timed = True  # the frames have timestamps (raw H.264 streams have none)

    def decoded():
        nonlocal timed
        index = 0
        try:
            for frame in container.decode(stream):
                timed = frame.time is not None
                t = frame.time if timed else index / fps
                # the file's display rotation, as players apply it
                turn = ROTATIONS.get((-int(frame.rotation or 0)) % 360)
                # I420 as decoded (no conversion on the host): limited-range yuv420p with even sides that
                # is not turned; full range (yuvj420p, color_range JPEG) and other formats go to RGB
                if (turn is None and not rotate and frame.format.name == "yuv420p" and frame.color_range != 2
                        and not (frame.width % 2 or frame.height % 2)):
                    yuv = (source.allocate if source is not None else _empty)((frame.height * 3 // 2, frame.width))
                    for plane, decoded_plane in zip(i420_planes(yuv), av_planes(frame)):
                        np.copyto(plane, decoded_plane)  # numpy lets go of the GIL while it copies
                    yield Frame(index, t, None, yuv=yuv)
                else:
                    image = frame.to_ndarray(format="rgb24")
                    if turn is not None:
                        image = cv2.rotate(image, turn)
                    yield Frame(index, t, image)
                index += 1
        except av.FFmpegError as exc:  # corrupt data: keep what was decoded
            if source is None:
                raise InputError(f"could not open video '{path}': its first frame cannot be decoded ({exc})") from None
            source.error = _stopped_at(index, exc)
            return
        source.error = _fewer_than(index, count)

    def on_gpu(device):
        from rapidpose.video.nvdec import NvdecReader

        reader = NvdecReader(path, device)
        time_base = float(stream.time_base) if timed and stream.time_base else None

        def frames():
            index = 0
            try:
                for pts, yuv in reader:
                    yield Frame(index, pts * time_base if time_base else index / fps, None, yuv=yuv)
                    index += 1
            except Exception as exc:  # noqa: BLE001 (PyNvVideoCodec's own exception type; the decoder skips corrupt data)
                source.error = _stopped_at(index, exc)
                return
            source.error = _fewer_than(index, count)

        return frames, reader.close

    frames = decoded()
    first = next(frames, None)  # the size as shown (after the file's own rotation), and a check that it decodes
    if first is None:
        container.close()
        raise InputError(f"could not open video '{path}': no frame of it can be decoded")
    w, h = first.size
    if rotate in (90, 270):
        w, h = h, w

    def all_frames():
        yield first
        yield from frames

    source = FrameSource(str(path), "video", all_frames, fps, (w, h), count or None, rotate, read_ahead,
                         container.close)
    if first.yuv is not None:  # NVDEC gives 8-bit I420 frames (as NV12): the same pixels
        source._gpu_frames = on_gpu
    else:
        source._gpu_frames = "its frames are not 8-bit I420 as decoded (another pixel format, full range, or turned)"
    return source


def _stopped_at(index: int, exc: Exception) -> str:
    return f"decoding stopped at frame {index}: {exc}; the file is truncated or corrupt from there"


def _fewer_than(index: int, count: int) -> str | None:
    if count and index < count:
        return f"read {index} of the {count} frames the file announces: it is truncated or corrupt from frame {index} on"
    return None


def _open_capture(target, kind: str, name: str, rotate: int, fps_override, read_ahead) -> FrameSource:
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, _OPEN_TIMEOUT_MS]
    with _opencv_quiet():
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


@contextlib.contextmanager
def _opencv_quiet():
    """Keep OpenCV's own lines off stderr while it opens a camera or stream: its log ('[ WARN:0@0.4] global
    cap_v4l.cpp ... can't open camera by index', for each backend it tries) and that of the FFmpeg built
    into it ('[tcp @ 0x...] Connection to tcp://... failed: Connection refused'). rapidpose says what went
    wrong in a sentence of its own. With `rapidpose -v` (the 'rapidpose' logger at DEBUG) they pass.
    OpenCV reads OPENCV_FFMPEG_LOGLEVEL once, when its FFmpeg first starts, so it is set (to FFmpeg's
    quiet level, unless the user has set it) for the rest of the process: a dropped stream's decoding
    errors stay quiet too, and `source.error` says where it stopped. PyAV, which decodes video files,
    keeps FFmpeg quiet by default."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


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
