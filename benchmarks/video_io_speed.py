"""The host's video work alone, without any pose work: decoding a video (OpenCV, and PyAV with
FFmpeg's frame threads, both to RGB) and encoding it again as H.264 (libx264, several presets; one
encoder, then several encoders in parallel processes, as a chunked encoder would run), in frames/s.
These bound what `rapidpose video` can reach on one stream, whatever the GPU.

    python benchmarks/video_io_speed.py --video ../shared/assets/video/two-people-1080p.mp4
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import cv2

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--video", default=str(ASSETS / "video" / "two-people-1080p.mp4"))
    p.add_argument("--presets", nargs="+", default=["ultrafast", "superfast", "veryfast"])
    p.add_argument("--repeats", type=int, default=3, help="encode the decoded frames this many times")
    p.add_argument("--parallel", type=int, nargs="+", default=[4, 8], help="encoders run side by side")
    p.add_argument("--detector", default=str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"))
    args = p.parse_args()

    cap = cv2.VideoCapture(args.video)
    frames, start = [], time.perf_counter()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    opencv = len(frames) / (time.perf_counter() - start)
    h, w = frames[0].shape[:2]
    print(f"{Path(args.video).name}: {len(frames)} frames of {w}x{h}, {os.cpu_count()} CPU cores\n")
    print("| step | frames/s |\n|---|---:|")
    print(f"| decode, OpenCV (+ BGR->RGB) | {opencv:.0f} |")
    with av.open(args.video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start, n = time.perf_counter(), 0
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    print(f"| decode, PyAV with frame threads (to RGB) | {n / (time.perf_counter() - start):.0f} |")
    _time_detection(args.detector, frames)
    for preset in args.presets:
        rate = _encode(args.video, preset, args.repeats, threads=0)
        print(f"| encode, libx264 {preset} (from RGB) | {rate:.0f} |", flush=True)
    for workers in args.parallel:
        threads = max(1, (os.cpu_count() or 1) // workers)
        barrier = multiprocessing.Manager().Barrier(workers)
        with ProcessPoolExecutor(workers) as pool:
            jobs = [pool.submit(_encode, args.video, args.presets[0], args.repeats, threads, barrier)
                    for _ in range(workers)]
            rate = sum(job.result() for job in jobs)
        print(f"| encode, {workers} libx264 {args.presets[0]} encoders in parallel ({threads} threads each) | "
              f"{rate:.0f} |", flush=True)


def _time_detection(path: str, frames) -> None:
    """Person detection of every frame as `rapidpose video` runs it: parallel onnxruntime copies."""
    from rapidpose.detect import load_detector
    from rapidpose.video import _Detectors

    for workers in sorted({1, max(1, min(8, (os.cpu_count() or 1) // 4)), max(1, (os.cpu_count() or 1) // 2)}):
        detectors = _Detectors(load_detector(path), 0.1, workers)
        [f.result() for f in detectors.submit(frames[:8])]  # warm-up
        start = time.perf_counter()
        [f.result() for f in detectors.submit(frames * 2)]
        rate = 2 * len(frames) / (time.perf_counter() - start)
        detectors.close()
        print(f"| detect, {Path(path).stem}, {workers} onnxruntime copies in parallel | {rate:.0f} |", flush=True)


def _encode(video: str, preset: str, repeats: int, threads: int, barrier=None) -> float:
    """Frames/s of encoding `video`'s frames (decoded first, not timed) `repeats` times."""
    with av.open(video) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as folder, av.open(str(Path(folder) / "out.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": preset}
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        if barrier is not None:
            barrier.wait()  # the parallel encoders start together
        start = time.perf_counter()
        for _ in range(repeats):
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        return repeats * len(frames) / (time.perf_counter() - start)

if __name__ == "__main__":
    main()
