"""Where the network's GPU time goes: top CUDA kernels of rapidpose's ViTPose and of transformers'
VitPose on the same weights and crops, and rapidpose's time under each attention backend.

    python benchmarks/profile_network.py --variant b --batch 256 --dtype fp16
"""
from __future__ import annotations

import argparse

import torch
from network_speed import DTYPES, timed
from pipeline_speed import transformers_model
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random


def top_kernels(fn, x, rows: int) -> str:
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn(x)
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", default="b")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    p.add_argument("--rows", type=int, default=12)
    args = p.parse_args()
    dtype = DTYPES[args.dtype]
    cfg = ViTPoseConfig.from_variant(args.variant)
    ours = init_random(ViTPose(cfg)).cuda().to(dtype)
    theirs = transformers_model(ours, "cuda", dtype)
    x = torch.randn(args.batch, 3, 256, 192, device="cuda", dtype=dtype)
    sync = torch.cuda.synchronize
    print(f"## rapidpose ViTPose-{args.variant.upper()} {args.dtype} batch {args.batch}\n")
    print(top_kernels(ours, x, args.rows))
    print("\n## transformers\n")
    print(top_kernels(lambda t: theirs(t).heatmaps, x, args.rows))
    print("\n| rapidpose attention backend | ms / batch |\n|---|---:|")
    for backend in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with torch.inference_mode():
                if backend is None:
                    sec = timed(ours, x, 1.0, sync)
                else:
                    with sdpa_kernel(backend):
                        sec = timed(ours, x, 1.0, sync)
            print(f"| {backend or 'default'} | {sec * 1e3:.2f} |")
        except RuntimeError as exc:
            print(f"| {backend} | unavailable ({str(exc)[:60]}) |")
    with torch.inference_mode():
        print(f"| transformers default | {timed(lambda t: theirs(t).heatmaps, x, 1.0, sync) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
