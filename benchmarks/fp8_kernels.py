"""The parts of `--precision fp8` on a GPU, one at a time: where the network's time goes.

- gemm: one Linear layer's product at ViTPose-B's shapes for a batch of 256 crops (49,152 token rows),
  bf16 (no bias) against torch._scaled_mm in FP8 (bias added) (row-scaled with and without fast accumulation, tensor-scaled), in
  TFLOP/s.
- rows: the activations' row quantization (rapidpose.runtime.float8) at widths 768 and 3,072: the Triton
  kernel, with the GELU folded in, against Inductor's compile of the torch ops and the eager torch ops.
- profile: the compiled ViTPose-B at batch 256, bf16 against fp8, by CUDA kernel (torch.profiler):
  the kernels that take the most time in a batch.

    python benchmarks/fp8_kernels.py                       # all three, on cuda
    python benchmarks/fp8_kernels.py --parts rows profile
"""
from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from rapidpose.runtime.float8 import quantize_activations, quantize_rows

ROWS = 256 * 192  # tokens of a batch of 256 crops of ViTPose-B
SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}  # (K, N)


def cuda_ms(fn, calls: int = 30) -> float:
    """Mean milliseconds per call on the GPU after a warm-up, timed with CUDA events."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def gemm_part(device: str) -> None:
    print(f"\nOne layer's product, {ROWS:,} rows (TFLOP/s)\n\n| layer | K -> N | bf16 | FP8 rows, fast accumulation "
          "| FP8 rows | FP8 tensor-scaled |\n|---|---|---:|---:|---:|---:|")
    for name, (k, n) in SHAPES.items():
        a = torch.randn(ROWS, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        bias = torch.randn(n, device=device, dtype=torch.bfloat16)
        values, scale = quantize_rows(a)
        weight, weight_scale = quantize_rows(w)
        one = torch.ones((), device=device)

        def fp8(scale_a, scale_b, fast):
            return lambda: torch._scaled_mm(values, weight.t(), scale_a=scale_a, scale_b=scale_b, bias=bias,
                                            out_dtype=torch.bfloat16, use_fast_accum=fast)

        runs = [lambda: a @ w.t(), fp8(scale, weight_scale.reshape(1, -1), True),
                fp8(scale, weight_scale.reshape(1, -1), False), fp8(one, one, True)]
        flops = 2 * ROWS * k * n
        print(f"| {name} | {k:,} -> {n:,} | " + " | ".join(f"{flops / cuda_ms(run) / 1e9:,.0f}" for run in runs) + " |",
              flush=True)


def rows_part(device: str) -> None:
    print(f"\nRow quantization of {ROWS:,} rows (ms)\n\n| width | kernel | kernel + GELU | compiled torch + GELU "
          "| eager torch |\n|---:|---:|---:|---:|---:|")
    compiled = torch.compile(lambda x: quantize_rows(F.gelu(x)))
    for width in (768, 3072):
        x = torch.randn(ROWS, width, device=device, dtype=torch.bfloat16)
        runs = [lambda: quantize_activations(x), lambda: quantize_activations(x, True), lambda: compiled(x),
                lambda: quantize_rows(x)]
        print(f"| {width:,} | " + " | ".join(f"{cuda_ms(run):.3f}" for run in runs) + " |", flush=True)


def profile_part(device: str, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
    from rapidpose.runtime import TorchRuntime

    model = init_random(ViTPose(ViTPoseConfig.from_variant("b"))).eval()
    for precision in ("bf16", "fp8"):
        runtime = TorchRuntime(model, device, 256, precision, compile=True, cuda_graphs=False)
        x = torch.randn(256, 3, 256, 192).to(device, runtime.input_dtype)
        with torch.inference_mode():
            for _ in range(3):
                runtime.forward(x)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    runtime.forward(x)
                torch.cuda.synchronize()
        kernels = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        total = sum(e.device_time_total for e in kernels) / 5 / 1e3
        print(f"\nViTPose-B {precision}, compiled, batch 256: {total:.2f} ms of kernels a batch\n\n"
              "| ms a batch | calls a batch | kernel |\n|---:|---:|---|")
        for e in kernels[:top]:
            print(f"| {e.device_time_total / 5 / 1e3:.3f} | {e.count // 5} | `{e.key[:100]}` |")
        del runtime
        torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["gemm", "rows", "profile"], choices=["gemm", "rows", "profile"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--top", type=int, default=12, help="kernels listed in each profile (default 12)")
    args = p.parse_args()
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        p.error("these are GPU kernels: run on a machine with an NVIDIA GPU (--device cuda)")
    from rapidpose.runtime.float8 import check_device

    check_device(args.device)  # FP8 tensor cores, or a clear message
    print(f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    if "gemm" in args.parts:
        gemm_part(args.device)
    if "rows" in args.parts:
        rows_part(args.device)
    if "profile" in args.parts:
        profile_part(args.device, args.top)


if __name__ == "__main__":
    main()
