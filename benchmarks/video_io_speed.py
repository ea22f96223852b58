"""The host's video work alone, without any pose work: decoding a video (OpenCV, and PyAV with
FFmpeg's frame threads, both to RGB) and encoding it again as H.264 (libx264, several presets), in
frames/s. These bound what `rapidpose video` can reach on one stream, whatever the GPU.

    python benchmarks/video_io_speed.py --video ../shared/assets/video/two-people-1080p.mp4
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import cv2

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--video", default=str(ASSETS / "video" / "two-people-1080p.mp4"))
    p.add_argument("--presets", nargs="+", default=["ultrafast", "superfast", "veryfast"])
    p.add_argument("--repeats", type=int, default=3, help="encode the decoded frames this many times")
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
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            with av.open(str(Path(folder) / f"{preset}.mp4"), "w") as out:
                stream = out.add_stream("libx264", rate=30)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.options = {"preset": preset}
                stream.codec_context.thread_type = "AUTO"
                start = time.perf_counter()
                for _ in range(args.repeats):
                    for image in frames:
                        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                            out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            rate = args.repeats * len(frames) / (time.perf_counter() - start)
            print(f"| encode, libx264 {preset} (from RGB) | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
