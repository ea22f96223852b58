"""Every GPU of one host against one of them: `predict` over 10,000 photos, `video` over several files,
`torchrun` training and the Ray photo path (one actor a GPU). Random weights of the real shapes: speed
only. Each part prints a table for docs/benchmarks.md; run the parts a machine allows:

    python benchmarks/multi_gpu.py                       # all four on every visible GPU
    python benchmarks/multi_gpu.py --parts predict train --gpus 2

Scaling efficiency = (rate on N GPUs) / (N x rate on one). `predict` and `video` are timed over the whole
command (start-up, model loading and warm-up included: on 10,000 photos or a few dozen videos those are
a large share) and warm (between the first tenth of the JSON Lines and the last line: the steady rate). Training compares
one process of batch N x B with N processes of batch B (the same global batch, the same people in
the same order): crops/s, and the two loss curves side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from photo_speed import line_counts, rapidpose_run, warm_rate  # this folder's: the same command runs and watches

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent.parent / "shared" / "assets"
VIDEOS = sorted((ASSETS / "video").glob("*.mp4"))


def _gpus(wanted: int | None) -> int:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        raise SystemExit(f"this needs a host with several GPUs; this one has {count}")
    return min(wanted or count, count)


def _all(n: int) -> str:
    return ",".join(f"cuda:{i}" for i in range(n))


def _efficiency(one: float | None, many: float | None, n: int) -> str:
    return f"{many / (n * one):.2f}" if one and many else ""


def predict_part(n: int, repeat: int, variant: str, tmp: Path, plain: bool, ray: bool) -> None:
    import torch

    from rapidpose.evaluate.speed import random_model
    from rapidpose.io import expand_paths

    paths = expand_paths([str(ASSETS / "images" / "coco-val2017-100")]) * repeat
    checkpoint = tmp / f"vitpose-{variant}-random.pth"
    torch.save({"state_dict": random_model(variant).state_dict()}, checkpoint)
    detector = ASSETS / "detectors" / "rtmdet-nano-person.onnx"
    runs = [("1 GPU", "cuda:0", []), (f"{n} GPUs", _all(n), [])] if plain else []
    if ray:  # the Ray photo path: a local instance, one worker (actor) a GPU
        runs.append((f"{n} GPUs, Ray (local instance, an actor a GPU)", "cuda", ["--ray", "local"]))
    print(f"\n`rapidpose predict`, {len(paths):,} photos, ViTPose-{variant.upper()} fp16, RTMDet-nano, "
          f"{torch.cuda.get_device_name()}\n")
    print("| run | seconds | images/s | efficiency | images/s warm | efficiency warm | first result (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for k, (label, device, extra) in enumerate(runs):
        if extra and not _importable("ray"):
            print(f"| {label} | not run: ray is not installed | | | | | |")
            continue
        gpus = 1 if device == "cuda:0" else n
        r = rapidpose_run(paths, checkpoint, detector, device, tmp / f"predict{k}", extra=extra)
        rate, warm = r["images"] / r["seconds"], r.get("warm_images_per_s")
        base = base or ((rate, warm) if gpus == 1 else (None, None))
        first = f"{r['first_result_s']:.1f}" if r.get("first_result_s") is not None else ""
        print(f"| {label} | {r['seconds']:.1f} | {rate:,.0f} | {_efficiency(base[0], rate, gpus)} | "
              f"{warm or 0:,.0f} | {_efficiency(base[1], warm, gpus)} | {first} |", flush=True)


def video_part(n: int, copies: int, variant: str, tmp: Path) -> None:
    import torch

    from rapidpose.evaluate.speed import random_model

    if not VIDEOS:
        print("\n(no videos in the shared assets: the video part is skipped)")
        return
    checkpoint = tmp / f"vitpose-{variant}-random-video.pth"
    torch.save({"state_dict": random_model(variant).state_dict()}, checkpoint)
    files = [str(v) for v in VIDEOS] * copies
    print(f"\n`rapidpose video`, {len(files)} files ({', '.join(v.name for v in VIDEOS)}, each {copies} times), "
          f"ViTPose-{variant.upper()}, RTMDet-nano, ByteTrack, JSON Lines\n")
    print("| run | files | frames | seconds | frames/s | efficiency | frames/s warm | efficiency warm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for label, device in (("1 GPU", "cuda:0"), (f"{n} GPUs", _all(n))):
        out = tmp / f"video-{device.replace(':', '').replace(',', '-')}"
        cmd = [sys.executable, "-m", "rapidpose", "-q", "video", *files, "--model", str(checkpoint), "--detector",
               str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"), "--device", device, "--jsonl", str(out)]
        start = time.perf_counter()
        with line_counts(lambda: list(out.glob("*.jsonl")), start) as lines:  # a line a frame, as they come
            proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"rapidpose video failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        frames = sum(sum(1 for line in f.read_text().splitlines() if '"frame"' in line) for f in out.glob("*.jsonl"))
        written = sum(f.read_bytes().count(b"\n") for f in out.glob("*.jsonl"))  # frames and any other lines
        rate, warm = frames / seconds, warm_rate(lines, written, seconds)
        warm = warm and warm * frames / written  # frames a second, not lines
        base = base or (rate, warm)
        gpus = 1 if device == "cuda:0" else n
        print(f"| {label} | {len(files)} | {frames:,} | {seconds:.1f} | {rate:,.0f} | "
              f"{_efficiency(base[0], rate, gpus)} | {warm or 0:,.0f} | {_efficiency(base[1], warm, gpus)} |",
              flush=True)


def train_part(n: int, batch: int, steps: int, variant: str, tmp: Path) -> None:
    speed = str(HERE / "train_speed.py")
    common = ["--variant", variant, "--steps", str(steps), "--repeat", "600", "--log-every", "10"]
    runs = [("1 GPU", [sys.executable, speed, "--batch-size", str(n * batch)]),
            (f"{n} GPUs (torchrun)", [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                                      speed, "--batch-size", str(batch)])]
    curves = {}
    for label, cmd in runs:
        log = tmp / f"train-{len(curves)}.jsonl"
        proc = subprocess.run(cmd + common + ["--save-log", str(log)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{label} training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        curves[label] = [json.loads(line) for line in log.read_text().splitlines() if '"loss"' in line]
    (one, a), (many, b) = curves.items()
    rate = {k: sum(e["images_per_s"] for e in v[1:]) / max(len(v) - 1, 1) for k, v in curves.items()}
    print(f"\n`rapidpose.train`, ViTPose-{variant.upper()}, bf16, global batch {n * batch}, {steps} steps, "
          f"augmentation on\n")
    print("| run | crops/s | efficiency |\n|---|---:|---:|")
    print(f"| {one} (batch {n * batch}) | {rate[one]:,.0f} | |")
    print(f"| {many} (batch {batch} each) | {rate[many]:,.0f} | {_efficiency(rate[one], rate[many], n)} |")
    print("\n| step | loss, 1 GPU | loss, N GPUs | difference |\n|---:|---:|---:|---:|")
    gaps = []
    for x, y in zip(a, b):
        gaps.append(abs(x["loss"] - y["loss"]) / x["loss"])
        if x["step"] % max(steps // 10, 10) == 0:
            print(f"| {x['step']} | {x['loss']:.5f} | {y['loss']:.5f} | {100 * gaps[-1]:.1f}% |")
    print(f"\nmean relative difference of the curves: {100 * sum(gaps) / max(len(gaps), 1):.2f}% over "
          f"{len(gaps)} points (drop path and the head's BatchNorm statistics differ per process: noise)")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["train", "predict", "ray", "video"],
                   choices=["train", "predict", "ray", "video"],
                   help="predict: 1 GPU and all; ray: predict --ray local on all (default: all four)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: every visible one)")
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--repeat", type=int, default=100, help="coco-val2017-100 this many times (default 10,000 photos)")
    p.add_argument("--video-copies", type=int, default=8, help="each shared video this many times")
    p.add_argument("--train-batch", type=int, default=64, help="per GPU")
    p.add_argument("--train-steps", type=int, default=200)
    args = p.parse_args()
    n = _gpus(args.gpus)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off on shared hosts
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "train" in args.parts:
            train_part(n, args.train_batch, args.train_steps, args.variant, tmp)
        if "predict" in args.parts or "ray" in args.parts:
            predict_part(n, args.repeat, args.variant, tmp, "predict" in args.parts, "ray" in args.parts)
        if "video" in args.parts:
            video_part(n, args.video_copies, args.variant, tmp)


if __name__ == "__main__":
    main()
