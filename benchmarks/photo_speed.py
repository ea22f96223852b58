"""Photo collections end to end: `rapidpose predict` over a folder of photos (read, detect, crop, network,
decode, write), side by side with Hugging Face transformers' VitPose and ultralytics' pose models over the
same photos (each when installed), and optionally with another copy of rapidpose (`--baseline SRC`, e.g.
an older commit's src/, run the same way). Random weights of the real shapes: speed only.

rapidpose runs as a user runs it, `python -m rapidpose predict PHOTOS... --model ... --json/--jsonl`, in a
process of its own; the figure is images/s over the whole command (start-up, model loading and warm-up
included, so a short folder understates the steady rate: use --repeat) and, where the command writes
JSON Lines, the seconds until the first line appeared and the rate between the first tenth and the last
line ("warm"). transformers is given the boxes rapidpose's detector finds (found beforehand, not timed:
it has no detector of its own), so its figure is an upper bound; ultralytics' YOLO-pose finds people
itself (random weights find few, so its post-processing is light: an upper bound too).

    python benchmarks/photo_speed.py --variant b --repeat 20                      # 2,000 photos on a GPU
    python benchmarks/photo_speed.py --variant s --device cpu --runs 2 --baseline /tmp/head/src --compare
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from rapidpose.evaluate.speed import random_model
from rapidpose.io import expand_paths

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


@contextlib.contextmanager
def line_counts(files, start: float):
    """Yields a list that fills, while the block runs, with (seconds since `start`, lines written so far to
    the files `files()` names), sampled every 50 ms: how a command's output grows."""
    samples, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            count = 0
            for path in files():
                try:
                    with open(path, "rb") as f:
                        count += f.read().count(b"\n")
                except FileNotFoundError:  # not made yet
                    pass
            samples.append((time.perf_counter() - start, count))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield samples
    finally:
        stop.set()
        watcher.join()


def warm_rate(samples, total: int, seconds: float) -> float | None:
    """Lines a second from the tenth of `total` to the last: the rate once started (None if too quick)."""
    tenth = next(((t, k) for t, k in samples if k >= max(total // 10, 1)), None)
    last = next(((t, k) for t, k in samples if k >= total), None) or (seconds, total)
    return (last[1] - tenth[1]) / (last[0] - tenth[0]) if tenth and last[0] > tenth[0] else None


def rapidpose_run(paths, checkpoint, detector, device, out_dir: Path, pythonpath=None, jsonl=True, extra=()) -> dict:
    """One `rapidpose predict` command over `paths`; its wall time, and when its JSON Lines grew."""
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = out_dir / "photos.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    jsonl_path = out_dir / "out.jsonl"
    cmd = [sys.executable, "-m", "rapidpose", "-q", "predict", "--model", str(checkpoint), "--detector", str(detector),
           "--device", device]
    cmd += ["--list", str(listing), "--jsonl", str(jsonl_path)] if jsonl else [*map(str, paths), "--json",
                                                                               str(out_dir / "out.json")]
    cmd += list(extra)
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    with line_counts(lambda: [jsonl_path], start) as lines:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"rapidpose failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = {"seconds": seconds, "images": len(paths)}
    if jsonl and jsonl_path.exists():
        result["first_result_s"] = next((t for t, k in lines if k >= 1), None)
        warm = warm_rate(lines, len(paths), seconds)
        if warm:
            result["warm_images_per_s"] = warm
        result["people"] = sum(len(json.loads(line)["people"]) for line in jsonl_path.read_text().splitlines())
    elif (out_dir / "out.json").exists():
        result["people"] = sum(len(i["people"]) for i in json.loads((out_dir / "out.json").read_text())["images"])
    return result


def transformers_run(model, paths, detector_path, device) -> dict | None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    import cv2

    from rapidpose.detect import load_detector
    from pipeline_speed import transformers_path

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    run = transformers_path(model, device, dtype)
    detector = load_detector(detector_path)
    boxes, images = [], []
    for p in paths[: min(len(paths), 200)]:  # boxes found beforehand, untimed (transformers has no detector)
        image = np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1])  # transformers refuses negative strides
        b, _ = detector(image)
        boxes.append([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b.tolist()])
        images.append(image)
    keep = [i for i, b in enumerate(boxes) if b]  # its processor needs at least one box per image
    start, people = time.perf_counter(), 0
    for i in range(0, len(keep), 32):
        chunk = keep[i:i + 32]
        batch_images = [np.ascontiguousarray(cv2.imread(str(paths[j]))[:, :, ::-1]) for j in chunk]  # reading is timed, as for the others
        run(batch_images, [boxes[j] for j in chunk])
        people += sum(len(boxes[j]) for j in chunk)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "images": len(keep), "people": people}


def ultralytics_run(paths, device, model_name: str) -> dict | None:
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    model = YOLO(model_name)  # a .yaml: the architecture with random weights, nothing downloaded
    half = device.startswith("cuda")
    list(model.predict([str(p) for p in paths[:32]], batch=32, half=half, device=device, verbose=False, stream=True))
    start, people = time.perf_counter(), 0
    for result in model.predict([str(p) for p in paths], batch=32, half=half, device=device, verbose=False, stream=True):
        people += len(result.boxes)
    return {"seconds": time.perf_counter() - start, "images": len(paths), "people": people}


def row(name: str, r: dict) -> str:
    first = f"{r['first_result_s']:.2f}" if r.get("first_result_s") is not None else ""
    warm = f"{r['warm_images_per_s']:,.0f}" if r.get("warm_images_per_s") else ""
    people = f"{r['people'] / r['seconds']:,.0f}" if "people" in r else ""
    return (f"| {name} | {r['images']:,} | {r['seconds']:.1f} | {r['images'] / r['seconds']:,.1f} | {warm} | "
            f"{people} | {first} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=str(ASSETS / "images" / "coco-val2017-100"))
    p.add_argument("--repeat", type=int, default=1, help="take the folder's photos this many times in a row")
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--detector", default=str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"))
    p.add_argument("--baseline", metavar="SRC", help="another rapidpose's src/ to run the same way, side by side")
    p.add_argument("--decoder", nargs="+", default=["auto"], choices=["auto", "cpu", "gpu"],
                   help="a rapidpose run with each --decoder (default: auto)")
    p.add_argument("--images-per-batch", type=int, help="rapidpose predict's --images-per-batch (default: its own)")
    p.add_argument("--runs", type=int, default=1,
                   help="run each rapidpose command this many times in a row; from the second on, a CPU backend's "
                        "export of the checkpoint is kept from the first (runtime/export_cache.py) (default 1)")
    p.add_argument("--no-jsonl", action="store_true", help="write --json (for a rapidpose without --jsonl/--list)")
    p.add_argument("--compare", nargs="*", default=["transformers", "ultralytics"],
                   choices=["transformers", "ultralytics"])
    p.add_argument("--yolo", nargs="*", default=["yolo11n-pose.yaml", "yolo11x-pose.yaml"])
    args = p.parse_args()

    paths = expand_paths([args.folder]) * args.repeat
    model = random_model(args.variant)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    print(f"{len(paths):,} photos ({args.folder} x{args.repeat}), ViTPose-{args.variant.upper()} (random weights), "
          f"RTMDet-nano, {name}\n")
    print("| path | images | seconds | images/s | images/s warm | people/s | first result (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / f"vitpose-{args.variant}-random.pth"
        torch.save({"state_dict": model.state_dict()}, checkpoint)
        per_batch = ["--images-per-batch", str(args.images_per_batch)] if args.images_per_batch else []
        runs = [(f"rapidpose predict --decoder {d}", None, not args.no_jsonl, ["--decoder", d, *per_batch])
                for d in args.decoder]
        if args.baseline:
            runs.append((f"rapidpose predict, {args.baseline}", args.baseline, False, []))
        os.environ["RAPIDPOSE_CACHE"] = str(Path(tmp) / "cache")  # cold: no export kept from before
        for k, (label, src, jsonl, extra) in enumerate(runs):
            for again in range(args.runs):
                r = rapidpose_run(paths, checkpoint, args.detector, args.device, Path(tmp) / f"run{k}-{again}",
                                  pythonpath=src, jsonl=jsonl, extra=extra)
                print(row(label + (f", run {again + 1}" if args.runs > 1 else ""), r), flush=True)
        if "transformers" in args.compare:
            r = transformers_run(model, paths, args.detector, args.device)
            if r:
                print(row("transformers VitPose, boxes given, batch 32", r), flush=True)
        if "ultralytics" in args.compare:
            for yolo in args.yolo:
                r = ultralytics_run(paths, args.device, yolo)
                if r:
                    print(row(f"ultralytics {yolo.split('.')[0]}, batch 32", r), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # pipeline_speed's transformers path
    main()
