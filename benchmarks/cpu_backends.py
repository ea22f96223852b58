"""Network-only speed of every CPU path and precision side by side, on the same random ViTPose weights
and the same crops of real people, per variant:

torch fp32 and bf16 autocast; ONNX Runtime fp32 and INT8 (`rapidpose quantize --format onnx`);
OpenVINO fp32, bf16 and INT8 (`rapidpose quantize --format openvino`, the default on x86), each INT8
model with its format's default recipe, calibrated on the people of a few real photos; Hugging Face
transformers' VitPose in fp32 with the same weights.

The crops are the people of the photos after the calibration ones. Each path is warmed up, then the
paths are timed in interleaved rounds, one batch of each in turn (a busy neighbour on the machine
slows all of them alike), for about `--seconds` per path. Prints a markdown table: median and best ms
per crop, crops/s from the median, the speed-up over ONNX Runtime fp32 (the median over rounds of the
ratio within each round: a machine whose speed changes from one minute to the next, as a shared one
does, moves both sides of each ratio alike), and each path's agreement with torch fp32 (largest
heatmap difference relative to the largest heatmap value, and SQNR).

    python benchmarks/cpu_backends.py --variant s b --batch 8 --seconds 20
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rapidpose.deploy.export import export_onnx, export_openvino
from rapidpose.deploy.quantize import people_crops, quantize_crops
from rapidpose.evaluate.agreement import agreement
from rapidpose.detect import load_detector
from rapidpose.io import expand_paths
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime.onnx_runtime import OnnxRuntime, physical_cores

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
BASE = "ONNX Runtime fp32"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def backends(model, workdir: Path, batch: int, calib: np.ndarray) -> dict:
    """name -> callable(crops np) -> heatmaps np."""
    def torch_fp32(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    def torch_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.from_numpy(x)).float().numpy()

    runs = {"torch fp32": torch_fp32, "torch bf16 autocast": torch_bf16}
    onnx_path = export_onnx(model, workdir / "model.onnx")
    runs[BASE] = OnnxRuntime(onnx_path, batch_size=batch)
    runs["ONNX Runtime INT8 (quantize --format onnx)"] = OnnxRuntime(
        quantize_crops(onnx_path, workdir / "int8.onnx", calib, "onnx"), batch_size=batch)
    if importlib.util.find_spec("openvino") is None:
        print("openvino is not installed: no OpenVINO rows")
    else:
        from rapidpose.runtime.openvino_runtime import OpenVinoRuntime, cpu_supports_bf16

        xml = export_openvino(onnx_path, workdir / "model.xml")
        runs["OpenVINO fp32"] = OpenVinoRuntime(xml, precision="fp32", batch_size=batch)
        if cpu_supports_bf16():
            runs["OpenVINO bf16"] = OpenVinoRuntime(xml, precision="bf16", batch_size=batch)
        # as the default backend runs it (precision auto: bf16 for the layers left in float, where the CPU has it)
        runs["OpenVINO INT8 (quantize --format openvino)"] = OpenVinoRuntime(
            quantize_crops(onnx_path, workdir / "int8.xml", calib, "openvino"), batch_size=batch)
    from pipeline_speed import transformers_model  # the same weights under transformers' names

    theirs = transformers_model(model)
    if theirs is None:
        print("transformers is not installed: no transformers row")
    else:
        def transformers_fp32(x):
            with torch.inference_mode():
                return theirs(torch.from_numpy(x)).heatmaps.numpy()

        runs["transformers fp32"] = transformers_fp32
    return runs


def interleaved(runs: dict, x: np.ndarray, seconds: float) -> dict[str, list[float]]:
    """Seconds per batch of each path: rounds that run each once in turn, for about `seconds` per
    path and at least 3 rounds."""
    times = {name: [] for name in runs}
    end = time.perf_counter() + seconds * len(runs)
    while time.perf_counter() < end or len(times[BASE]) < 3:
        for name, fn in runs.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", nargs="+", default=["s", "b"], choices=["s", "b", "l", "h"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per path, interleaved (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    p.add_argument("--calibration", default=str(ASSETS / "images" / "coco-val2017-100"),
                   help="photos with people: the INT8 models are calibrated on the people of the first "
                        "--calibration-images, the paths run on the people of the next ones")
    p.add_argument("--calibration-images", type=int, default=16,
                   help="how many photos calibrate the INT8 models (default 16)")
    args = p.parse_args()
    torch.set_num_threads(args.threads or physical_cores())

    import onnxruntime

    try:
        import openvino
        ov_version = openvino.__version__.split("-")[0]
    except ImportError:
        ov_version = "not installed"
    detector = load_detector(str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"))
    paths = expand_paths([args.calibration])
    calib = people_crops(paths[:args.calibration_images], detector)
    people = people_crops(paths[args.calibration_images:args.calibration_images + 32], detector, max_crops=args.batch)
    x = np.resize(people, (args.batch,) + people.shape[1:])  # repeated to fill the batch if too few
    print(f"{cpu_name()}, {physical_cores()} physical cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, openvino {ov_version}; "
          f"batch {args.batch} of {len(people)} people, INT8 calibrated on {len(calib)} people of the first "
          f"{args.calibration_images} photos of {Path(args.calibration).name}; random weights; about "
          f"{args.seconds:g} s per path in interleaved rounds\n")
    for variant in args.variant:
        model = init_random(ViTPose(ViTPoseConfig.from_variant(variant)))
        with tempfile.TemporaryDirectory() as tmp:
            runs = backends(model, Path(tmp), args.batch, calib)
            ref = runs["torch fp32"](x)
            peak = float(np.abs(ref).max())
            quality = {}
            for name, fn in runs.items():  # also the warm-up: first calls compile and allocate
                out = fn(x)
                quality[name] = (float(np.abs(out - ref).max()) / peak, agreement(ref, out)["sqnr_db"])
                fn(x)
            times = {name: np.array(t) / args.batch * 1e3 for name, t in interleaved(runs, x, args.seconds).items()}
        print(f"| model | path | ms/crop (median) | ms/crop (best) | crops/s | x {BASE} | max diff vs torch fp32 "
              f"(rel.) | SQNR vs torch fp32 (dB) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, t in times.items():
            med, best, ratio = np.median(t), t.min(), np.median(times[BASE] / t)
            diff, sqnr = quality[name]
            print(f"| ViTPose-{variant.upper()} | {name} | {med:.1f} | {best:.1f} | {1e3 / med:.1f} | "
                  f"{ratio:.2f}x | {diff:.1e} | {sqnr:.1f} |", flush=True)
        print(f"\n{len(times[BASE])} interleaved rounds\n", flush=True)


if __name__ == "__main__":
    main()
