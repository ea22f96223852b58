"""H.264 mp4 output through PyAV (FFmpeg's libx264), at the input's frame rate and size.

Audio is not copied. One x264 encoder on a single stream tops out below 220 frames/s at 1080p even
on 16 cores (benchmarks/video_io_speed.py), so the video is cut into segments of about two seconds
that several encoders compress side by side (PyAV releases the GIL while x264 works); a muxing thread
writes their packets in order. Each segment starts with a keyframe, which players seek to. `write()`
only queues the frame. `close()` always leaves a playable file: whatever was written before an error
or Ctrl-C is encoded and the mp4 index is written.

Frames are RGB (H, W, 3), converted to yuv420p in the encoder threads, or already I420 (H*3//2, W):
the yuv420p planes one after another, as sources.Frame.yuv holds them, which go to x264 as they are
(no colour conversion; even sides only). The two can be mixed.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from rapidpose.errors import InputError, check_choice

log = logging.getLogger("rapidpose")

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
_BUFFER_BYTES = 1536 << 20  # frames waiting for the encoders, all segments together


def check_preset(preset: str) -> None:
    check_choice("x264 preset", preset, PRESETS)


class VideoWriter:
    """`write(frame)` frames of one size, RGB or I420; `close()` finishes the file. A context manager.

    crf: x264 quality (18 visually lossless .. 28 small; 23 is x264's default). preset: x264's speed
    against file size. encoders: segments compressed at once (default: a quarter of the cores, 1 to 4).
    segment_frames: frames per segment (default about two seconds, fewer for large frames so that the
    frames in flight stay within 1.5 GiB, and for a short video of `frame_count` frames so that every
    encoder gets a part).
    """

    def __init__(self, path, fps: float, size, crf: int = 23, preset: str = "veryfast",
                 encoders: int | None = None, segment_frames: int | None = None, frame_count: int | None = None):
        import av  # PyAV: FFmpeg with libx264 in its wheels (OpenCV's pip builds have no H.264 encoder)

        check_preset(preset)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in size)
        # yuv420p (what every player takes) needs even sides: an odd one gets a copied edge row/column
        self.size, self._even = (w, h), (w + w % 2, h + h % 2)
        if self._even != self.size:
            log.warning("%s: %dx%d has an odd side; the video is %dx%d (edge pixels repeated)",
                        self.path.name, w, h, *self._even)
        self.rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30)
        cores = os.cpu_count() or 1
        self.encoders = max(1, encoders or min(4, cores // 4))
        # twice its share of the cores: while the video ends (or the frames come slowly) fewer segments
        # are in flight, and the last one decides when the file is done
        self._threads = max(1, min(cores, 2 * cores // self.encoders))
        in_flight = _BUFFER_BYTES // (3 * w * h * (self.encoders + 1))
        longest = int(np.clip(in_flight, 16, max(16, round(2 * self.rate))))
        if frame_count:
            longest = min(longest, max(8, -(-int(frame_count) // self.encoders)))
        self.segment_frames = segment_frames or longest
        try:
            self._container = av.open(str(self.path), "w")
        except Exception as exc:
            raise InputError(f"cannot write video '{self.path}': {exc}") from None
        self._av, self._options = av, {"crf": str(crf), "preset": preset}
        self._stream = self._container.add_stream("libx264", rate=self.rate)
        self._configure(self._stream.codec_context)
        self._stream.codec_context.open()  # its parameter sets (the same for every encoder) go in the header
        self.frames = 0  # frames in the file so far
        self.error: str | None = None
        self._written = 0  # frames handed to write()
        self._segment: queue.Queue | None = None  # frames of the segment being filled
        self._pool = ThreadPoolExecutor(self.encoders, thread_name_prefix="encode")
        self._order: queue.Queue = queue.Queue(maxsize=self.encoders)  # segments to mux, in order
        self._muxer = threading.Thread(target=self._mux, name=f"mux {self.path.name}", daemon=True)
        self._muxer.start()

    def _configure(self, ctx):
        ctx.width, ctx.height = self._even
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = 1 / self.rate
        ctx.framerate = self.rate
        ctx.options = dict(self._options)
        ctx.thread_type = "AUTO"  # x264's frame threads: sliced threads (the default here) are far slower
        ctx.thread_count = self._threads

    def write(self, image: np.ndarray) -> None:
        """Queue one frame of the writer's size W x H: RGB uint8 (H, W, 3), or I420 uint8 (H*3//2, W)
        (Y, then U and V at half resolution; W and H even), which is encoded without a colour
        conversion. The array is read later, on an encoder thread: do not change it after the call."""
        w, h = self.size
        if image.ndim == 2:
            if self._even != self.size:
                raise InputError(f"an I420 frame for a {w}x{h} video: I420 needs even sides, pass RGB (H, W, 3) "
                                 f"frames for this size")
            if image.shape != (h * 3 // 2, w) or image.dtype != np.uint8:
                raise InputError(f"I420 frame of {image.dtype} {image.shape} for a {w}x{h} video: expected uint8 "
                                 f"({h * 3 // 2}, {w})")
        elif image.shape[:2] != (h, w):
            raise InputError(f"frame of {image.shape[1]}x{image.shape[0]} for a {w}x{h} video")
        if self.error:
            raise InputError(f"writing '{self.path}' failed: {self.error}")
        if self._written % self.segment_frames == 0:
            self._end_segment()
            self._segment = queue.Queue(maxsize=self.segment_frames + 1)
            # blocks while `encoders` earlier segments wait to be muxed: the writer holds bounded memory
            self._order.put(self._pool.submit(self._encode, self._segment, self._written))
        self._segment.put(image)
        self._written += 1

    def _end_segment(self):
        if self._segment is not None:
            self._segment.put(None)
            self._segment = None

    def _encode(self, frames: queue.Queue, start: int) -> list:
        """Compress one segment (frames arrive on `frames` until None) with an encoder of its own."""
        ctx = self._av.CodecContext.create("libx264", "w")
        self._configure(ctx)
        ctx.flags = self._stream.codec_context.flags  # parameter sets in the header, as the mp4 wants
        packets, index = [], start
        while (image := frames.get()) is not None:
            if self.error:
                continue  # drain; write() reports the error
            if image.ndim == 2:  # I420: the encoder's own format, no conversion
                frame = self._av.VideoFrame.from_ndarray(image, format="yuv420p")
            else:
                if self._even != self.size:
                    image = np.pad(image, ((0, self._even[1] - self.size[1]), (0, self._even[0] - self.size[0]),
                                           (0, 0)), mode="edge")
                frame = self._av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, 1 / self.rate
            packets += ctx.encode(frame)
            index += 1
        packets += ctx.encode(None)  # the encoder's delayed frames
        return packets

    def _mux(self):
        while (segment := self._order.get()) is not None:
            try:
                packets = segment.result()
                for packet in packets:
                    packet.stream = self._stream
                    self._container.mux(packet)
                self.frames += sum(1 for p in packets if p.size)
            except Exception as exc:  # a full disk, say: stop writing, keep what is written
                self.error = self.error or f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self._muxer is None:
            return
        self._end_segment()
        self._order.put(None)
        self._muxer.join()
        self._muxer = None
        self._pool.shutdown(wait=True)
        self._container.close()
        if self.error:
            log.error("video '%s': %s (%d frames written)", self.path, self.error, self.frames)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
