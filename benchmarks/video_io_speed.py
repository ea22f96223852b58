"""The video work around the pose network, stage by stage, in frames/s: decoding (OpenCV; PyAV with
FFmpeg's frame threads to RGB, and to I420 as `rapidpose video` reads now), person detection (host
onnxruntime copies; on a GPU, RTMDet on batches of frames uploaded as I420), and H.264 encoding
(libx264: one encoder per preset, several in parallel processes, and rapidpose's VideoWriter fed RGB
or I420). These bound what `rapidpose video` can reach on one stream.

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
    with av.open(args.video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start, cpu, yuv = time.perf_counter(), sum(os.times()[:2]), []
        for frame in container.decode(stream):
            yuv.append(frame.to_ndarray())
        seconds, cpu = time.perf_counter() - start, sum(os.times()[:2]) - cpu
    print(f"| decode, PyAV with frame threads (to I420, what `rapidpose video` reads): "
          f"{1000 * cpu / len(yuv):.1f} core-ms per frame | {len(yuv) / seconds:.0f} |")
    _time_drawing(yuv)
    _time_detection(args.detector, frames)
    _time_device_detection(args.detector, yuv)
    for fmt, images in (("RGB", frames), ("I420", yuv)):
        for encoders in args.parallel:
            cpu = sum(os.times()[:2])
            rate = _write(images, w, h, args.presets[0], encoders, args.repeats)
            per_frame = 1000 * (sum(os.times()[:2]) - cpu) / (args.repeats * len(images))
            print(f"| encode, VideoWriter {args.presets[0]}, {encoders} encoders, from {fmt}: {per_frame:.1f} core-ms "
                  f"per frame | {rate:.0f} |", flush=True)
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
    from rapidpose.video.pipeline import _HostStage
    from rapidpose.video.sources import Frame

    batch = [Frame(i, 0.0, image) for i, image in enumerate(frames * 2)]
    for workers in sorted({1, max(1, min(8, (os.cpu_count() or 1) // 4)), max(1, (os.cpu_count() or 1) // 2)}):
        stage = _HostStage(load_detector(path), 0.1, workers)
        stage.submit(batch[:8], set(range(8))).detections()  # warm-up
        start = time.perf_counter()
        stage.submit(batch, {f.index for f in batch}).detections()
        rate = len(batch) / (time.perf_counter() - start)
        stage.close()
        print(f"| detect, {Path(path).stem}, {workers} onnxruntime copies in parallel | {rate:.0f} |", flush=True)


def _time_drawing(yuv) -> None:
    """Two people with boxes, track ids and 17 keypoints drawn into each I420 frame, one thread."""
    import numpy as np

    from rapidpose.draw.cpu import draw_frame
    from rapidpose.results import Poses
    from rapidpose.skeletons import SKELETONS

    h, w = yuv[0].shape[0] * 2 // 3, yuv[0].shape[1]
    joints = np.arange(17)[:, None] * np.array([0.0, 0.04 * h])
    keypoints = np.stack([joints + (0.3 * w, 0.1 * h), joints + (0.6 * w, 0.12 * h)]) + np.sin(joints) * 0.05 * w
    poses = Poses([[0.2 * w, 0.05 * h, 0.45 * w, 0.9 * h], [0.5 * w, 0.05 * h, 0.75 * w, 0.9 * h]], [0.9, 0.8],
                  keypoints, np.ones((2, 17)), SKELETONS["coco"], np.array([1, 2]))
    copies = [frame.copy() for frame in yuv]
    start = time.perf_counter()
    for frame in copies:
        draw_frame(frame, poses)
    rate = len(copies) / (time.perf_counter() - start)
    print(f"| draw 2 people into I420, one thread: {1000 / rate:.1f} ms per frame | {rate:.0f} |", flush=True)


def _time_device_detection(path: str, yuv) -> None:
    """On a GPU: batches of 16 I420 frames uploaded, converted to RGB and searched by the batched RTMDet."""
    import torch

    if not torch.cuda.is_available():
        return
    from types import SimpleNamespace

    from rapidpose.detect import load_detector
    from rapidpose.video.pipeline import _DeviceStage
    from rapidpose.video.sources import Frame

    est = SimpleNamespace(runtime=SimpleNamespace(device="cuda"), detector=load_detector(path))
    stage = _DeviceStage(est, 0.1)
    batches = [[Frame(i, 0.0, None, yuv=y) for i, y in enumerate(yuv[k:k + 16], k)] for k in range(0, len(yuv), 16)]
    for batch in batches[:2]:  # warm-up: CUDA graphs are captured
        stage.submit(batch, {f.index for f in batch}).images()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        pending = [stage.submit(batch, {f.index for f in batch}) for batch in batches]
        for work in pending:
            work.detections(), work.images()
    torch.cuda.synchronize()
    rate = 5 * len(yuv) / (time.perf_counter() - start)
    stage.close()
    print(f"| detect on the GPU: upload I420, convert, batched RTMDet, NMS ({torch.cuda.get_device_name()}) | "
          f"{rate:.0f} |", flush=True)


def _write(images, w, h, preset, encoders, repeats) -> float:
    """Frames/s of rapidpose's VideoWriter taking `images` `repeats` times, until the file is closed."""
    from rapidpose.video.writer import VideoWriter

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with VideoWriter(Path(folder) / "out.mp4", 30, (w, h), preset=preset, encoders=encoders) as writer:
            for _ in range(repeats):
                for image in images:
                    writer.write(image)
        return repeats * len(images) / (time.perf_counter() - start)


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
