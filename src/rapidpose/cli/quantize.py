"""`rapidpose quantize`: INT8 weights and activations, calibrated on photos, with a report."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rapidpose.deploy.quantize import FORMAT_CHOICES, SCHEMES, quantize_model

log = logging.getLogger("rapidpose")


def add_quantize_parser(sub) -> argparse.ArgumentParser:
    from rapidpose.cli.options import COUNT, SECONDS

    p = sub.add_parser("quantize", help="INT8 post-training quantization with an accuracy and speed report",
                       description="Quantize a ViTPose to INT8 (weights and activations) with real people as "
                                   "calibration data; writes the model and a report (.report.md/.json) beside it.")
    p.add_argument("--model", default="vitpose-b", help="hub name, checkpoint or FP32 .onnx (default vitpose-b)")
    p.add_argument("--calibration", required=True, metavar="DIR",
                   help="photos with people (COCO images, say); required, no default")
    p.add_argument("--images", type=COUNT, default=64, metavar="N",
                   help="calibrate on the people of the first N photos (up to 256 people); the agreement is "
                        "measured on the people of the next photos (up to 32), or, when none is left over, on "
                        "the calibration people, as the report says (default 64)")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                   help="auto: the fastest INT8 here, said in the log and the report (openvino on x86 CPUs "
                        "with openvino and nncf installed, else onnx; an --output ending in .onnx or .xml "
                        "picks its format); openvino (NNCF IR, run by the default CPU backend); onnx (ONNX "
                        "Runtime static quantization, for other runtimes) (default auto)")
    p.add_argument("--scheme", default="per-channel", choices=SCHEMES,
                   help="weight scales: one per tensor, or one per output channel (default per-channel: as "
                        "fast, closer to FP32)")
    p.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="symmetric activations (--no-symmetric: asymmetric) (default: the format's faster, "
                        "symmetric for openvino, asymmetric for onnx)")
    p.add_argument("--detector", default="rtmdet-nano",
                   help="person detector for the calibration crops: rtmdet-nano, yolox-nano or an .onnx path "
                        "(default rtmdet-nano)")
    p.add_argument("--annotations", metavar="FILE",
                   help="COCO keypoint annotations of the images: also report the AP of both (default: none, "
                        "no AP)")
    p.add_argument("--eval-images", metavar="DIR",
                   help="the annotated images, with --annotations (default: the calibration folder)")
    p.add_argument("--timing-seconds", type=SECONDS, default=4.0, metavar="S",
                   help="time each path (FP32 and INT8) for about S seconds for the report's ms per crop, at "
                        "least 3 rounds after a warm-up; 0 times one round, a quick, rough figure (default 4)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="the INT8 model (default ./<model>-int8.xml for openvino, .onnx for onnx)")
    return p


def run_quantize(args) -> int:
    report = quantize_model(args.model, args.calibration, args.output, images=args.images, fmt=args.format,
                            scheme=args.scheme, symmetric=args.symmetric, detector=args.detector,
                            annotations=args.annotations, eval_images=args.eval_images,
                            seconds=args.timing_seconds)
    out = Path(report["int8_model"])
    print(out.with_suffix("").with_name(out.stem + ".report.md").read_text())
    log.info("wrote %s and its report (%s.report.md, .report.json)", out, out.stem)
    return 0
