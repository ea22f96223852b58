"""Network-only throughput: rapidpose's ViTPose vs Hugging Face transformers' VitPose, same weights,
same random crops, one process. Prints a markdown table (crops/s, ms per batch).

fp8 is the torch backend's precision "fp8" (the blocks' matrix products in FP8, the rest in bf16; GPUs of
compute capability 8.9 or more): transformers has no such path, so its bf16 rows are the ones to compare.

    python benchmarks/network_speed.py --variant b --device cuda --dtype fp16 bf16 fp8 --batch 64 256 [--compile]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
from pipeline_speed import transformers_model

from rapidpose.errors import InputError
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.bfloat16}  # input dtype


def timed(fn, x, seconds: float, sync) -> float:
    """Mean seconds per call after warm-up, over at least `seconds` of calls."""
    for _ in range(3):
        fn(x)
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn(x)
        n += 1
    sync()
    return (time.perf_counter() - start) / n


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="b", choices=["s", "b", "l", "h"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", nargs="+", default=["fp16"], choices=list(DTYPES))
    p.add_argument("--batch", nargs="+", type=int, default=[64])
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd rapidpose, alone and (on GPUs) under the runtime's CUDA graphs")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs", "max-autotune"],
                   help="torch.compile mode (max-autotune tries Triton GEMM templates with fused epilogues)")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--no-transformers", action="store_true")
    args = p.parse_args()

    cfg = ViTPoseConfig.from_variant(args.variant)
    ours = init_random(ViTPose(cfg))
    theirs = None if args.no_transformers else transformers_model(ours)  # our weights, their names
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"ViTPose-{args.variant.upper()} network only, {name}, torch {torch.__version__}\n")
    print("| implementation | dtype | batch | ms / batch | crops/s |\n|---|---|---|---|---|")
    on_gpu = args.device.startswith("cuda")
    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        graphed = None
        if on_gpu or dtype_name == "fp8":  # fp8 exists only in a runtime: its copy of the network, layers swapped
            try:
                graphed = TorchRuntime(ours, args.device, batch_size=max(args.batch), precision=dtype_name,
                                       cuda_graphs=True)
            except InputError as exc:  # fp8 where the device has no FP8
                print(f"| rapidpose: not run ({exc}) | {dtype_name} | | | |", flush=True)
                continue
        net = graphed.model if dtype_name == "fp8" else ours.to(args.device, dtype)
        runs = [("rapidpose eager", net)]
        if on_gpu:
            runs.append(("rapidpose runtime (CUDA graphs)", graphed.run))
        if args.compile:
            runs.append((f"rapidpose compiled ({args.compile_mode})", torch.compile(net, mode=args.compile_mode)))
            if on_gpu:  # what --compile gives: the compiled network captured per batch size
                compiled = TorchRuntime(ours, args.device, batch_size=max(args.batch), precision=dtype_name,
                                        compile=True, cuda_graphs=True)
                runs.append(("rapidpose runtime (compiled + CUDA graphs)", compiled.run))
        if theirs is not None and dtype_name != "fp8":
            runs.append(("transformers", lambda x, m=theirs.to(args.device, dtype): m(x).heatmaps))
        for batch in args.batch:
            x = torch.randn(batch, 3, 256, 192, device=args.device, dtype=dtype)
            best = {}
            for _ in range(2):  # interleaved rounds, best of each: clock ramp-up favours no one
                for label, fn in runs:
                    with torch.inference_mode():
                        sec = timed(fn, x, args.seconds, sync)
                    best[label] = min(best.get(label, sec), sec)
            for label, sec in best.items():
                print(f"| {label} | {dtype_name} | {batch} | {sec * 1e3:.2f} | {batch / sec:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
