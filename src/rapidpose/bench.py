"""`rapidpose bench`: where the time goes, stage by stage, and network throughput against batch size."""
from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

import cv2
import numpy as np

from .timing import StageTimer

STAGES = ("read", "detect", "crop", "network", "decode", "draw")


def random_model(variant: str):
    """Random weights of a published shape: for speed only, the keypoints mean nothing."""
    from .model.vitpose import ViTPose, ViTPoseConfig, init_random
    from .skeletons import COCO

    model = init_random(ViTPose(ViTPoseConfig.from_variant(variant)))
    model.skeleton, model.source = COCO, f"random-{variant}"
    return model


def synthetic_boxes(width: int, height: int, people: int) -> np.ndarray:
    """`people` person-shaped boxes spread across the image (about 1/3 of its height each)."""
    h = height / 3
    xs = np.linspace(0, width - h / 2, people + 2)[1:-1]
    ys = np.full(people, height / 3)
    return np.stack([xs, ys, xs + h / 2, ys + h], axis=1).astype(np.float32)


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_pipeline(est, paths, synthetic, people: int | None, images_per_batch: int, repeats: int,
                   draw: bool) -> tuple[dict, int, int, float]:
    """Run the whole path `repeats` times; returns seconds per stage, images, people, wall seconds."""
    from .draw import draw_poses
    from .io import read_image

    timer = StageTimer(sync=_sync(est))
    sources = paths or synthetic
    n_images = n_people = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(sources), images_per_batch):
            chunk = sources[i:i + images_per_batch]
            with timer("read"):
                images = [read_image(p) for p in chunk] if paths else [img.copy() for img in chunk]
            boxes = None if people is None else [synthetic_boxes(im.shape[1], im.shape[0], people) for im in images]
            est.timer = timer
            results = est.predict(images, boxes)
            if draw:
                with timer("draw"):
                    for image, poses in zip(images, results):
                        draw_poses(image, poses)
            n_images += len(images)
            n_people += sum(len(r) for r in results)
    est.timer = StageTimer()  # detach
    return dict(timer.seconds), n_images, n_people, time.perf_counter() - start


def _sync(est):
    if est.on_gpu:
        import torch

        return torch.cuda.synchronize
    return None


def bench_network(runtime, batches, seconds: float = 1.0) -> list[tuple[int, float]]:
    """Crops per second of the backend alone at each batch size (inputs already in memory): 3 warm-up
    runs, then runs for about `seconds`, at least 2. seconds=0 times a single run after a single
    warm-up: a quick, rough figure (smoke tests)."""
    w, h = runtime.input_size
    warm_up, least = (3, 2) if seconds > 0 else (1, 1)
    out = []
    for batch in batches:
        x = np.random.default_rng(0).normal(size=(batch, 3, h, w)).astype(np.float32)
        if hasattr(runtime, "run"):  # keep the input on the device: the network alone
            import torch

            xt = torch.from_numpy(x).to(runtime.device)
            call = lambda: runtime.run(xt)  # noqa: E731
            sync = torch.cuda.synchronize if runtime.device.startswith("cuda") else (lambda: None)
        else:
            call, sync = (lambda: runtime(x)), (lambda: None)
        for _ in range(warm_up):
            call()
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < least:
            call()
            n += 1
        sync()
        out.append((batch, batch * n / (time.perf_counter() - t0)))
    return out


def plot_throughput(points, path, title: str) -> None:
    """A small line chart (crops/s against batch size, log2 x axis) drawn with OpenCV."""
    w, h, m = 720, 420, 70
    img = np.full((h, w, 3), 255, np.uint8)
    xs = np.log2([b for b, _ in points])
    ys = np.array([v for _, v in points])
    x0, x1 = xs.min(), max(xs.max(), xs.min() + 1)
    ymax = ys.max() * 1.15
    px = lambda x: int(m + (x - x0) / (x1 - x0) * (w - 2 * m))  # noqa: E731
    py = lambda y: int(h - m - y / ymax * (h - 2 * m))  # noqa: E731
    cv2.line(img, (m, h - m), (w - m, h - m), (0, 0, 0), 1)
    cv2.line(img, (m, m), (m, h - m), (0, 0, 0), 1)
    for (b, v), x in zip(points, xs):
        cv2.putText(img, str(b), (px(x) - 8, h - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{v:,.0f}", (px(x) - 20, py(v) - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 60, 0), 1,
                    cv2.LINE_AA)
    pts = np.array([[px(x), py(v)] for x, v in zip(xs, ys)], np.int32)
    cv2.polylines(img, [pts], False, (200, 60, 0), 2, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, tuple(int(c) for c in p), 4, (200, 60, 0), -1, cv2.LINE_AA)
    cv2.putText(img, title, (m, 35), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "batch size", (w // 2 - 40, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "crops/s", (5, m - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time each stage and the network's throughput",
                       description="Per-stage timing (read, detect, crop, network, decode, draw), crops/s, "
                                   "people/s, peak memory, and throughput against batch size.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="images or folders (default: --synthetic random 1280x720 images)")
    p.add_argument("--model", default="vitpose-b",
                   help="hub name or checkpoint; random-s|b|l|h for random weights (speed only) (default vitpose-b)")
    p.add_argument("--detector", default="none",
                   help="rtmdet-nano, yolox-nano, a path, or none for --people synthetic boxes (default none)")
    p.add_argument("--people", type=int, default=6, metavar="N",
                   help="boxes per image when --detector none (default 6)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"],
                   help="auto: torch on a GPU, OpenVINO on a CPU when installed, else torch (default auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: cuda if present)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 on a GPU, bf16 on CPUs that have it, else fp32 (default auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (default: off)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop (default: off)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64, 128], metavar="B",
                   help="batch sizes for the network-only sweep (default 1 8 32 64 128)")
    p.add_argument("--images", type=int, default=16, metavar="N", help="images per pipeline batch (default 16)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="passes over the images for the per-stage timing, after one warm-up batch (default 3)")
    p.add_argument("--seconds", type=float, default=1.0, metavar="S",
                   help="time the network-only sweep for about S seconds per batch size, at least 2 runs after "
                        "3 warm-up runs; 0 times one run after one warm-up, a quick, rough figure (default 1)")
    p.add_argument("--synthetic", type=int, default=32, metavar="N",
                   help="synthetic images when no INPUT is given (default 32)")
    p.add_argument("--draw", action="store_true", help="include drawing the results (default: off)")
    p.add_argument("--json", metavar="FILE", help="write the figures to this JSON file (default: none)")
    p.add_argument("--plot", metavar="PNG", help="write a PNG of crops/s against batch size (default: none)")


def check_bench_args(args) -> None:
    """Numbers a user can get wrong, refused before any model is loaded."""
    from .errors import InputError

    for flag, value in (("--people", args.people), ("--images", args.images), ("--repeats", args.repeats),
                        ("--synthetic", args.synthetic)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1; got {value}")
    bad = [b for b in args.batch if b < 1]
    if bad:
        raise InputError(f"--batch sizes must be at least 1; got {bad[0]}")
    if not 0 <= args.seconds < float("inf"):  # NaN too
        raise InputError(f"--seconds must be 0 or more (and finite); got {args.seconds}")


def run_bench(args) -> int:
    from .io import expand_paths
    from .pipeline import PoseEstimator
    from .runtime.torch_runtime import resolve_device

    check_bench_args(args)
    device = resolve_device(args.device)
    model = random_model(args.model.split("-", 1)[1]) if args.model.startswith("random-") else args.model
    est = PoseEstimator(model, detector=args.detector, device=device, flip_test=args.flip, backend=args.backend,
                        precision=args.precision, compile=args.compile, batch_size=max(args.batch))
    paths = expand_paths(args.inputs) if args.inputs else []
    rng = np.random.default_rng(0)
    synthetic = [] if paths else [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.synthetic)]
    people = args.people if args.detector == "none" else None

    bench_pipeline(est, paths[:args.images], synthetic[:args.images], people, args.images, 1, args.draw)  # warm-up
    seconds, n_images, n_people, wall = bench_pipeline(est, paths, synthetic, people, args.images, args.repeats,
                                                       args.draw)
    sweep = bench_network(est.runtime, args.batch, args.seconds)
    runtime = est.runtime
    info = {
        "model": str(args.model), "backend": type(runtime).__name__, "device": device,
        "device_name": _device_name(device), "precision": getattr(runtime, "precision", args.precision),
        "flip_test": args.flip, "images": n_images, "people": n_people, "wall_s": wall,
        "stages_ms_per_image": {s: 1e3 * seconds.get(s, 0.0) / max(n_images, 1) for s in STAGES},
        "people_per_s": n_people / wall if wall else 0.0,
        "network_crops_per_s": n_people * (2 if args.flip else 1) / max(seconds.get("network", 1e-9), 1e-9),
        "peak_memory_mb": peak_memory_mb(device),
        "throughput_by_batch": [{"batch": b, "crops_per_s": v} for b, v in sweep],
        "sweep_seconds": args.seconds,
    }
    _print_report(info)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    if args.plot:
        plot_throughput(sweep, args.plot, f"{info['model']} {info['backend']} {info['precision']} on {info['device_name']}")
    return 0


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _print_report(info: dict) -> None:
    stages = info["stages_ms_per_image"]
    total = sum(stages.values()) or 1e-9
    print(f"\n{info['model']} | {info['backend']} {info['precision']} | {info['device_name']} | "
          f"{info['images']} images, {info['people']} people" + (" | flip test" if info["flip_test"] else ""))
    print("\n| stage | ms / image | share |\n|---|---:|---:|")
    for stage in STAGES:
        print(f"| {stage} | {stages[stage]:.2f} | {100 * stages[stage] / total:.0f}% |")
    print(f"| **total** | {total:.2f} | |")
    print(f"\npeople/s (whole path): {info['people_per_s']:,.0f}   network crops/s: "
          f"{info['network_crops_per_s']:,.0f}   peak memory: {info['peak_memory_mb']:,.0f} MiB")
    rough = " (one run each: a rough figure)" if info["sweep_seconds"] == 0 else ""
    print(f"\n| batch | crops/s (network only){rough} |\n|---:|---:|")
    for row in info["throughput_by_batch"]:
        print(f"| {row['batch']} | {row['crops_per_s']:,.0f} |")
