"""Whole path from decoded images with given boxes (crop, network, decode): rapidpose against
Hugging Face transformers' VitPose (image processor -> network -> post_process_pose_estimation),
the same random ViTPose weights in both, same images and boxes, one process. Prints ms per person,
people/s and the ratio to transformers of each path, and the time of one person in one image.

rapidpose runs at each --precision with its default backend. On the CPU the default is fp32, bf16
and int8: the INT8 model `rapidpose quantize` makes by default here (`--format auto`: OpenVINO on x86
with openvino and nncf, else ONNX Runtime; its default recipe), calibrated on the people of a few
real photos. transformers runs in fp32 on the CPU (its processor has no other), in the first
precision's dtype on GPUs. The paths are timed in interleaved rounds, a call of each in turn: the
times are the medians over rounds, the ratio to transformers the median over rounds of the ratio
within each round (a shared machine whose speed changes from one minute to the next moves both sides
of each ratio alike).

    python benchmarks/pipeline_speed.py --variant s --device cpu --images 4 --people 6 --repeats 5
    python benchmarks/pipeline_speed.py --variant b --device cuda --images 32 --people 6
    python benchmarks/pipeline_speed.py --variant b --device cuda --precision fp8 --compile --batch-size 256
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rapidpose.evaluate.speed import random_model, synthetic_boxes
from rapidpose.topdown.estimator import PoseEstimator

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKEND_NAMES = {"OpenVinoRuntime": "OpenVINO", "OnnxRuntime": "ONNX Runtime", "TorchRuntime": "torch"}
_HF_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def transformers_model(model, device="cpu", dtype=torch.float32):
    """transformers' VitPoseForPoseEstimation holding `model`'s weights (a rapidpose ViTPose), or None
    if transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    cfg = model.cfg
    backbone = transformers.VitPoseBackboneConfig(hidden_size=cfg.dim, num_hidden_layers=cfg.depth,
                                                  num_attention_heads=cfg.heads, layer_norm_eps=cfg.eps,
                                                  out_indices=[cfg.depth])
    hf = transformers.VitPoseForPoseEstimation(transformers.VitPoseConfig(
        backbone_config=backbone, use_simple_decoder=cfg.head == "simple", num_labels=cfg.num_keypoints))
    hf.load_state_dict(_in_transformers_names(model.state_dict(), hf.state_dict()))
    return hf.to(device, dtype).eval()


def _in_transformers_names(ours: dict, theirs: dict) -> dict:
    """Our weights under transformers' names: rapidpose's own reading of transformers' checkpoints
    (hf_to_official), run backwards."""
    from rapidpose.model.weights import hf_to_official

    out = {}
    for key, value in theirs.items():
        match = _HF_QKV.match(key)
        if match:  # query, key and value are the thirds of our fused qkv
            fused = ours[f"backbone.blocks.{match[1]}.attn.qkv.{match[3]}"]
            out[key] = fused.chunk(3)[("query", "key", "value").index(match[2])]
        else:
            (name,) = hf_to_official({key: value})  # its official name, which is ours
            out[key] = ours[name]
    return out


def transformers_path(model, device, dtype):
    """transformers' own whole path, as its documentation runs it, with `model`'s weights, or None if
    transformers is not installed."""
    hf = transformers_model(model, device, dtype)
    if hf is None:
        return None
    import transformers

    processor = transformers.VitPoseImageProcessor()

    def run(images, boxes_xywh):
        inputs = processor(images, boxes=boxes_xywh, return_tensors="pt")
        with torch.inference_mode():
            out = hf(inputs["pixel_values"].to(device, dtype))
        out.heatmaps = out.heatmaps.float()
        return processor.post_process_pose_estimation(out, boxes=boxes_xywh)

    return run


def default_int8(model, folder: Path, calibration: Path, images: int) -> tuple[Path, str]:
    """`model` quantized as `rapidpose quantize` does by default on this machine (format and recipe),
    calibrated on the people of the first `images` photos of `calibration`; the file and the format."""
    from rapidpose.deploy.export import export_onnx
    from rapidpose.deploy.quantize import FORMATS, choose_format, people_crops, quantize_crops
    from rapidpose.detect import load_detector
    from rapidpose.io import expand_paths

    fmt, _ = choose_format()
    crops = people_crops(expand_paths([calibration])[:images],
                         load_detector(str(ASSETS / "detectors" / "rtmdet-nano-person.onnx")))
    fp32 = export_onnx(model, folder / "fp32.onnx", check=False)
    return quantize_crops(fp32, folder / f"int8{FORMATS[fmt]}", crops, fmt), fmt


def interleaved(paths: dict, rounds: int, sync) -> dict[str, list[float]]:
    """Seconds per call of each path: one warm-up call each (CUDA graphs, cuDNN choices, first
    allocations), then `rounds` rounds that call each path once in turn."""
    for fn in paths.values():
        fn()
    sync()
    seconds = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", nargs="+", default=None,
                   help="rapidpose precisions, int8 on the CPU only (default: fp32 bf16 int8 on the CPU, auto on GPUs)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (default 3)")
    p.add_argument("--calibration", default=str(ASSETS / "images" / "coco-val2017-100"),
                   help="photos with people for the INT8 model's calibration (default: coco-val2017-100)")
    p.add_argument("--calibration-images", type=int, default=16, help="how many of them (default 16)")
    p.add_argument("--batch-size", type=int, default=64, help="rapidpose's network batch (default 64, the estimator's)")
    p.add_argument("--compile", action="store_true", help="rapidpose's network torch.compile'd (--compile)")
    p.add_argument("--no-transformers", action="store_true")
    args = p.parse_args()
    on_gpu = args.device.startswith("cuda")
    precisions = args.precision or (["auto"] if on_gpu else ["fp32", "bf16", "int8"])
    if on_gpu and "int8" in precisions:
        p.error("--precision int8 is the CPU's INT8 model (rapidpose quantize); on GPUs use fp16, bf16 or fp32")

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.images)]
    boxes = [synthetic_boxes(1280, 720, args.people) for _ in images]
    model = random_model(args.variant)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    people = args.images * args.people

    with tempfile.TemporaryDirectory(prefix="rapidpose-bench-") as folder:
        estimators = {}
        for precision in precisions:
            if precision == "int8":
                path, fmt = default_int8(model, Path(folder), Path(args.calibration), args.calibration_images)
                est = PoseEstimator(str(path), device=args.device, batch_size=args.batch_size)
                label = f"{BACKEND_NAMES[type(est.runtime).__name__]} INT8 (quantize's default, {fmt})"
            else:
                est = PoseEstimator(model, device=args.device, precision=precision, batch_size=args.batch_size,
                                    compile=args.compile)
                label = f"{BACKEND_NAMES[type(est.runtime).__name__]} {est.runtime.precision}" + \
                        (", compiled" if args.compile else "")
            estimators[label] = est
        runs = {}
        for label, est in estimators.items():
            runs[f"rapidpose {label}"] = lambda est=est: est.predict(images, boxes)
            runs[f"rapidpose {label}, one person in one image"] = lambda est=est: est.predict(images[:1], [boxes[0][:1]])
        dtype = torch.float32
        if not args.no_transformers:
            if on_gpu:
                dtype = DTYPES.get(next(iter(estimators.values())).runtime.precision, torch.float16)
            run = transformers_path(model, args.device, dtype)
            if run is not None:
                xywh = [[[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in bx.tolist()] for bx in boxes]
                label = f"transformers {next(k for k, v in DTYPES.items() if v == dtype)} (processor, network, " \
                        f"post-process)"
                runs[label] = lambda: run(images, xywh)
                runs[f"{label}, one person in one image"] = lambda: run(images[:1], [xywh[0][:1]])
        name = torch.cuda.get_device_name() if on_gpu else "cpu"
        print(f"ViTPose-{args.variant.upper()}, {args.images} images of 1280x720 with {args.people} given boxes "
              f"each ({people} people), {name}, random weights (speed only), network batch {args.batch_size}, "
              f"median of {args.repeats} interleaved rounds\n")
        times = {k: np.array(v) for k, v in interleaved(runs, args.repeats, sync).items()}

    one = ", one person in one image"
    theirs = {k.endswith(one): t for k, t in times.items() if k.startswith("transformers")}
    print("| path | ms per call | people per call | ms per person | people/s | x transformers |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, rounds in times.items():  # each against transformers' call of the same people
        single = label.endswith(one)
        n, sec = 1 if single else people, float(np.median(rounds))
        ratio = f"{np.median(theirs[single] / rounds):.1f}x" if single in theirs else ""
        print(f"| {label} | {sec * 1e3:,.1f} | {n} | {sec * 1e3 / n:.1f} | {n / sec:,.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
