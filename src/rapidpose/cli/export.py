"""`rapidpose export`: an ONNX file or OpenVINO IR of a model, checked against torch."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rapidpose.deploy.export import FORMATS, default_stem, export_onnx, export_openvino
from rapidpose.errors import InputError, check_choice
from rapidpose.runtime.metadata import read_metadata

log = logging.getLogger("rapidpose")
MIN_OPSET = 14  # torch exports scaled_dot_product_attention from opset 14 on


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add `rapidpose export` to a `parser.add_subparsers()` object."""
    from rapidpose.cli.options import INDEX, number

    p = subparsers.add_parser(
        "export", help="write a ViTPose model as ONNX or OpenVINO IR",
        description="Export a ViTPose checkpoint (fp32, dynamic batch) for onnxruntime or OpenVINO, "
                    "checked against torch on random crops unless --no-check.")
    p.add_argument("--model", default="vitpose-b",
                   help="hub name (vitpose-b, vitpose-plus-b, ...) or checkpoint path (default vitpose-b)")
    p.add_argument("--format", default="onnx", choices=sorted(FORMATS), help="onnx or openvino (default onnx)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="output file (.onnx, or .xml for openvino) (default: <model name>[-<dataset>].<ext> in the "
                        "current folder)")
    p.add_argument("--dataset-index", type=INDEX, default=0, metavar="N",
                   help="ViTPose++ expert: 0 COCO, 1 AIC, 2 MPII, ... (default 0)")
    p.add_argument("--opset", type=number(int, MIN_OPSET), default=17, metavar="N",
                   help=f"ONNX opset of --format onnx, {MIN_OPSET} or later (the attention's operators) (default 17)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the exported file against torch (default: the file is checked)")
    return p


def run_export(args) -> int:
    """`rapidpose export`: load the model, write the file, say where it went."""
    from rapidpose.model.weights import load_model

    fmt = args.format
    check_choice("export format", fmt, sorted(FORMATS))
    model = load_model(args.model, device="cpu", dataset_index=args.dataset_index)
    if args.output:
        output = Path(args.output).expanduser()
        if output.suffix.lower() != FORMATS[fmt]:
            raise InputError(f"--output '{output}' does not fit --format {fmt}: it must end in {FORMATS[fmt]}")
    else:
        stem = default_stem(str(args.model))
        if args.dataset_index:
            stem += f"-{model.skeleton.name}"
        output = Path.cwd() / (stem + FORMATS[fmt])
    if output.is_dir():
        raise InputError(f"--output '{output}' is a folder: give a file name ending in {FORMATS[fmt]}")

    log.info("exporting %s to %s%s", args.model, output, ", then checking it against torch" if args.check else "")
    if fmt == "onnx":
        written = export_onnx(model, output, opset=getattr(args, "opset", 17), check=args.check)
        extra = ""
    else:
        written = export_openvino(model, output, check=args.check)
        extra = f" (+ {written.with_suffix('.bin').name})"
    meta = read_metadata(written)
    checked = "checked against torch" if args.check else "not checked"
    name = "ViTPose" + ("++" if meta.get("num_experts", 1) > 1 else "")
    name += f"-{meta['variant'].upper()}" if meta["variant"] != "custom" else " (custom size)"
    log.info("wrote %s%s: %s, %s (%d keypoints), dataset index %d, %s", written, extra, name, meta["skeleton"],
             meta["num_keypoints"], meta["dataset_index"], checked)
    return 0
