"""The GPU path's host copy of a chunk's image regions into a page-locked buffer, before their upload: the
uploader's copy (gpu_ops.copy_arrays: torch's threaded copy of each region where the chunk holds 1 MB or
more) against numpy's copyto on one thread and on a pool of Python threads. A call's first network batch
waits for this copy. Synthetic 720p images with `--people` boxes each, `--images` of them a chunk (a network
batch of 64 people is about 11 images of 6); the copies take the chunks of `--sets` such sets in turn, so
that their sources come from memory as a call's photos do, not from the cache of the last copy.

    python benchmarks/pinned_copy.py --images 11 --people 6 --sets 16
"""
from __future__ import annotations

import argparse
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rapidpose.evaluate.speed import synthetic_boxes
from rapidpose.topdown.geometry import INPUT_SIZE, boxes_to_center_scale, udp_matrices
from rapidpose.topdown.gpu_ops import PinnedUploader, copy_arrays, crop_regions


def median_ms(fn, calls: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def chunk_pairs(rng, images: int, people: int, buffer: np.ndarray) -> list:
    """(pinned destination, region) pairs of one chunk of fresh images, laid out as the uploader does."""
    sources = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(images)]
    matrices = np.concatenate([udp_matrices(*boxes_to_center_scale(synthetic_boxes(1280, 720, people)))
                               for _ in sources])
    views, _ = crop_regions(sources, matrices, [people] * images, INPUT_SIZE)
    offsets, _ = PinnedUploader.layout([v.nbytes for v in views])
    return [(buffer[start:start + v.nbytes].reshape(v.shape), v) for v, start in zip(views, offsets)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=11, help="images a chunk (default 11)")
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--sets", type=int, default=16, help="chunks of images taken in turn (default 16)")
    p.add_argument("--calls", type=int, default=48)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    probe = chunk_pairs(rng, args.images, args.people, np.empty(1 << 26, np.uint8))
    _, total = PinnedUploader.layout([source.nbytes for _, source in probe])
    # page-locked where a GPU is there (as the uploader's), else plain memory
    buffer = torch.empty(total, dtype=torch.uint8, pin_memory=torch.cuda.is_available()).numpy()
    chunks = [chunk_pairs(rng, args.images, args.people, buffer) for _ in range(args.sets)]
    turn = itertools.cycle(chunks)

    def numpy_one_thread(pairs):
        for destination, source in pairs:
            np.copyto(destination, source)

    def numpy_threads(workers):
        pool = ThreadPoolExecutor(workers)

        def run(pairs):
            list(pool.map(numpy_one_thread, [pairs[i::workers] for i in range(workers)]))
        return run

    print(f"{len(probe)} image regions a chunk, {total / 1e6:.1f} MB, {args.sets} chunks in turn "
          f"({args.sets * args.images * 720 * 1280 * 3 / 1e6:.0f} MB of images), torch intra-op threads "
          f"{torch.get_num_threads()}, page-locked: {torch.cuda.is_available()}\n\n"
          f"| copy | ms (median of {args.calls}) | GB/s |\n|---|---:|---:|")
    for name, fn in [("gpu_ops.copy_arrays (the uploader's)", copy_arrays),
                     ("numpy copyto, one thread", numpy_one_thread),
                     ("numpy copyto, 4 Python threads", numpy_threads(4)),
                     ("numpy copyto, 8 Python threads", numpy_threads(8))]:
        ms = median_ms(lambda: fn(next(turn)), args.calls)
        print(f"| {name} | {ms:.3f} | {total / ms / 1e6:.1f} |")
        pairs = next(turn)
        fn(pairs)
        assert all(np.array_equal(d, s) for d, s in pairs), name


if __name__ == "__main__":
    main()
