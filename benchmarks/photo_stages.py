"""The photo pipeline in one process: where its time goes, and how long it takes to start.

`photo_speed.py` times `rapidpose predict` as a user runs it; this script looks inside. It runs
`photos.pipeline.predict_photos` over a folder repeated --repeat times, for each --decoder and
--images-per-batch, and prints images/s after a warm-up pass, the seconds to the first result, and how
long the detecting worker thread (PoseEstimator.detect) and the pose thread (PoseEstimator.predict) were
busy: the busier one is the bottleneck (they share one GIL). With --startup it first times, in a fresh
process, `import torch`, CUDA's start, the estimator and the first result. Random weights: speed only.

    python benchmarks/photo_stages.py --repeat 100 --decoder cpu gpu --startup
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"

STARTUP = """
import sys, time; t0 = time.perf_counter()
import torch; t1 = time.perf_counter()
if torch.cuda.is_available(): torch.zeros(1, device="cuda")
t2 = time.perf_counter()
from rapidpose.topdown.estimator import PoseEstimator
from rapidpose.photos.pipeline import predict_photos
from rapidpose.io import expand_paths
t3 = time.perf_counter()
est = PoseEstimator(sys.argv[1], detector=sys.argv[2], device=sys.argv[3])
t4 = time.perf_counter()
next(predict_photos(est, expand_paths([sys.argv[4]]), images_per_batch=int(sys.argv[5])))
t5 = time.perf_counter()
print(f"| {t1 - t0:.2f} | {t2 - t1:.2f} | {t3 - t2:.2f} | {t4 - t3:.2f} | {t5 - t4:.2f} | {t5 - t0:.2f} |")
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=str(ASSETS / "images" / "coco-val2017-100"))
    p.add_argument("--repeat", type=int, default=10, help="take the folder's photos this many times in a row")
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    p.add_argument("--detector", default=str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"))
    p.add_argument("--decoder", nargs="+", default=["auto"], choices=["auto", "cpu", "gpu"])
    p.add_argument("--images-per-batch", type=int, nargs="+", default=[64])
    p.add_argument("--startup", action="store_true", help="time the start-up in a fresh process first")
    args = p.parse_args()

    import torch

    from rapidpose.evaluate.speed import random_model
    from rapidpose.io import expand_paths
    from rapidpose.photos.pipeline import predict_photos
    from rapidpose.topdown.estimator import PoseEstimator

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = expand_paths([args.folder]) * args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pth"
        torch.save({"state_dict": random_model(args.variant).state_dict()}, checkpoint)
        if args.startup:
            print("| import torch | CUDA start | import rapidpose | estimator | first result | total (s) |")
            print("|---:|---:|---:|---:|---:|---:|")
            for _ in range(2):
                out = subprocess.run([sys.executable, "-c", STARTUP, str(checkpoint), args.detector, device,
                                      args.folder, str(args.images_per_batch[0])], capture_output=True, text=True)
                print(out.stdout.strip() or out.stderr[-2000:], flush=True)
            print()
        est = PoseEstimator(str(checkpoint), detector=args.detector, device=device)
        busy: dict = collections.defaultdict(float)
        for name in ("detect", "predict"):
            original = getattr(est, name)

            def timed(*a, _original=original, _name=name, **k):
                start = time.perf_counter()
                try:
                    return _original(*a, **k)
                finally:
                    busy[_name] += time.perf_counter() - start

            setattr(est, name, timed)
        print(f"{len(paths):,} photos, ViTPose-{args.variant.upper()} (random weights), {device}\n")
        print("| decoder | images a batch | images/s | people/s | first result (s) | detect thread busy (s) | "
              "pose thread busy (s) | wall (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for decoder in args.decoder:
            for per_batch in args.images_per_batch:
                list(predict_photos(est, paths[:200], images_per_batch=per_batch, decoder=decoder))  # warm-up
                busy.clear()
                n = people = 0
                first = None
                start = time.perf_counter()
                for result in predict_photos(est, paths, images_per_batch=per_batch, decoder=decoder):
                    n += 1
                    people += len(result.poses) if result.poses is not None else 0
                    first = first if first is not None else time.perf_counter() - start
                wall = time.perf_counter() - start
                print(f"| {decoder} | {per_batch} | {n / wall:,.0f} | {people / wall:,.0f} | {first:.2f} | "
                      f"{busy['detect']:.2f} | {busy['predict']:.2f} | {wall:.2f} |", flush=True)


if __name__ == "__main__":
    main()
