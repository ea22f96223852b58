"""Where the whole path's time goes on a GPU: torch profiler tables (host time per op, GPU time per
kernel) for one person in one image and for a batch of images, with given boxes.

    python benchmarks/profile_pipeline.py --variant b --images 64 --people 6
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from rapidpose.evaluate.speed import random_model, synthetic_boxes
from rapidpose.topdown.estimator import PoseEstimator


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


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="b")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.images)]
    boxes = [synthetic_boxes(1280, 720, args.people) for _ in images]
    est = PoseEstimator(random_model(args.variant), device="cuda")
    report("one person in one image", lambda: est.predict(images[:1], [boxes[0][:1]]), args.rows)
    report(f"{args.images} images, {args.people} people each", lambda: est.predict(images, boxes), args.rows)


if __name__ == "__main__":
    main()
