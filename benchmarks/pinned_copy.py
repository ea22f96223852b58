"""The GPU path's host copy of a chunk's image regions into a page-locked buffer, before their upload: the
uploader's copy (gpu_ops.copy_arrays: torch's threaded copy for sources of 1 MB or more) against numpy's
copyto on one thread. A call's first network batch waits for this copy. Synthetic 720p images with
`--people` boxes each, `--images` of them (a network batch of 64 people is about 11 images of 6).

    python benchmarks/pinned_copy.py --images 11 --people 6
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rapidpose.evaluate.speed import synthetic_boxes
from rapidpose.topdown.geometry import INPUT_SIZE, boxes_to_center_scale, udp_matrices
from rapidpose.topdown.gpu_ops import PinnedUploader, copy_arrays, crop_regions


def median_ms(fn, calls: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=11)
    p.add_argument("--people", type=int, default=6)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.images)]
    matrices = np.concatenate([udp_matrices(*boxes_to_center_scale(synthetic_boxes(1280, 720, args.people)))
                               for _ in images])
    views, _ = crop_regions(images, matrices, [args.people] * len(images), INPUT_SIZE)
    offsets, total = PinnedUploader.layout([v.nbytes for v in views])
    # page-locked where a GPU is there (as the uploader's), else plain memory
    buffer = torch.empty(total, dtype=torch.uint8, pin_memory=torch.cuda.is_available()).numpy()
    pairs = [(buffer[start:start + v.nbytes].reshape(v.shape), v) for v, start in zip(views, offsets)]

    def numpy_one_thread():
        for destination, source in pairs:
            np.copyto(destination, source)

    print(f"{len(views)} regions, {total / 1e6:.1f} MB, torch intra-op threads {torch.get_num_threads()}, "
          f"page-locked: {torch.cuda.is_available()}\n\n| copy | ms (median of 30) | GB/s |\n|---|---:|---:|")
    for name, fn in [("gpu_ops.copy_arrays (the uploader's)", lambda: copy_arrays(pairs)),
                     ("numpy copyto, one thread", numpy_one_thread)]:
        ms = median_ms(fn)
        print(f"| {name} | {ms:.3f} | {total / ms / 1e6:.1f} |")
    assert all(np.array_equal(d, s) for d, s in pairs)


if __name__ == "__main__":
    main()
