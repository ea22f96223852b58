"""`rapidpose bench`: the time of each stage and the network's throughput against batch size."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from rapidpose.errors import InputError
from rapidpose.evaluate.speed import (STAGES, bench_network, bench_photos, bench_pipeline, device_name,
                                      peak_memory_mb, plot_throughput, random_model)
from rapidpose.progress import progress

log = logging.getLogger("rapidpose")


def add_bench_parser(sub) -> None:
    from rapidpose.cli.options import COUNT, SECONDS
    from rapidpose.runtime import BACKENDS
    from rapidpose.runtime.torch_runtime import PRECISIONS

    p = sub.add_parser("bench", help="time each stage and the network's throughput",
                       description="Per-stage timing (read, detect, crop, network, decode, draw), crops/s, "
                                   "people/s, peak memory, throughput against batch size, and with image files the "
                                   "photo path as `rapidpose predict` runs it (stages overlapped: images/s, people/s).")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="images or folders (default: --synthetic random 1280x720 images)")
    p.add_argument("--model", default="vitpose-b",
                   help="hub name or checkpoint; random-s|b|l|h for random weights (speed only) (default vitpose-b)")
    p.add_argument("--detector", default="none",
                   help="rtmdet-nano, yolox-nano, a path, or none for --people synthetic boxes (default none)")
    p.add_argument("--people", type=COUNT, default=6, metavar="N",
                   help="boxes per image when --detector none (default 6)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: torch on a GPU, OpenVINO on a CPU when installed, else torch (default auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: cuda if present)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: fp16 on a GPU, bf16 on CPUs that have it, else fp32; fp8 on H100/H200/L40/Ada GPUs "
                        "(default auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (default: off)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop (default: off)")
    p.add_argument("--batch", type=COUNT, nargs="+", default=[1, 8, 32, 64, 128], metavar="B",
                   help="batch sizes for the network-only sweep (default 1 8 32 64 128)")
    p.add_argument("--images", type=COUNT, default=16, metavar="N", help="images per pipeline batch (default 16)")
    p.add_argument("--repeats", type=COUNT, default=3, metavar="N",
                   help="passes over the images for the per-stage timing, after one warm-up batch (default 3)")
    p.add_argument("--seconds", type=SECONDS, default=1.0, metavar="S",
                   help="time the network-only sweep for about S seconds per batch size, at least 2 runs after "
                        "3 warm-up runs; 0 times one run after one warm-up, a quick, rough figure (default 1)")
    p.add_argument("--synthetic", type=COUNT, default=32, metavar="N",
                   help="synthetic images when no INPUT is given (default 32)")
    p.add_argument("--draw", action="store_true", help="include drawing the results (default: off)")
    p.add_argument("--json", metavar="FILE", help="write the figures to this JSON file (default: none)")
    p.add_argument("--plot", metavar="PNG", help="write a PNG of crops/s against batch size (default: none)")
    p.add_argument("--agreement", action="store_true",
                   help="also compare the heatmaps and keypoints with the fp32 torch model's on the people of INPUT "
                        "(found by --detector, rtmdet-nano with none): cosine, SQNR, mean OKS (default: off)")


def run_bench(args) -> int:
    from rapidpose.io import expand_paths
    from rapidpose.runtime.torch_runtime import resolve_device
    from rapidpose.topdown.estimator import PoseEstimator

    device = resolve_device(args.device)
    paths = expand_paths(args.inputs) if args.inputs else []  # a wrong path fails before the model loads
    if args.agreement and not paths:
        raise InputError("--agreement compares on real people: give photos with people as INPUT")
    if args.agreement and str(args.model).endswith((".onnx", ".xml")):
        raise InputError(f"--agreement holds the model to its fp32 torch form, which an exported file "
                         f"('{args.model}') does not have: give the checkpoint or the name it came from "
                         f"(an INT8 model's agreement is in the report `rapidpose quantize` wrote beside it)")
    # the people to compare on, found on the CPU (a few hundred): loaded first, so a missing one stops here
    people_finder = None
    if args.agreement:
        from rapidpose.detect import load_detector

        people_finder = load_detector("rtmdet-nano" if args.detector == "none" else args.detector)
    log.info("bench: loading %s on %s", args.model, device)
    model = random_model(args.model.split("-", 1)[1]) if args.model.startswith("random-") else args.model
    est = PoseEstimator(model, detector=args.detector, device=device, flip_test=args.flip, backend=args.backend,
                        precision=args.precision, compile=args.compile, batch_size=max(args.batch))
    rng = np.random.default_rng(0)
    synthetic = [] if paths else [rng.integers(0, 255, (720, 1280, 3), np.uint8) for _ in range(args.synthetic)]
    people = args.people if args.detector == "none" else None
    n_sources = len(paths or synthetic)
    who = f"{people} synthetic boxes each" if people else f"people found by {args.detector}"
    what = f"{len(paths)} images" if paths else f"{n_sources} synthetic 1280x720 images"

    log.info("bench: warm-up, one batch of %d images", min(args.images, n_sources))
    bench_pipeline(est, paths[:args.images], synthetic[:args.images], people, args.images, 1, args.draw)
    log.info("bench: timing each stage, %d pass%s over %s (%s)", args.repeats, "" if args.repeats == 1 else "es",
             what, who)
    with progress(args.repeats * n_sources, "stages") as bar:
        seconds, n_images, n_people, wall = bench_pipeline(est, paths, synthetic, people, args.images,
                                                           args.repeats, args.draw, step=bar.update)
    photos = None
    if paths:
        log.info("bench: the photo path with its stages overlapped, as `rapidpose predict` runs it (--detector %s%s)",
                 args.detector, ": the whole image is the person" if args.detector == "none" else "")
        with progress(args.repeats * n_sources, "photos") as bar:
            bench_photos(est, paths[:args.images], args.images, 1)  # warm-up
            photos = bench_photos(est, paths, args.images, args.repeats, step=bar.update)
    log.info("bench: timing the network alone at batch sizes %s, %s", " ".join(map(str, args.batch)),
             f"about {args.seconds:g} s each" if args.seconds > 0 else "one run each")
    with progress(len(args.batch), "network", unit="batch") as bar:
        sweep = bench_network(est.runtime, args.batch, args.seconds, step=bar.update)
    runtime = est.runtime
    info = {
        "model": str(args.model), "backend": type(runtime).__name__, "device": device,
        "device_name": device_name(device), "precision": getattr(runtime, "precision", args.precision),
        "flip_test": args.flip, "images": n_images, "people": n_people, "wall_s": wall,
        "stages_ms_per_image": {s: 1e3 * seconds.get(s, 0.0) / max(n_images, 1) for s in STAGES},
        "people_per_s": n_people / wall if wall else 0.0,
        "network_crops_per_s": n_people * (2 if args.flip else 1) / max(seconds.get("network", 1e-9), 1e-9),
        "photo_path": None if photos is None else {
            "images": photos[0], "people": photos[1], "wall_s": photos[2],
            "images_per_s": photos[0] / photos[2] if photos[2] else 0.0,
            "people_per_s": photos[1] / photos[2] if photos[2] else 0.0},
        "peak_memory_mb": peak_memory_mb(device),
        "throughput_by_batch": [{"batch": b, "crops_per_s": v} for b, v in sweep],
        "sweep_seconds": args.seconds,
    }
    if args.agreement:
        log.info("bench: the heatmaps and keypoints against the fp32 torch model's, on the people of INPUT")
        info["agreement"] = _against_fp32(est, model, paths, people_finder, device, max(args.batch))
    _print_report(info)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    if args.plot:
        plot_throughput(sweep, args.plot, f"{info['model']} {info['backend']} {info['precision']} on {info['device_name']}")
    return 0


def _against_fp32(est, model, paths, detector, device: str, batch_size: int) -> dict:
    """est's network against the fp32 torch model on the people of `paths` (up to 256): agreement figures."""
    from rapidpose.deploy.quantize import people_crops
    from rapidpose.evaluate.agreement import against_reference, fp32_heatmaps
    from rapidpose.model.weights import load_model

    crops = people_crops(paths, detector, est.input_size)
    float_model = load_model(model, "cpu") if isinstance(model, str) else model
    reference = fp32_heatmaps(float_model, device, crops, batch_size)
    return against_reference(reference, np.asarray(est.runtime(crops), np.float32), est.skeleton.sigmas)


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
    if info.get("photo_path"):
        photo = info["photo_path"]
        print(f"photo path, stages overlapped (as `rapidpose predict` runs it): {photo['images_per_s']:,.1f} images/s, "
              f"{photo['people_per_s']:,.0f} people/s ({photo['images']} images, {photo['wall_s']:.1f} s)")
    if info.get("agreement"):
        a = info["agreement"]
        print(f"against the fp32 torch model, {a['people']} people of INPUT: heatmap cosine {a['cosine']:.6f}, "
              f"SQNR {a['sqnr_db']:.1f} dB, keypoints' mean OKS {a['oks_mean']:.4f} (least {a['oks_min']:.4f})")
    rough = " (one run each: a rough figure)" if info["sweep_seconds"] == 0 else ""
    print(f"\n| batch | crops/s (network only){rough} |\n|---:|---:|")
    for row in info["throughput_by_batch"]:
        print(f"| {row['batch']} | {row['crops_per_s']:,.0f} |")
