"""H.264 mp4 output through PyAV (FFmpeg's libx264), at the input's frame rate and size.

Audio is not copied. Encoding runs on a thread of its own (FFmpeg also spreads each frame over the
cores), so drawing and encoding overlap the pose work. `close()` always leaves a playable file:
whatever was written before an error or Ctrl-C is flushed and the mp4 index is written.
"""
from __future__ import annotations

import logging
import queue
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import InputError

log = logging.getLogger("rapidpose")

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")


class VideoWriter:
    """`write(rgb_frame)` frames of one size; `close()` finishes the file. A context manager.

    crf: x264 quality (18 visually lossless .. 28 small; 23 is x264's default). preset: x264's speed
    against file size; 'veryfast' keeps 1080p encoding above 180 frames/s on 16 cores.
    """

    def __init__(self, path, fps: float, size, crf: int = 23, preset: str = "veryfast", queue_size: int = 32):
        import av  # PyAV: FFmpeg with libx264 in its wheels (OpenCV's pip builds have no H.264 encoder)

        if preset not in PRESETS:
            raise InputError(f"unknown x264 preset '{preset}': use one of {', '.join(PRESETS)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in size)
        # yuv420p (what every player takes) needs even sides: an odd one gets a copied edge row/column
        self.size, self._even = (w, h), (w + w % 2, h + h % 2)
        if self._even != self.size:
            log.warning("%s: %dx%d has an odd side; the video is %dx%d (edge pixels repeated)",
                        self.path.name, w, h, *self._even)
        self.rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30)
        try:
            self._container = av.open(str(self.path), "w")
        except Exception as exc:
            raise InputError(f"cannot write video '{self.path}': {exc}") from None
        stream = self._container.add_stream("libx264", rate=self.rate)
        stream.width, stream.height = self._even
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        stream.codec_context.thread_type = "AUTO"
        self._stream, self._av = stream, av
        self.frames = 0
        self.error: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._encode, name=f"encode {self.path.name}", daemon=True)
        self._thread.start()

    def write(self, image: np.ndarray) -> None:
        """Queue one RGB uint8 (H, W, 3) frame of the writer's size."""
        if image.shape[:2] != self.size[::-1]:
            raise InputError(f"frame of {image.shape[1]}x{image.shape[0]} for a {self.size[0]}x{self.size[1]} video")
        if self.error:
            raise InputError(f"writing '{self.path}' failed: {self.error}")
        self._queue.put(image)

    def _encode(self):
        while True:
            image = self._queue.get()
            if image is None:
                break
            if self.error:
                continue  # drain the queue; write() reports the error
            try:
                if self._even != self.size:
                    image = np.pad(image, ((0, self._even[1] - self.size[1]), (0, self._even[0] - self.size[0]),
                                           (0, 0)), mode="edge")
                frame = self._av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = self.frames
                frame.time_base = 1 / self.rate
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames += 1
            except Exception as exc:  # a full disk, say: stop encoding, keep what is written
                self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        try:
            for packet in self._stream.encode():  # flush the encoder's delayed frames
                self._container.mux(packet)
        except Exception as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        self._container.close()
        if self.error:
            log.error("video '%s': %s (%d frames written)", self.path, self.error, self.frames)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
