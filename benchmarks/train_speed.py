"""Training crops/s: `rapidpose.train` end to end (decoding, augmentation, warp, targets, the step) and
the training step alone on crops already on the device (the ceiling). Random weights: speed only.

coco-mini's people are repeated (--repeat) so that one epoch holds all the timed steps: the figure is
the trainer's steady rate, not its checkpoint writing.

    python benchmarks/train_speed.py --variant b --batch-size 64 --steps 60          # a GPU: bf16
    python benchmarks/train_speed.py --variant b --batch-size 64 --steps 60 --compile
    python benchmarks/train_speed.py --variant s --batch-size 8 --steps 6 --device cpu

Under torchrun (`torchrun --nproc-per-node N benchmarks/train_speed.py ...`) each process takes
--batch-size people a step (the global batch is N times that) and the figure is all processes' crops/s;
--save-log keeps the run's log.jsonl (its loss curve) to set beside a one-process run of the same global
batch (benchmarks/multi_gpu.py does both).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
COCO_MINI = ASSETS / "images" / "coco-mini"


def step_alone(variant: str, batch: int, device: str, precision: str, steps: int, compile: bool) -> float:
    """Crops/s of forward + backward + AdamW on random crops already on the device."""
    import torch

    from rapidpose.model.vitpose import ViTPose, ViTPoseConfig
    from rapidpose.train.recipe import make_optimizer, recipe_for

    model = ViTPose(ViTPoseConfig.from_variant(variant)).to(device).train()
    recipe = recipe_for(variant)
    model.backbone.set_drop_path(recipe.drop_path)
    optimizer = make_optimizer(model, recipe, batch)
    net = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, 256, 192, device=device)
    target = torch.rand(batch, 17, 64, 48, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def one():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = net(x)
        loss = ((y.float() - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(8 if compile else 3):
        one()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    return batch * steps / (time.perf_counter() - start)


def data_alone(annotations: Path, variant: str, batch: int, device: str, steps: int) -> float:
    """Crops/s of the trainer's data path alone (decoding, augmentation, warp, targets; no step): the
    other ceiling. Uses the trainer's own feeder, a private class: this is a diagnosis."""
    import torch

    from rapidpose.model.vitpose import ViTPoseConfig
    from rapidpose.train.data import load_keypoint_set
    from rapidpose.train.recipe import recipe_for
    from rapidpose.train.trainer import _ahead, _Feeder

    data = load_keypoint_set(annotations, COCO_MINI / "images")
    feeder = _Feeder(data, recipe_for(variant), ViTPoseConfig.from_variant(variant), torch.device(device), 0)
    steps = min(steps + 3, len(data.samples) // batch)  # the batches of one epoch
    batches = _ahead(feeder.epoch(0, batch, 0, batch, steps))
    try:
        for _ in range(3 if steps > 6 else 1):  # the decoders start
            next(batches)
        start, crops = time.perf_counter(), 0
        for b in batches:
            if b.ready is not None:
                b.ready.synchronize()
            crops += len(b.crops)
        return crops / (time.perf_counter() - start)
    finally:
        batches.close()
        feeder.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=60, help="timed steps (the first tenth are left out as warm-up)")
    p.add_argument("--device", default=None, help="default: cuda when there is one")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--repeat", type=int, default=200, help="coco-mini's people this many times over")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (rapidpose train --compile)")
    p.add_argument("--log-every", type=int, default=None, help="steps a log line (default: a tenth of --steps)")
    p.add_argument("--save-log", type=Path, default=None, help="copy the run's log.jsonl here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import os

    import torch

    from rapidpose.train import TrainOptions, train

    logging.basicConfig(level=logging.WARNING)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    precision = args.precision if args.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as tmp:  # each process its own (only rank 0 writes the run)
        coco = json.loads((COCO_MINI / "person_keypoints.json").read_text())
        people = [a for a in coco["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd")]
        coco["annotations"] = [{**a, "id": k * 1_000_000 + a["id"]} for k in range(args.repeat) for a in people]
        annotations = Path(tmp) / "repeated.json"
        annotations.write_text(json.dumps(coco))
        log_every = args.log_every or max(args.steps // 10, 1)
        start = time.perf_counter()
        result = train(TrainOptions(annotations, COCO_MINI / "images", Path(tmp) / "run", model=f"random-{args.variant}",
                                    epochs=1, batch_size=args.batch_size, device=device, precision=precision,
                                    max_steps=args.steps, log_every=log_every, compile=args.compile, seed=args.seed),
                       progress_bar=False)
        wall = time.perf_counter() - start
        if rank != 0:
            return
        lines = (Path(tmp) / "run" / "log.jsonl").read_text()
        feed = data_alone(annotations, args.variant, args.batch_size, device, args.steps) if world == 1 else None
    if args.save_log is not None:
        args.save_log.parent.mkdir(parents=True, exist_ok=True)
        args.save_log.write_text(lines)
    skip = 1 if not args.compile else max(len(lines.splitlines()) // 3, 1)  # compiling happens in the first windows
    rates = [e["images_per_s"] for e in map(json.loads, lines.splitlines()) if "images_per_s" in e][skip:]
    compiled = ", torch.compile" if args.compile else ""
    print(f"ViTPose-{args.variant.upper()} (random weights), batch {args.batch_size} x {world} process(es), "
          f"{precision}{compiled}, {name}\n")
    print("| what | crops/s |\n|---|---:|")
    print(f"| rapidpose.train, augmentation on, after the first {skip * log_every} steps (mean of {len(rates)} "
          f"windows) | {sum(rates) / max(len(rates), 1):,.0f} |")
    if feed is not None:
        print(f"| the data alone (decoding, augmentation, warp, targets; no step) | {feed:,.0f} |")
    if world == 1:
        alone = step_alone(args.variant, args.batch_size, device, precision, max(args.steps // 3, 3), args.compile)
        print(f"| the training step alone (crops already on the device) | {alone:,.0f} |")
    print(f"\n{result.steps} steps in {wall:.1f} s (start-up and the checkpoint write included); last loss {result.last_loss:.4g}")


if __name__ == "__main__":
    main()
