"""Where one call of the whole path goes (benchmarks/pipeline_speed.py's call: decoded 720p images with given
boxes -> keypoints), on one time axis: the host's stages (crop: regions, pinned copies, uploads and warps
queued; network: batches queued; decode) and the GPU's kernels and copies, with the GPU's idle gaps.

torch.profiler records one call after warm-up calls; the stages are the estimator's own timer names. Random
weights (speed only).

    python benchmarks/pipeline_timeline.py --precision fp8 --compile
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from rapidpose.evaluate.speed import random_model, synthetic_boxes
from rapidpose.topdown.estimator import PoseEstimator

STAGE = "stage:"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--precision", default="fp16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--gap", type=float, default=0.08, help="GPU idle gaps listed from this many ms (default 0.08)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("this times the GPU path: run it on a machine with an NVIDIA GPU")

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.images)]
    boxes = [synthetic_boxes(1280, 720, args.people) for _ in images]
    est = PoseEstimator(random_model(args.variant), device="cuda", precision=args.precision, compile=args.compile,
                        batch_size=args.batch_size)
    for _ in range(4):
        est.predict(images, boxes)
    torch.cuda.synchronize()
    start = time.perf_counter()
    est.predict(images, boxes)
    torch.cuda.synchronize()
    print(f"ViTPose-{args.variant.upper()} {est.runtime.precision}{', compiled' if args.compile else ''}, "
          f"{args.images} images x {args.people} given boxes, {torch.cuda.get_device_name()}: one call "
          f"{(time.perf_counter() - start) * 1e3:.1f} ms unprofiled\n")

    est.timer = lambda name: record_function(STAGE + name)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function(STAGE + "call"):
            est.predict(images, boxes)
        torch.cuda.synchronize()
    events = prof.events()
    call = next(e for e in events if e.name == STAGE + "call" and e.device_type == torch.autograd.DeviceType.CPU)
    origin = call.time_range.start

    def ms(us: float) -> str:
        return f"{(us - origin) / 1e3:7.2f}"

    print(f"profiled call: {(call.time_range.end - origin) / 1e3:.2f} ms\n\nhost stages (ms from the call's start)")
    stages = [e for e in events if e.name.startswith(STAGE) and e.name != STAGE + "call"
              and e.device_type == torch.autograd.DeviceType.CPU]
    for e in sorted(stages, key=lambda e: e.time_range.start):
        print(f"  {e.name[len(STAGE):]:8s} {ms(e.time_range.start)} -> {ms(e.time_range.end)}")
    gpu = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                 if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(STAGE))
    busy = sum(end - begin for begin, end, _ in gpu)
    print(f"\nGPU: first work at {ms(gpu[0][0]).strip()} ms, last ends at {ms(max(e for _, e, _ in gpu)).strip()} ms, "
          f"busy {busy / 1e3:.2f} ms ({len(gpu)} kernels and copies); idle gaps of {args.gap} ms or more:")
    end = gpu[0][1]
    for begin, stop, name in gpu[1:]:
        if begin - end >= args.gap * 1e3:
            print(f"  {ms(end)} -> {ms(begin)} ({(begin - end) / 1e3:.2f} ms), then {name[:60]}")
        end = max(end, stop)
    top = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    print("\nhost time by operation (self ms, calls): " + "; ".join(
        f"{e.key[:40]} {e.self_cpu_time_total / 1e3:.2f} x{e.count}" for e in top[:14]))


if __name__ == "__main__":
    main()
