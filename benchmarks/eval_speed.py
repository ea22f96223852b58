"""How long `rapidpose eval` takes: coco-mini (60 COCO val2017 photos, 29 people) with ground-truth
boxes, a ViTPose of a published shape with random weights (speed only: the AP means nothing), the
whole protocol (read, crop, network, decode, rescoring, OKS-NMS, pycocotools). Prints a table row.

    python benchmarks/eval_speed.py --variant s --device cpu [--flip] [--backend torch] [--precision fp32]
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from rapidpose.evaluate.coco import evaluate
from rapidpose.evaluate.speed import random_model
from rapidpose.topdown.estimator import PoseEstimator

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "assets" / "images" / "coco-mini"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="s", choices=["s", "b", "l", "h"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--flip", action="store_true")
    p.add_argument("--annotations", default=str(COCO_MINI / "person_keypoints.json"))
    p.add_argument("--images", default=str(COCO_MINI / "images"))
    p.add_argument("--repeats", type=int, default=2, help="runs after a warm-up run; the best is printed")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    est = PoseEstimator(random_model(args.variant), device=args.device, flip_test=args.flip,
                        backend=args.backend, precision=args.precision)
    evaluate(est, args.annotations, args.images, limit=4)  # warm-up: first-call costs are not evaluation
    best = min((evaluate(est, args.annotations, args.images) for _ in range(args.repeats)), key=lambda r: r.seconds)
    print(f"ViTPose-{args.variant.upper()} (random weights), {type(est.runtime).__name__} "
          f"{getattr(est.runtime, 'precision', args.precision)}, {args.device}, {os.cpu_count()} CPU cores, "
          f"flip {'on' if args.flip else 'off'}, ground-truth boxes\n")
    print("| images | people | seconds | people/s |\n|---:|---:|---:|---:|")
    print(f"| {best.images} | {best.people} | {best.seconds:.2f} | {best.people_per_s:.1f} |")


if __name__ == "__main__":
    main()
