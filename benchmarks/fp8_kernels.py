"""The parts of `--precision fp8` on a GPU, one at a time: where the network's time goes.

- gemm: one Linear layer's product at ViTPose-B's shapes for a batch of 256 crops (49,152 token rows),
  bf16 (no bias) against torch._scaled_mm in FP8 (bias added; row-scaled with and without fast accumulation,
  tensor-scaled) and INT8's bare torch._int_mm (whether int8 would be faster than fp8 here), in TFLOP/s.
- rows: the activations' row quantization (rapidpose.runtime.float8) at widths 768 and 3,072, for a batch of
  256 crops and of 64: the Triton kernel (a row a program or several; without GELU, with the exact one, with
  the tanh form), against Inductor's compile of the torch ops and the eager torch ops.
- norm: the blocks' residual add + LayerNorm + row quantization (rapidpose.runtime.fused_norm) at width 768,
  for a batch of 256 and of 64 crops: the Triton kernel (at several rows a program; with the add and without, as
  the first block's) against Inductor's compile of the same torch ops, in ms and TB/s.
- attention: ViTPose-B's attention from the qkv product to proj's input: scaled_dot_product_attention by
  backend (cuDNN, flash, efficient) against rapidpose's Triton kernel (runtime/fused_attention.py).
- swaps: the compiled runtime (CUDA graphs, batch 256 or --batch), fp16 and fp8, with each of its swaps
  (runtime/fused_attention.py, runtime/fused_head.py, runtime/fused_norm.py; fp16 also runtime/fused_gelu.py)
  left out in turn: what each one saves.
- profile: the compiled ViTPose-B at batch 256 (or --batch), bf16 against fp8, by CUDA kernel (torch.profiler):
  the kernels that take the most time in a batch.

    python benchmarks/fp8_kernels.py                       # all six, on cuda
    python benchmarks/fp8_kernels.py --parts rows profile
    python benchmarks/fp8_kernels.py --parts norm swaps    # the add + norm kernel, alone and in the model
    python benchmarks/fp8_kernels.py --parts profile --batch 64
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from torch.nn import functional as F

from rapidpose.runtime.float8 import quantize_rows, register_triton_rows, rows_per_program

ROWS = 256 * 192  # tokens of a batch of 256 crops of ViTPose-B
SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}  # (K, N)


def cuda_ms(fn, calls: int = 30) -> float:
    """Mean milliseconds per call on the GPU after a warm-up: `calls` calls captured in one CUDA graph and
    replayed, so the host's launches are not timed (a Triton launch from Python takes tens of microseconds,
    more than a batch of 64's row kernel runs); where fn cannot be captured, timed call by call with CUDA
    events."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start.record()
        for _ in range(3):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / (3 * calls)
    except RuntimeError:
        torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def gemm_part(device: str) -> None:
    print(f"\nOne layer's product, {ROWS:,} rows (TFLOP/s; INT8: TOPS of the bare product, int32 out, before any "
          "scale or bias: its ceiling)\n\n| layer | K -> N | bf16 | FP8 rows, fast accumulation | FP8 rows "
          "| FP8 tensor-scaled | INT8 (`torch._int_mm`) |\n|---|---|---:|---:|---:|---:|---:|")
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

        a8 = torch.randint(-127, 128, (ROWS, k), device=device, dtype=torch.int8)
        w8 = torch.randint(-127, 128, (n, k), device=device, dtype=torch.int8)
        runs = [lambda: a @ w.t(), fp8(scale, weight_scale.reshape(1, -1), True),
                fp8(scale, weight_scale.reshape(1, -1), False), fp8(one, one, True), lambda: torch._int_mm(a8, w8.t())]
        flops = 2 * ROWS * k * n
        print(f"| {name} | {k:,} -> {n:,} | " + " | ".join(f"{flops / cuda_ms(run) / 1e9:,.0f}" for run in runs) + " |",
              flush=True)


def rows_part(device: str) -> None:
    launch = register_triton_rows()
    many = {width: rows_per_program(width) for width in (768, 3072)}
    print(f"\nRow quantization (ms) of a batch of 256's rows ({ROWS:,}) and of 64's; the kernel with a row a "
          f"program, and with the rows a program the op uses ({many[768]} at width 768, {many[3072]} at 3,072)\n\n"
          "| rows | width | kernel, a row | kernel | + exact GELU, a row | + exact GELU | + tanh GELU, exp form "
          "| + tanh GELU, tanh.approx (the op's) | compiled torch + exact GELU | eager torch |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    compiled = torch.compile(lambda x: quantize_rows(F.gelu(x)))
    for rows in (ROWS, ROWS // 4):
        for width in (768, 3072):
            x = torch.randn(rows, width, device=device, dtype=torch.bfloat16)
            runs = [lambda: launch(x, 0, 1), lambda: launch(x, 0, many[width]), lambda: launch(x, 1, 1),
                    lambda: launch(x, 1, many[width]), lambda: launch(x, 2, many[width]),
                    lambda: launch(x, 3, many[width]), lambda: compiled(x),
                    lambda: quantize_rows(x)]
            print(f"| {rows:,} | {width:,} | " + " | ".join(f"{cuda_ms(run):.3f}" for run in runs) + " |", flush=True)


def norm_part(device: str) -> None:
    from rapidpose.runtime.fused_norm import add_norm_reference, register_triton_norm

    launch = register_triton_norm()
    width, eps = 768, 1e-6
    many = rows_per_program(width)
    choices = sorted({1, 2, many, 8})
    print(f"\nResidual add + LayerNorm + row quantization at width {width} (ms, and TB/s of the bytes it must move: "
          f"x and y read and x + y written in bf16, the e4m3 values and a float32 scale a row; without the add, "
          f"as the first block's: x read, values and scales written); the op uses {many} rows a program. Last "
          f"column: the kernel's e4m3 codes equal to the compiled ops'\n")
    print("| rows | add | " + " | ".join(f"kernel, {r} rows a program" for r in choices)
          + " | compiled torch | kernel vs compiled, codes equal |\n|---:|---|" + "---:|" * (len(choices) + 2))
    compiled = torch.compile(add_norm_reference, dynamic=False)
    for rows in (ROWS, ROWS // 4):  # a batch of 256 crops of ViTPose-B, of 64
        x = torch.randn(rows, width, device=device, dtype=torch.bfloat16)
        y = torch.randn(rows, width, device=device, dtype=torch.bfloat16)
        weight = 1 + 0.1 * torch.randn(width, device=device, dtype=torch.bfloat16)
        bias = 0.02 * torch.randn(width, device=device, dtype=torch.bfloat16)
        for add in (True, False):
            other = y if add else None
            moved = rows * width * (7 if add else 3) + rows * 4
            runs = [lambda r=r: launch(x, other, weight, bias, eps, r) for r in choices]
            runs.append(lambda: compiled(x, other, weight, bias, eps))
            cells = []
            for run in runs:
                ms = cuda_ms(run)
                cells.append(f"{ms:.3f} ({moved / ms / 1e9:.2f})")
            same = (launch(x, other, weight, bias, eps)[-2].view(torch.uint8)
                    == compiled(x, other, weight, bias, eps)[1].view(torch.uint8)).float().mean().item()
            print(f"| {rows:,} | {'yes' if add else 'no'} | " + " | ".join(cells) + f" | {same:.4f} |", flush=True)


def attention_part(device: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from rapidpose.runtime.fused_attention import attention_reference, register_triton_attention

    launch = register_triton_attention()
    print("\nAttention of ViTPose-B (12 heads, 192 tokens, 64 channels a head) from the qkv product's rows to "
          "proj's, ms for the 12 blocks: scaled_dot_product_attention by backend (on the model's permuted "
          "views), and rapidpose's Triton kernel (runtime/fused_attention.py); largest difference from cuDNN's\n")
    print("| batch | dtype | cuDNN | flash | efficient | rapidpose kernel | kernel vs cuDNN |\n"
          "|---:|---|---:|---:|---:|---:|---:|")
    for batch in (64, 256):
        for dtype in (torch.float16, torch.bfloat16):
            qkv = torch.randn(batch, 192, 3 * 768, device=device, dtype=dtype)
            row = []
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
                def run():
                    with sdpa_kernel(backend):
                        return attention_reference(qkv, 12)
                try:
                    row.append(f"{12 * cuda_ms(run):.3f}")
                except RuntimeError as exc:
                    row.append(f"not available ({str(exc).splitlines()[0][:40]})")
            row.append(f"{12 * cuda_ms(lambda: launch(qkv, 12)):.3f}")
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                difference = (launch(qkv, 12).float() - attention_reference(qkv, 12).float()).abs().max().item()
            print(f"| {batch} | {str(dtype)[6:]} | " + " | ".join(row) + f" | {difference:.1e} |", flush=True)


def swaps_part(device: str, batch: int) -> None:
    """The runtime's swaps, each left out in turn: the compiled runtime under CUDA graphs."""
    from unittest import mock

    from rapidpose.evaluate.speed import bench_network
    from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
    from rapidpose.runtime import TorchRuntime

    model = init_random(ViTPose(ViTPoseConfig.from_variant("b"))).eval()
    left_out = {"none": None, "attention kernel": "rapidpose.runtime.fused_attention.fuse_attention",
                "head kernel": "rapidpose.runtime.fused_head.fuse_classic_heads",
                "add + norm kernel": "rapidpose.runtime.fused_norm.fuse_norms",
                "GELU epilogue": "rapidpose.runtime.fused_gelu.fuse_mlp_gelu"}  # fp16 only
    print(f"\nViTPose-B, compiled + CUDA graphs, batch {batch}, with the runtime's swaps each left out in turn "
          "(median of 3 rounds of 2 s)\n\n| precision | left out | ms a batch | crops/s |\n|---|---|---:|---:|")
    for precision in ("fp16", "fp8"):
        for name, target in left_out.items():
            if precision == "fp8" and name == "GELU epilogue":
                continue  # fp8 takes the GELU into fc2's quantization
            with mock.patch(target, lambda model: 0) if target else contextlib.nullcontext():
                runtime = TorchRuntime(model, device, batch, precision, compile=True, cuda_graphs=True)
            # rapidpose bench's network timer; its warm-up runs compile and capture
            crops_per_s = sorted(bench_network(runtime, [batch], seconds=2)[0][1] for _ in range(3))[1]
            print(f"| {precision} | {name} | {batch / crops_per_s * 1e3:.2f} | {crops_per_s:,.0f} |", flush=True)
            del runtime
            torch.cuda.empty_cache()


def profile_part(device: str, top: int, batch: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
    from rapidpose.runtime import TorchRuntime

    model = init_random(ViTPose(ViTPoseConfig.from_variant("b"))).eval()
    for precision in ("bf16", "fp8"):
        runtime = TorchRuntime(model, device, batch, precision, compile=True, cuda_graphs=False)
        x = torch.randn(batch, 3, 256, 192).to(device, runtime.input_dtype)
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
        print(f"\nViTPose-B {precision}, compiled, batch {batch}: {total:.2f} ms of kernels a batch\n\n"
              "| ms a batch | calls a batch | kernel |\n|---:|---:|---|")
        for e in kernels[:top]:
            print(f"| {e.device_time_total / 5 / 1e3:.3f} | {e.count // 5} | `{e.key[:100]}` |")
        del runtime
        torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["gemm", "rows", "norm", "attention", "swaps", "profile"]
    p.add_argument("--parts", nargs="+", default=parts, choices=parts)
    p.add_argument("--device", default="cuda")
    p.add_argument("--top", type=int, default=12, help="kernels listed in each profile (default 12)")
    p.add_argument("--batch", type=int, default=256, help="crops a batch in swaps and profile (default 256)")
    args = p.parse_args()
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        p.error("these are GPU kernels: run on a machine with an NVIDIA GPU (--device cuda)")
    from rapidpose.runtime.float8 import check_device, prefer_memset_free_products

    prefer_memset_free_products()  # the products as the runtime runs them
    check_device(args.device)  # FP8 tensor cores, or a clear message
    print(f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    if "gemm" in args.parts:
        gemm_part(args.device)
    if "rows" in args.parts:
        rows_part(args.device)
    if "norm" in args.parts:
        norm_part(args.device)
    if "attention" in args.parts:
        attention_part(args.device)
    if "swaps" in args.parts:
        swaps_part(args.device, args.batch)
    if "profile" in args.parts:
        profile_part(args.device, args.top, args.batch)


if __name__ == "__main__":
    main()
