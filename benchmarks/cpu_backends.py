"""Network-only speed of the CPU backends on the same random ViTPose weights and crops.

torch fp32, torch bf16 autocast, onnxruntime fp32, OpenVINO fp32 and OpenVINO bf16, per variant.
Each backend is warmed up, then timed for `--seconds` in all, split over `--rounds` passes that take
the backends in turn (so a busy neighbour on the machine slows all of them alike). Prints a markdown
table: median and best ms per crop over the timed calls, crops/s from the median, and the largest
heatmap difference from torch fp32 relative to the largest heatmap value.

    python benchmarks/cpu_backends.py --variant s b --batch 8 --seconds 6
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rapidpose.deploy.export import export_onnx, export_openvino
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime.onnx_runtime import OnnxRuntime, physical_cores


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def backends(model, workdir: Path, batch: int) -> dict:
    """name -> callable(crops np) -> heatmaps np."""
    def torch_fp32(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    def torch_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.from_numpy(x)).float().numpy()

    runs = {"torch fp32": torch_fp32, "torch bf16 autocast": torch_bf16}
    onnx_path = export_onnx(model, workdir / "model.onnx")
    runs["onnxruntime fp32"] = OnnxRuntime(onnx_path, batch_size=batch)
    try:
        from rapidpose.runtime.openvino_runtime import OpenVinoRuntime, cpu_supports_bf16
    except ImportError:
        return runs
    xml = export_openvino(onnx_path, workdir / "model.xml")
    runs["openvino fp32"] = OpenVinoRuntime(xml, precision="fp32", batch_size=batch)
    if cpu_supports_bf16():
        runs["openvino bf16"] = OpenVinoRuntime(xml, precision="bf16", batch_size=batch)
    return runs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", nargs="+", default=["s", "b"], choices=["s", "b", "l", "h"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per backend (after warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="passes over the backends the time is split into")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    args = p.parse_args()
    torch.set_num_threads(args.threads or physical_cores())

    import onnxruntime

    try:
        import openvino
        ov_version = openvino.__version__.split("-")[0]
    except ImportError:
        ov_version = "not installed"
    print(f"{cpu_name()}, {physical_cores()} physical cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, openvino {ov_version}; "
          f"batch {args.batch}, random weights\n")
    print("| model | backend | ms/crop (median) | ms/crop (best) | crops/s | max diff vs torch fp32 (rel.) |")
    print("|---|---|---:|---:|---:|---:|")
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 256, 192), dtype=np.float32)
    for variant in args.variant:
        model = init_random(ViTPose(ViTPoseConfig.from_variant(variant)))
        with tempfile.TemporaryDirectory() as tmp:
            runs = backends(model, Path(tmp), args.batch)
            ref = runs["torch fp32"](x)
            peak = float(np.abs(ref).max())
            diffs, times = {}, {name: [] for name in runs}
            for name, fn in runs.items():  # warm-up (first calls compile and allocate)
                diffs[name] = float(np.abs(fn(x) - ref).max()) / peak
                fn(x)
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    start = time.perf_counter()
                    while True:
                        t0 = time.perf_counter()
                        fn(x)
                        times[name].append(time.perf_counter() - t0)
                        if time.perf_counter() - start >= args.seconds / args.rounds:
                            break
            for name, t in times.items():
                med, best = np.median(t) / args.batch * 1e3, np.min(t) / args.batch * 1e3
                print(f"| ViTPose-{variant.upper()} | {name} | {med:.1f} | {best:.1f} | {1e3 / med:.1f} | "
                      f"{diffs[name]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
