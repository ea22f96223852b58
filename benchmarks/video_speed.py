"""End-to-end video speed: read, detect (RTMDet-nano), track, pose, draw and write the H.264 mp4,
as `rapidpose video` runs it, in frames/s. The first pass warms up (CUDA graphs, cuDNN choices);
the figure is the median of the timed passes, each from opening the video to closing the mp4; "host
cores busy" is the CPU time of the process and of its drawing process over the pass's wall time;
"closing" the seconds of the pass after its last frame was tracked (the mp4's last segments).
`--loops 5` also times the clip played five times in a row (remuxed, not re-encoded): the rate once
the pipeline is full, without the start and the drain of a 2.4-second clip.

    python benchmarks/video_speed.py --variant b --video ../shared/assets/video/two-people-1080p.mp4
"""
from __future__ import annotations

import argparse
import itertools
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import torch

from rapidpose.evaluate.speed import random_model
from rapidpose.topdown.estimator import PoseEstimator
from rapidpose.video.drawing_process import start_worker
from rapidpose.video.nvdec import unavailable
from rapidpose.video.pipeline import DECODERS, track_frames
from rapidpose.video.process import process_video
from rapidpose.video.sources import open_source

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--video", default=str(ASSETS / "video" / "two-people-1080p.mp4"))
    p.add_argument("--detector", default=str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"))
    p.add_argument("--device", default="auto")
    p.add_argument("--detect-every", type=int, nargs="+", default=[1])
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--preset", nargs="+", default=["veryfast"], help="x264 presets to time, one after another")
    p.add_argument("--no-video", action="store_true", help="also time without writing the mp4")
    p.add_argument("--drawn-only", action="store_true",
                   help="also time the frames drawn (on the GPU where it runs) and fetched, without the mp4's process")
    p.add_argument("--loops", type=int, nargs="+", default=[1], help="times the clip is played in a row")
    p.add_argument("--encoders", type=int, nargs="+", default=[0], help="x264 encoders side by side (0: default)")
    p.add_argument("--ready-worker", action="store_true",
                   help="start the mp4's worker process before each pass and wait until it is ready, as `rapidpose "
                        "video` starts it while the model loads (default: the pass starts it)")
    p.add_argument("--frames-per-batch", type=int, nargs="+", default=[None],
                   help="frames whose people share a network batch (default: rapidpose video's)")
    p.add_argument("--decoder", nargs="+", default=["auto"], choices=DECODERS,
                   help="video decoders to time (auto: NVDEC on the GPU where PyNvVideoCodec is installed)")
    p.add_argument("--switch-interval", type=float, nargs="+", default=[None],
                   help="Python's GIL switch interval in ms to try (default: the interpreter's, 5 ms)")
    args = p.parse_args()

    est = PoseEstimator(random_model(args.variant), detector=args.detector, device=args.device)
    src = open_source(args.video)
    name = torch.cuda.get_device_name() if est.on_gpu else "cpu"
    print(f"ViTPose-{args.variant.upper()} ({type(est.runtime).__name__} {est.runtime.precision}), RTMDet-nano, "
          f"ByteTrack, {Path(args.video).name} ({src.size[0]}x{src.size[1]}, {src.frame_count} frames), {name}, "
          f"random weights (speed only); NVDEC: {unavailable() or 'available'}\n")
    print("| frames | detect every | decoder | mp4 written (x264 preset, encoders) | frames/s (median) | passes "
          "| host cores busy | of which closing (s) |\n|---:|---:|---|---|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for loops in args.loops:
            video = args.video if loops == 1 else looped(args.video, loops, Path(folder) / "looped.mp4")
            for every in args.detect_every:
                runs = ([(e, p) for p in args.preset for e in args.encoders] + ([(None, None)] if args.no_video else [])
                        + ([(None, "drawn")] if args.drawn_only else []))
                for (encoders, preset), interval, batch, decoder in itertools.product(
                        runs, args.switch_interval, args.frames_per_batch, args.decoder):
                    if interval:
                        sys.setswitchinterval(interval / 1000)
                    out = str(Path(folder) / "out.mp4") if encoders is not None else None
                    rates, cores, closing = [], [], []
                    for n in range(args.passes + 1):
                        if args.ready_worker and out:
                            start_worker(wait=True)
                        cpu = sum(os.times()[:4])  # this process and its finished children (the drawing process)
                        if preset == "drawn":
                            stats = drawn_only(est, open_source(video), every, batch, decoder)
                        else:
                            stats = process_video(est, open_source(video), out=out, detect_every=every,
                                                  preset=preset or "veryfast", encoders=encoders or None,
                                                  frames_per_batch=batch, decoder=decoder)
                        if n:  # pass 0 warms up
                            rates.append(stats["frames_per_s"])
                            cores.append((sum(os.times()[:4]) - cpu) / stats["seconds"])
                            closing.append(stats["closing_seconds"])
                    if preset == "drawn":
                        written = "no: drawn and fetched, not written"
                    elif encoders is None:
                        written = "no"
                    else:
                        written = f"yes ({preset}, {encoders or 'default'} encoders)"
                    if interval:
                        written += f", GIL switch {interval:g} ms"
                    if batch:
                        written += f", {batch} frames a batch"
                    if args.ready_worker and out:
                        written += ", worker ready"
                    print(f"| {stats['frames']} | {every} | {decoder} | {written} | {statistics.median(rates):.1f} | "
                          f"{', '.join(f'{r:.0f}' for r in rates)} | {statistics.median(cores):.1f} | "
                          f"{statistics.median(closing):.2f} |", flush=True)


def drawn_only(est, source, every, batch, decoder) -> dict:
    """The frames tracked and drawn as for the mp4 (on the GPU where it runs there, else by cv2 on the
    tracking thread), each drawn frame fetched by a thread of its own as the mp4's feeder does, nothing
    written: what the mp4's process adds is the rest."""
    fetched: queue.Queue = queue.Queue(maxsize=32)

    def fetch():
        while (frame := fetched.get()) is not None:
            frame.drawn  # noqa: B018 (waits for the drawing and its copy to the host)

    thread = threading.Thread(target=fetch)
    thread.start()
    start, frames = time.perf_counter(), 0
    try:
        for frame, _ in track_frames(est, source, detect_every=every, frames_per_batch=batch,
                                     draw=True, decoder=decoder):
            fetched.put(frame)
            frames += 1
    finally:
        fetched.put(None)
        thread.join()
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds, "closing_seconds": 0.0}


def looped(video: str, loops: int, path: Path) -> str:
    """`video` played `loops` times in a row, its packets copied with shifted timestamps."""
    with av.open(video) as src, av.open(str(path), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        packets = [p for p in src.demux(stream) if p.dts is not None]
        pts = sorted(p.pts for p in packets)
        length = pts[-1] - pts[0] + (pts[1] - pts[0] if len(pts) > 1 else 1)  # one frame more than the span
        for k in range(loops):
            for packet in packets:
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts = packet.pts + k * length, packet.dts + k * length
                copy.is_keyframe, copy.time_base, copy.stream = packet.is_keyframe, packet.time_base, out
                dst.mux(copy)
    return str(path)


if __name__ == "__main__":
    main()
