"""What the commands share: checked number types for argparse, and the options that choose the network."""
from __future__ import annotations

import argparse
import math


def number(kind=float, low=None, high=None):
    """An argparse type: a finite `kind` (int or float) from `low` to `high` (either may be None). A wrong
    value is refused before anything runs, with the range in the message (exit status 2)."""
    what = "a whole number" if kind is int else "a number"
    if low is not None and high is not None:
        allowed = f"{what} from {low} to {high}"
    elif low is not None:
        allowed = f"{what}, {low} or more"
    else:
        allowed = f"{what}, {high} or less"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}; got '{text}'") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


FRACTION = number(float, 0, 1)  # scores and thresholds
COUNT = number(int, 1)  # batch sizes, numbers of images, people, rounds
INDEX = number(int, 0)  # dataset (expert) indices: the model says how many it has
SECONDS = number(float, 0)  # durations: 0 allowed (a quick, rough figure)


DEVICES_HELP = ("cpu, cuda, cuda:N or auto (GPU when there is one); cuda on a host with several GPUs is every "
                "visible one, and a list (cuda:0,2) names some: a worker process each, outputs in input order")


def add_network_options(p, *, model_help: str = "hub name (vitpose-b, vitpose-plus-b, ...) or checkpoint path",
                        precision: str = "auto", compile: bool = True,
                        device_help: str = "cpu, cuda, cuda:N or auto (GPU when there is one)") -> None:
    """--model, --device, --backend, --precision, --flip, --dataset-index (and --compile): the network
    and where it runs, the same for every command that runs it."""
    from rapidpose.runtime import BACKENDS
    from rapidpose.runtime.torch_runtime import PRECISIONS

    p.add_argument("--model", default="vitpose-b", help=f"{model_help} (default vitpose-b)")
    p.add_argument("--device", default="auto", help=f"{device_help} (default auto)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="inference backend (auto: the fastest for the device); .onnx/.xml models pick their own "
                        "(default auto)")
    reference = ("fp32 is the exact reference; auto picks fp16 on GPUs, bf16 on CPUs that have it" if precision == "fp32"
                 else "auto: fp16 on GPU, bf16 on CPUs that have it, else fp32 (fp32 is the exact reference)")
    fp8 = "fp8: FP8 matrix products, the rest bf16, on H100/H200/L40/Ada GPUs (torch backend)"
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help=f"{reference}; {fp8} (default {precision})")
    if compile:
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the network (slow start, faster run) (default: off)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop (default: off)")
    p.add_argument("--dataset-index", type=INDEX, default=0, metavar="N",
                   help="ViTPose++ expert: 0 COCO, 1 AIC, 2 MPII, ... (default 0)")
