"""The GPU path's host copy of a chunk's image regions into a page-locked buffer, before their upload: the
uploader's copy (gpu_ops.copy_arrays: the regions shared by up to 8 Python threads where the chunk holds 1 MB or
more) against numpy's copyto on one thread, and torch's copy (its OpenMP intra-op threads) of each region.
A call's first network batch waits for this copy. Synthetic 720p images with `--people` boxes each,
`--images` of them a chunk (a network batch of 64 people is about 11 images of 6); the copies take the
chunks of `--sets` such sets in turn, so that their sources come from memory as a call's photos do, not from
the cache of the last copy. With --busy each copy is timed again while that many processes spin on the
host's cores, as decoding processes or compile workers keep them busy.

    python benchmarks/pinned_copy.py --images 11 --people 6 --sets 16 --busy 16
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import time

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
    p.add_argument("--busy", type=int, default=0, help="also time the copies beside this many spinning processes")
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

    def torch_threads(pairs):
        for destination, source in pairs:
            torch.from_numpy(destination).copy_(torch.from_numpy(source))

    print(f"{len(probe)} image regions a chunk, {total / 1e6:.1f} MB, {args.sets} chunks in turn "
          f"({args.sets * args.images * 720 * 1280 * 3 / 1e6:.0f} MB of images), torch intra-op threads "
          f"{torch.get_num_threads()}, page-locked: {torch.cuda.is_available()}\n\n"
          f"| copy | host | ms (median of {args.calls}) | GB/s |\n|---|---|---:|---:|")
    for busy in sorted({0, args.busy}):
        spinning = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinning:
            process.start()
        host = f"{busy} processes spinning" if busy else "idle"
        for name, fn in [("gpu_ops.copy_arrays (the uploader's)", copy_arrays),
                         ("numpy copyto, one thread", numpy_one_thread),
                         ("torch copy_ (OpenMP threads)", torch_threads)]:
            ms = median_ms(lambda: fn(next(turn)), args.calls)
            print(f"| {name} | {host} | {ms:.3f} | {total / ms / 1e6:.1f} |")
            pairs = next(turn)
            fn(pairs)
            assert all(np.array_equal(d, s) for d, s in pairs), name
        for process in spinning:
            process.terminate()


def spin():
    while True:
        pass


if __name__ == "__main__":
    main()
