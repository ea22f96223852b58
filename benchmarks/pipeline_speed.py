"""Whole path from decoded images with given boxes (crop, network, decode): rapidpose against
Hugging Face transformers' VitPose (image processor -> network -> post_process_pose_estimation),
same random ViTPose weights, same images and boxes, one process. Prints people/s.

    python benchmarks/pipeline_speed.py --variant b --device cuda --images 32 --people 6
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rapidpose.evaluate.speed import random_model, synthetic_boxes
from rapidpose.topdown.estimator import PoseEstimator


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up (CUDA graphs, cuDNN choices)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def transformers_path(model, device, dtype):
    """transformers' own whole path, as its documentation runs it, or None if not installed."""
    try:
        import transformers
    except ImportError:
        return None
    cfg = model.cfg
    backbone = transformers.VitPoseBackboneConfig(hidden_size=cfg.dim, num_hidden_layers=cfg.depth,
                                                  num_attention_heads=cfg.heads, layer_norm_eps=cfg.eps,
                                                  out_indices=[cfg.depth])
    hf = transformers.VitPoseForPoseEstimation(transformers.VitPoseConfig(
        backbone_config=backbone, use_simple_decoder=cfg.head == "simple", num_labels=17)).to(device, dtype).eval()
    processor = transformers.VitPoseImageProcessor()

    def run(images, boxes_xywh):
        inputs = processor(images, boxes=boxes_xywh, return_tensors="pt")
        with torch.inference_mode():
            out = hf(inputs["pixel_values"].to(device, dtype))
        out.heatmaps = out.heatmaps.float()
        return processor.post_process_pose_estimation(out, boxes=boxes_xywh)

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-transformers", action="store_true")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.images)]
    boxes = [synthetic_boxes(1280, 720, args.people) for _ in images]
    model = random_model(args.variant)
    est = PoseEstimator(model, device=args.device, precision=args.precision)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    people = args.images * args.people
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"ViTPose-{args.variant.upper()}, {args.images} images of 1280x720 with {args.people} given boxes each, "
          f"{name}, backend {type(est.runtime).__name__}, random weights (speed only)\n")
    print("| path | precision | ms per batch of images | people/s |\n|---|---|---:|---:|")
    sec = timed(lambda: est.predict(images, boxes), args.repeats, sync)
    print(f"| rapidpose | {est.runtime.precision} | {sec * 1e3:.1f} | {people / sec:,.0f} |", flush=True)
    one = timed(lambda: est.predict(images[:1], [boxes[0][:1]]), max(args.repeats, 20), sync)
    print(f"| rapidpose, one person in one image | {est.runtime.precision} | {one * 1e3:.2f} | {1 / one:,.0f} |",
          flush=True)
    if not args.no_transformers:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[est.runtime.precision] \
            if args.device.startswith("cuda") else torch.float32
        run = transformers_path(model, args.device, dtype)
        if run is not None:
            xywh = [[[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in bx.tolist()] for bx in boxes]
            sec = timed(lambda: run(images, xywh), args.repeats, sync)
            print(f"| transformers (processor, network, post-process) | {str(dtype).split('.')[-1]} | "
                  f"{sec * 1e3:.1f} | {people / sec:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
