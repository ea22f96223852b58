"""Where the whole path's time goes on a GPU: torch profiler tables (host time per op, GPU time per
kernel) for one person in one image and for a batch of images, with given boxes; then one call of the
batch on one time axis: the host's stages (the estimator's timer names: crop = regions, pinned copies,
uploads and warps queued; network = batches queued; decode) and the GPU's work, with its idle gaps;
last, one call without the profiler (which slows the host): each stage's start and end on the host's
clock and when the GPU reached them (CUDA events recorded there), with the parts of crop and decode
indented under them (the regions, their upload, the crop kernel; the peaks queued, a batch's keypoints on
the host), and a median of 15 calls.

    python benchmarks/profile_pipeline.py --variant b --images 64 --people 6
    python benchmarks/profile_pipeline.py --images 32 --precision fp8 --compile
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import time
from unittest import mock

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from rapidpose.evaluate.speed import random_model, synthetic_boxes
from rapidpose.timing import no_timer
from rapidpose.topdown import crop_kernel, gpu_ops
from rapidpose.topdown.estimator import PoseEstimator

STAGE = "stage:"


def report(title, fn, rows):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    print(f"## {title}: {(time.perf_counter() - start) / 20 * 1e3:.2f} ms per call\n")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
    print(table.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))


def timeline(est, images, boxes, gap_ms: float) -> None:
    """One profiled call: the host's stages and the GPU's work on one axis, from the call's start."""
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    est.timer = lambda name: record_function(STAGE + name)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function(STAGE + "call"):
            est.predict(images, boxes)
        torch.cuda.synchronize()
    events = prof.events()
    call = next(e for e in events if e.name == STAGE + "call" and e.device_type == cpu)
    origin = call.time_range.start

    def ms(us: float) -> str:
        return f"{(us - origin) / 1e3:7.2f}"

    print(f"## One call on one axis (profiled: {(call.time_range.end - origin) / 1e3:.2f} ms)\n\nhost stages, ms "
          "from the call's start")
    stages = [e for e in events if e.name.startswith(STAGE) and e.name != STAGE + "call" and e.device_type == cpu]
    for e in sorted(stages, key=lambda e: e.time_range.start):
        print(f"  {e.name[len(STAGE):]:8s} {ms(e.time_range.start)} -> {ms(e.time_range.end)}")
    gpu = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                 if e.device_type == cuda and not e.name.startswith(STAGE))
    busy = sum(end - begin for begin, end, _ in gpu)
    print(f"\nGPU: first work at {ms(gpu[0][0]).strip()} ms, the last ends at {ms(max(e for _, e, _ in gpu)).strip()} "
          f"ms, busy {busy / 1e3:.2f} ms ({len(gpu)} kernels and copies); idle gaps of {gap_ms} ms or more:")
    end = gpu[0][1]
    for begin, stop, name in gpu[1:]:
        if begin - end >= gap_ms * 1e3:
            print(f"  {ms(end)} -> {ms(begin)} ({(begin - end) / 1e3:.2f} ms), then {name[:60]}")
        end = max(end, stop)


class StageEvents:
    """The estimator's timer: at each stage's start and end, the host's clock and a CUDA event (the GPU's
    progress through the queue at that point), without the profiler's overhead."""

    def __init__(self):
        self.marks = []  # (name, host seconds, event)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.mark(name + " >")
        yield
        self.mark(name + " <")

    def mark(self, name: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.marks.append((name, time.perf_counter(), event))

    def marked(self, function, label: str):
        """`function` with a mark at its start and end, shown indented under the estimator's stages."""
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with self("  " + label):
                return function(*args, **kwargs)
        return wrapper


# the parts of the GPU path's stages (crop: the regions, their upload, the crop kernel; decode: the peaks queued,
# a batch's keypoints on the host once landed), marked in the call without the profiler
INNER_STAGES = [(gpu_ops, "crop_regions", "regions"), (gpu_ops.PinnedUploader, "upload", "upload"),
                (crop_kernel, "warp_crops_packed", "crop kernel"), (gpu_ops, "peaks_on_device", "peaks"),
                (gpu_ops, "keypoints_from_peak_rows", "keypoints on the host")]


def event_timeline(est, images, boxes) -> None:
    """One call's stages on the host's clock and the GPU's, from the call's start; a GPU time far behind the
    host's is work the GPU had queued (the host ran ahead), one equal to it an idle GPU that waited."""
    calls = []
    for _ in range(15):
        torch.cuda.synchronize()
        start = time.perf_counter()
        est.predict(images, boxes)
        torch.cuda.synchronize()
        calls.append(time.perf_counter() - start)
    events = StageEvents()
    est.timer = events
    torch.cuda.synchronize()
    with contextlib.ExitStack() as parts:
        for owner, name, label in INNER_STAGES:  # marks inside the estimator's stages too
            parts.enter_context(mock.patch.object(owner, name, events.marked(getattr(owner, name), label)))
        events.mark("call >")
        est.predict(images, boxes)
        events.mark("call <")
    torch.cuda.synchronize()
    est.timer = no_timer
    _, origin, first = events.marks[0]
    print(f"\n## One call without the profiler (median of 15 calls: {np.median(calls) * 1e3:.2f} ms)\n\n"
          "| stage | host, ms from the start | GPU reached it, ms |\n|---|---:|---:|")
    for name, host, event in events.marks:
        print(f"| {name} | {(host - origin) * 1e3:.2f} | {first.elapsed_time(event):.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="b")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch-size", type=int, default=64, help="the network's batch (default 64, the estimator's)")
    p.add_argument("--gap", type=float, default=0.08, help="GPU idle gaps listed from this many ms (default 0.08)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("this profiles the GPU path: run it on a machine with an NVIDIA GPU")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.images)]
    boxes = [synthetic_boxes(1280, 720, args.people) for _ in images]
    est = PoseEstimator(random_model(args.variant), device="cuda", precision=args.precision, compile=args.compile,
                        batch_size=args.batch_size)
    print(f"ViTPose-{args.variant.upper()} {est.runtime.precision}{', compiled' if args.compile else ''}, "
          f"{torch.cuda.get_device_name()}, random weights (speed only)\n")
    report("one person in one image", lambda: est.predict(images[:1], [boxes[0][:1]]), args.rows)
    report(f"{args.images} images, {args.people} people each", lambda: est.predict(images, boxes), args.rows)
    timeline(est, images, boxes, args.gap)
    est.timer = no_timer
    event_timeline(est, images, boxes)


if __name__ == "__main__":
    main()
