"""End-to-end video speed: read, detect (RTMDet-nano), track, pose, draw and write the H.264 mp4,
as `rapidpose video` runs it, in frames/s. The first pass warms up (CUDA graphs, cuDNN choices);
the figure is the median of the timed passes, each from opening the video to closing the mp4.

    python benchmarks/video_speed.py --variant b --video ../shared/assets/video/two-people-1080p.mp4
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from rapidpose.bench import random_model
from rapidpose.pipeline import PoseEstimator
from rapidpose.sources import open_source
from rapidpose.video_cli import process_video

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--video", default=str(ASSETS / "video" / "two-people-1080p.mp4"))
    p.add_argument("--detector", default=str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"))
    p.add_argument("--device", default="auto")
    p.add_argument("--detect-every", type=int, nargs="+", default=[1])
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--no-video", action="store_true", help="also time without writing the mp4")
    args = p.parse_args()

    est = PoseEstimator(random_model(args.variant), detector=args.detector, device=args.device)
    src = open_source(args.video)
    name = torch.cuda.get_device_name() if est.on_gpu else "cpu"
    print(f"ViTPose-{args.variant.upper()} ({type(est.runtime).__name__} {est.runtime.precision}), RTMDet-nano, "
          f"ByteTrack, {Path(args.video).name} ({src.size[0]}x{src.size[1]}, {src.frame_count} frames), {name}, "
          f"random weights (speed only)\n")
    print("| detect every | mp4 written | frames/s (median) | passes |\n|---:|---|---:|---|")
    with tempfile.TemporaryDirectory() as folder:
        for every in args.detect_every:
            for write in ([True, False] if args.no_video else [True]):
                out = str(Path(folder) / "out.mp4") if write else None
                rates = []
                for n in range(args.passes + 1):
                    stats = process_video(est, open_source(args.video), out=out, detect_every=every,
                                          preset=args.preset)
                    if n:  # pass 0 warms up
                        rates.append(stats["frames_per_s"])
                print(f"| {every} | {'yes' if write else 'no'} | {statistics.median(rates):.1f} | "
                      f"{', '.join(f'{r:.0f}' for r in rates)} |", flush=True)


if __name__ == "__main__":
    main()
