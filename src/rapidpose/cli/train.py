"""`rapidpose train`: train or fine-tune ViTPose on a COCO-format keypoint set with the official recipe."""
from __future__ import annotations

import json
import logging

from rapidpose.cli.options import COUNT, number

log = logging.getLogger("rapidpose")

POSITIVE = number(float, 0)


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune ViTPose on COCO-format keypoints",
                       description="Train ViTPose on any COCO-format keypoint file with the official recipe (AdamW, "
                                   "layer-wise lr decay, warm-up and step decay, UDP targets, flip / half-body / scale "
                                   "/ rotation augmentation). The keypoint set (names, skeleton, left/right pairs, "
                                   "OKS sigmas) is read from the file's category. Writes checkpoints after every "
                                   "epoch, the best by validation AP, log.jsonl, settings.json and training.png into "
                                   "--output. Several GPUs: torchrun --nproc-per-node N -m rapidpose train ...")
    p.add_argument("--annotations", required=True, metavar="FILE", help="COCO keypoint annotations to train on")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder of their images")
    p.add_argument("--output", required=True, metavar="DIR", help="where checkpoints, logs and the plot go")
    p.add_argument("--model", default="random-b",
                   help="a model name (vitpose-b, ...), a checkpoint, or random-s|b|l|h to start from random weights; "
                        "a model with other keypoints keeps its backbone and gets a new head (default random-b)")
    p.add_argument("--val-annotations", metavar="FILE", help="COCO keypoint annotations to validate on after each "
                                                              "epoch (AP with their boxes) (default: none)")
    p.add_argument("--val-images", metavar="DIR", help="the folder of the validation images (default: none)")
    p.add_argument("--epochs", type=COUNT, metavar="N", help="epochs (default: the recipe's 210)")
    p.add_argument("--batch-size", type=COUNT, default=64, metavar="B",
                   help="people per step in each process (default 64, the official per-GPU batch)")
    p.add_argument("--lr", type=POSITIVE, metavar="LR",
                   help="base learning rate (default: 5e-4 at batch 512, scaled linearly to the global batch)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: cuda if present)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on GPUs, fp32 on CPUs (default auto)")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only (default: off)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network for the training steps: a minute or so to compile, then "
                        "faster steps; for long runs (default: off)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output from its last.pth (default: off)")
    p.add_argument("--category-id", type=int, metavar="ID",
                   help="the keypoint category to train, where the file has several (default: its only one)")
    p.add_argument("--recipe", metavar="JSON", default="{}",
                   help='recipe overrides as JSON, e.g. \'{"layer_decay": 0.8, "rotation_p": 0}\' (default: none)')
    p.add_argument("--seed", type=int, default=0, help="seed of the order and the augmentation (default 0)")
    p.add_argument("--log-every", type=COUNT, default=10, metavar="N", help="steps between log lines (default 10)")
    p.add_argument("--max-steps", type=COUNT, metavar="N", help="stop after N steps (default: the whole schedule)")
    p.add_argument("--val-every", type=COUNT, default=1, metavar="N",
                   help="validate after every N epochs and after the last (default 1)")


def run_train(args) -> int:
    from rapidpose.errors import InputError
    from rapidpose.train import TrainOptions, train

    try:
        overrides = json.loads(args.recipe)
    except json.JSONDecodeError as exc:
        raise InputError(f"--recipe must be a JSON object such as '{{\"layer_decay\": 0.8}}': {exc}") from None
    if not isinstance(overrides, dict):
        raise InputError(f"--recipe must be a JSON object such as '{{\"layer_decay\": 0.8}}', not {args.recipe}")
    result = train(TrainOptions(
        annotations=args.annotations, images=args.images, output=args.output, model=args.model,
        val_annotations=args.val_annotations, val_images=args.val_images, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, device=args.device, precision=args.precision,
        freeze_backbone=args.freeze_backbone, resume=args.resume, seed=args.seed, log_every=args.log_every,
        recipe=overrides, category_id=args.category_id, max_steps=args.max_steps,
        val_every=args.val_every, compile=args.compile))
    best = f", best validation AP {result.best_ap:.4f}" if result.best_ap is not None else ""
    log.info("trained %d steps (%d epochs): last loss %.4g, %.0f people/s%s; checkpoints in %s", result.steps,
             result.epochs, result.last_loss, result.images_per_s, best, result.output)
    return 0
