"""INT8 against FP32 on this CPU, side by side in one run: ms per crop (batch 8, interleaved rounds) of
FP32 ONNX Runtime, INT8 ONNX Runtime, OpenVINO with FP32 weights (bf16 where the CPU has it: the
fastest non-INT8 path) and INT8 OpenVINO (NNCF), with the heatmap agreement of each INT8 model.
Both INT8 models are calibrated on the people of the same COCO photos, as `rapidpose quantize` does,
each with its format's default recipe (deploy.quantize.SYMMETRIC_DEFAULT).
Random weights of the published shapes: the speed is that of the real models, the agreement is not.

    python benchmarks/int8_speed.py --variant s b
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rapidpose.deploy.export import export_onnx
from rapidpose.deploy.quantize import _Probe, people_crops, quantize_crops, time_models
from rapidpose.evaluate.agreement import agreement
from rapidpose.detect import load_detector
from rapidpose.errors import InputError
from rapidpose.evaluate.speed import random_model
from rapidpose.io import expand_paths
from rapidpose.runtime.onnx_runtime import OnnxRuntime
from rapidpose.runtime.openvino_runtime import OpenVinoRuntime

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", nargs="+", default=["s", "b"], choices=["s", "b", "l", "h"])
    p.add_argument("--calibration", default=str(ASSETS / "images" / "coco-mini" / "images"))
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0, help="timing per path")
    args = p.parse_args()

    detector = load_detector(str(ASSETS / "detectors" / "rtmdet-nano-person.onnx"))
    paths = expand_paths([args.calibration])
    calib = people_crops(paths[:args.images], detector)
    try:  # the people of the next photos; with none left over, the calibration people, said plainly
        check = people_crops(paths[args.images:args.images + 16], detector, max_crops=32)
        where = "other people (held out)"
    except InputError:
        check, where = calib[:32], "of the calibration people themselves (none left over to hold out)"
    print(f"calibration: {len(calib)} people of {args.images} images; agreement on {len(check)} {where}\n")
    print("| model | path | ms / crop | vs FP32 ONNX Runtime | output cosine | output SQNR (dB) |")
    print("|---|---|---:|---:|---:|---:|")
    for variant in args.variant:
        with tempfile.TemporaryDirectory() as folder:
            fp32 = export_onnx(random_model(variant), Path(folder) / "fp32.onnx", check=False)
            ort8 = quantize_crops(fp32, Path(folder) / "int8.onnx", calib, "onnx")
            ov8 = quantize_crops(fp32, Path(folder) / "int8.xml", calib, "openvino")
            bf16 = OpenVinoRuntime(fp32)
            runtimes = {"FP32, ONNX Runtime": OnnxRuntime(fp32), "INT8, ONNX Runtime": OnnxRuntime(ort8),
                        f"FP32 weights, OpenVINO {bf16.precision}": bf16, "INT8, OpenVINO (NNCF)": OpenVinoRuntime(ov8)}
            speed = time_models(runtimes, check, args.seconds)
            ref = _Probe(fp32, [])(check)["output"]
            quality = {"INT8, ONNX Runtime": agreement(ref, _Probe(ort8, [])(check)["output"]),
                       "INT8, OpenVINO (NNCF)": agreement(ref, _Probe(ov8, [])(check)["output"])}
            base = speed["FP32, ONNX Runtime"]
            for name, ms in speed.items():
                q = quality.get(name, {})
                print(f"| ViTPose-{variant.upper()} | {name} | {ms:.1f} | {base / ms:.2f}x | "
                      f"{q.get('cosine', '')} | {q.get('sqnr_db', '')} |", flush=True)


if __name__ == "__main__":
    main()
