"""INT8 post-training quantization of a ViTPose (weights and activations, 8 bits), with a report.

Two toolchains, each writing a model that rapidpose's matching backend runs as it is:
- OpenVINO's NNCF -> an INT8 IR (.xml + .bin); run it with `--model x-int8.xml` (OpenVINO, the
  default backend on CPUs).
- ONNX Runtime's static quantization -> an INT8 .onnx (QOperator format: QLinearMatMul kernels, the
  fastest of ONNX Runtime's layouts on CPUs); run it with `--model x-int8.onnx`, for other runtimes.
Format "auto" (the default) picks the faster for the machine: OpenVINO on x86 CPUs where openvino
and nncf import, else ONNX Runtime (choose_format), and says why.

Calibration data are real people: the first images of a folder, boxes from the person detector,
cropped and normalised exactly as the pipeline does. Weights and activations are quantized (the
network input too), biases kept in float. The default recipe is the fastest of each format at the
best agreement measured (SYMMETRIC_DEFAULT): per-channel weight scales; symmetric activations for
OpenVINO, asymmetric for ONNX Runtime. OpenVINO's CPU kernels take symmetric weights only, so
NNCF's weights are symmetric whatever `symmetric` says; its activations follow it.

The report beside the model (.report.md and .report.json) says what the INT8 model costs and gives:
file size, speed of FP32 and INT8 side by side on this machine, heatmap agreement (cosine similarity
and signal-to-quantization-noise ratio after each quarter of the backbone and at the output),
keypoint agreement (mean OKS between FP32 and INT8 keypoints) and, given COCO annotations, the AP of
both. The agreement is measured on the people of the photos after the calibration ones (held out);
when there are none, on the calibration people themselves, and the report says which
(`agreement_on`: "held-out" or "calibration").
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rapidpose.deploy.export import INPUT_NAME, OUTPUT_NAME, default_stem, export_onnx
from rapidpose.errors import InputError, check_choice, require
from rapidpose.evaluate.agreement import agreement, keypoint_oks
from rapidpose.runtime.metadata import METADATA_SECTION, encode_metadata, read_metadata
from rapidpose.topdown.geometry import boxes_to_center_scale, normalize_crops, udp_matrices, warp_crops

log = logging.getLogger("rapidpose")

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
FORMAT_CHOICES = ("auto", *FORMATS)
SCHEMES = ("per-tensor", "per-channel")
# Symmetric activations or not, by format: each one's fastest at the same agreement. Measured
# 2026-11-29 on 2 Zen 4 cores (avx512_vnni), ViTPose-S and B with random weights, batch 8, every recipe
# in one run of interleaved rounds on a busy machine (the ratios between recipes hold, not the times),
# speed against FP32 ONNX Runtime and SQNR of the heatmaps on held-out people:
# - OpenVINO per-channel symmetric: 3.8x (S) / 4.0x (B), 27.0 / 25.9 dB. Asymmetric activations give
#   the same SQNR 2-21% slower; per-tensor weights run as fast with 1.4-1.7 dB less SQNR. The
#   backend's default bf16 inference hint for the layers left in float is 1-4% faster than f32 there,
#   at 0.1 dB less.
# - ONNX Runtime per-channel asymmetric: 1.5x / 1.9x, 29.5 / 28.8 dB (per-tensor: 1.4x / 1.8x,
#   1.3-1.4 dB less). Symmetric (int8 activations) runs 3x slower than FP32 (S): onnxruntime itself
#   warns that its QOperator format with int8 activations is slow on x64.
SYMMETRIC_DEFAULT = {"openvino": True, "onnx": False}
X86 = ("x86_64", "amd64", "i386", "i686", "x86")
MIN_ROUNDS = 3  # timed rounds of each path at the least, unless timing is turned down to one (seconds=0)


# ---------------------------------------------------------------- calibration data

def people_crops(paths, detector, input_size=(192, 256), max_crops: int = 256) -> np.ndarray:
    """Normalised crops (N, 3, H, W) of the people the detector finds in `paths`, as the pipeline
    crops them; unreadable images are reported and skipped."""
    crops, _ = _find_people(paths, detector, input_size, max_crops)
    if crops is None:
        raise InputError(f"the detector found no person in the {len(paths)} images given: give photos with "
                         f"people (COCO images, say)")
    return crops


def _find_people(paths, detector, input_size, max_crops: int) -> tuple[np.ndarray | None, list[int]]:
    """people_crops' work: the crops (None if nobody was found) and the number of people found in
    each image read, in order (unreadable images are left out)."""
    from rapidpose.errors import RapidPoseError
    from rapidpose.io import read_image

    crops, counts = [], []
    for path in paths:
        try:
            image = read_image(path)
        except RapidPoseError as exc:
            log.warning("skipped %s", exc)  # quantize and bench --agreement both look for people here
            continue
        boxes, _ = detector(image)
        counts.append(len(boxes))
        if len(boxes):
            center, scale = boxes_to_center_scale(boxes, input_size)
            crops.append(warp_crops(image, udp_matrices(center, scale, input_size), input_size))
        if sum(counts) >= max_crops:
            break
    if not crops:
        return None, counts
    return normalize_crops(np.concatenate(crops)[:max_crops]), counts


def _images_holding(counts: list[int], people: int) -> int:
    """How many of the images read (people per image in `counts`) the first `people` people come from."""
    total = 0
    for i, n in enumerate(counts, 1):
        total += n
        if total >= people:
            return i
    return len(counts)


# ---------------------------------------------------------------- the two quantizers

def quantize_onnx(fp32: Path, out: Path, crops: np.ndarray, per_channel: bool, symmetric: bool) -> Path:
    """ONNX Runtime static quantization of the MatMuls and Convs (the network's weights)."""
    require("onnx", "quantize")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(crops[i:i + 1] for i in range(len(crops)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="rapidpose-quantize-") as tmp, _onnxruntime_notes_dropped():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Crops(), quant_format=QuantFormat.QOperator,
                        per_channel=per_channel, op_types_to_quantize=["MatMul", "Conv"],
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": symmetric, "ActivationSymmetric": symmetric,
                                       "QuantizeBias": False,
                                       "MatMulConstBOnly": True})  # attention's activation products stay float
    _copy_onnx_metadata(fp32, out)
    return out


def quantize_openvino(fp32: Path, out: Path, crops: np.ndarray, per_channel: bool, symmetric: bool) -> Path:
    """NNCF post-training quantization of the IR converted from the FP32 ONNX."""
    ov = require("openvino", "quantize")
    nncf = require("nncf", "quantize")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    model = ov.convert_model(str(fp32))
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED
    advanced = AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(
        per_channel=per_channel))
    with _nncf_output_tamed():
        quantized = nncf.quantize(model, nncf.Dataset([crops[i:i + 1] for i in range(len(crops))]),
                                  preset=preset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(crops),
                                  advanced_parameters=advanced)

    for key, value in encode_metadata(read_metadata(fp32)).items():
        quantized.set_rt_info(value, [METADATA_SECTION, key])
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def quantize_crops(fp32: Path, out: Path, crops: np.ndarray, fmt: str, scheme: str = "per-channel",
                   symmetric: bool | None = None) -> Path:
    """FP32 ONNX `fp32` -> INT8 `out` in format `fmt` ("onnx" or "openvino"), calibrated on `crops`;
    `symmetric` None takes the format's default (SYMMETRIC_DEFAULT)."""
    check_choice("format", fmt, FORMATS)
    check_choice("scheme", scheme, SCHEMES)
    symmetric = SYMMETRIC_DEFAULT[fmt] if symmetric is None else symmetric
    quantizer = quantize_onnx if fmt == "onnx" else quantize_openvino
    return quantizer(fp32, out, crops, scheme == "per-channel", symmetric)


def choose_format() -> tuple[str, str]:
    """The INT8 format that runs fastest on this machine, and why, in words for the log and the report:
    OpenVINO (NNCF) on x86 CPUs where openvino and nncf import (its INT8 kernels use VNNI/AMX: ViTPose-S/B
    3.4x / 3.6x FP32 ONNX Runtime on 2 Zen 4 cores, against ONNX Runtime INT8's 1.3x / 1.9x), else ONNX
    Runtime's."""
    machine = platform.machine().lower()
    if machine not in X86:
        return "onnx", (f"this CPU is {machine or 'of an unknown kind'}, not x86: OpenVINO's fast INT8 kernels "
                        f"(VNNI/AMX) are x86's, ONNX Runtime's run on every CPU")
    missing = [name for name in ("openvino", "nncf") if not _importable(name)]
    if missing:
        return "onnx", (f"{' and '.join(missing)} cannot be imported (pip install 'rapidpose[quantize]' for "
                        f"OpenVINO's INT8, the fastest on x86 CPUs)")
    found = _int8_instructions()
    cpu = f"this x86 CPU has {' and '.join(found)}, which" if found else "this is an x86 CPU, whose VNNI/AMX"
    return "openvino", f"openvino and nncf are installed and {cpu} OpenVINO's INT8 kernels use"


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _int8_instructions() -> list[str]:
    """The INT8 dot-product instructions of this CPU that OpenVINO uses, by their Linux names ([] where
    /proc/cpuinfo is not there to say)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags]


def _resolve_format(fmt: str, out) -> tuple[str, str]:
    """(format, why) for the `fmt` asked for: "auto" follows an output file's suffix where one is
    given, else choose_format()."""
    check_choice("format", fmt, FORMAT_CHOICES)
    if fmt != "auto":
        return fmt, f"as asked (--format {fmt})"
    if out is not None:
        suffix = Path(out).suffix.lower()
        by_suffix = {ext: name for name, ext in FORMATS.items()}
        if suffix not in by_suffix:
            raise InputError(f"output '{out}' must end in .xml (OpenVINO) or .onnx (ONNX Runtime), or leave "
                             f"--output out to get ./<model>-int8 in the format fastest here")
        return by_suffix[suffix], f"chosen by --format auto from the output's suffix ({suffix})"
    fmt, why = choose_format()
    return fmt, f"chosen by --format auto: {why}"


class _OnnxRuntimeNotes(logging.Filter):
    """Drops the notes (below WARNING) that onnxruntime's quantizer logs on the root logger, one per
    attention product: 'Ignore MatMul due to non constant B: ...'."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


@contextlib.contextmanager
def _onnxruntime_notes_dropped():
    """Keep onnxruntime's quantizer notes out of the caller's log while it runs (shown with `rapidpose -v`,
    the 'rapidpose' logger at DEBUG). Its warnings and errors pass."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    root, notes = logging.getLogger(), _OnnxRuntimeNotes()
    root.addFilter(notes)
    try:
        yield
    finally:
        root.removeFilter(notes)


@contextlib.contextmanager
def _nncf_output_tamed():
    """While NNCF quantizes: its log (which it prints to stdout through a handler of its own) goes
    through Python logging like everyone's, so the caller's settings apply (`rapidpose quantize` shows
    its warnings, its notes with -v); its progress bars (rich, on stdout) go to stderr, and only where
    rapidpose shows its own (a terminal, not -q: rapidpose.progress.enabled). stdout keeps the report."""
    from rapidpose.progress import enabled

    nncf_log = logging.getLogger("nncf")  # NNCF's own logger class: nncf is imported by now
    saved = nncf_log.handlers[:], nncf_log.propagate, nncf_log.level
    for handler in saved[0]:
        nncf_log.removeHandler(handler)
    nncf_log.propagate, nncf_log.level = True, logging.NOTSET
    try:
        from rich import get_console

        console = get_console()  # NNCF's bars draw on rich's shared console
    except ImportError:  # pragma: no cover - rich comes with nncf
        console = None
    if console is not None:
        console_saved = console.quiet, console.stderr
        console.quiet, console.stderr = not enabled(), True
    try:
        yield
    finally:
        if console is not None:
            console.quiet, console.stderr = console_saved
        for handler in saved[0]:
            nncf_log.addHandler(handler)
        nncf_log.propagate, nncf_log.level = saved[1], saved[2]


def _copy_onnx_metadata(source: Path, target: Path) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(target))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(target))


# ---------------------------------------------------------------- agreement and speed

def block_outputs(fp32: Path) -> list[tuple[str, str]]:
    """(label, node name) of the backbone's output after each quarter of its blocks."""
    import onnx

    nodes = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node]
    depth = sum(1 for n in nodes if n.endswith("/Add_1") and "/blocks." in n)
    ends = sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3, 4)})
    return [(f"backbone blocks 1-{e} of {depth}", next(n for n in nodes if n.endswith(f"/blocks.{e - 1}/Add_1")))
            for e in ends]


class _Probe:
    """Runs a model and returns its heatmaps plus the named intermediate outputs."""

    def __init__(self, path: Path, nodes: list[str], threads: int | None = None):
        self.nodes = nodes
        if path.suffix == ".xml":
            import openvino as ov

            model = ov.Core().read_model(str(path))
            by_name = {op.get_friendly_name(): op for op in model.get_ops()}
            self.found = [n for n in nodes if n in by_name]
            model.add_outputs([by_name[n].output(0) for n in self.found])
            compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            request = compiled.create_infer_request()
            self._run = lambda x: [np.array(t) for t in request.infer({0: x}).values()]
        else:
            import onnx
            import onnxruntime as ort

            model = onnx.load(str(path))
            outputs = {o for n in model.graph.node for o in n.output}
            by_node = {n.name: n.output[0] for n in model.graph.node}
            self.found = [n for n in nodes if by_node.get(n) in outputs]
            for n in self.found:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(by_node[n]))
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            names = [OUTPUT_NAME] + [by_node[n] for n in self.found]
            self._run = lambda x: session.run(names, {INPUT_NAME: x})

    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self._run(crops[i:i + 8]) for i in range(0, len(crops), 8)]
        return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(["output"] + self.found)}


def time_models(runtimes: dict, crops: np.ndarray, seconds: float = 4.0, batch: int = 8) -> dict:
    """Median ms per crop of each runtime at `batch`, in interleaved rounds (fair on a busy machine):
    one warm-up run each, then rounds for about `seconds` per runtime, at least 3. seconds=0 times a
    single round: a quick, rough figure (smoke tests)."""
    x = crops[:batch] if len(crops) >= batch else np.resize(crops, (batch,) + crops.shape[1:])
    for run in runtimes.values():
        run(x)  # warm-up
    times = {name: [] for name in runtimes}
    rounds = MIN_ROUNDS if seconds > 0 else 1
    end = time.perf_counter() + seconds * len(runtimes)
    while time.perf_counter() < end or min(len(t) for t in times.values()) < rounds:
        for name, run in runtimes.items():
            start = time.perf_counter()
            run(x)
            times[name].append((time.perf_counter() - start) * 1000 / batch)
    return {name: round(float(np.median(t)), 2) for name, t in times.items()}


# ---------------------------------------------------------------- the whole job

def quantize_model(model, calibration, out=None, *, images: int = 64, fmt: str = "auto",
                   scheme: str = "per-channel", symmetric: bool | None = None, detector="rtmdet-nano",
                   annotations=None, eval_images=None, seconds: float = 4.0) -> dict:
    """Write the INT8 model and its report; returns the report as a dict (paths included).

    model: hub name, checkpoint or FP32 .onnx. fmt: "auto" (the fastest here, choose_format; an
    `out` ending in .onnx or .xml picks its format), "openvino" or "onnx"; the report says which and
    why (report["format_reason"]). symmetric: symmetric activations; None, the format's faster
    (SYMMETRIC_DEFAULT). calibration: a folder (or files) of photos with
    people; the first `images` are used (their people, up to 256 crops). The agreement of FP32 and
    INT8 is measured on the people of the next images, up to 32 images (64 people); if no person is
    left over (the folder has `images` photos or fewer, or the next ones show nobody), on the first 64
    calibration people, and the report says so (report["agreement_on"]: "held-out" or
    "calibration"). annotations (+
    eval_images, default: the calibration folder): COCO keypoints to report the AP of both models
    with ground-truth boxes. seconds: how long each path is timed for the ms per crop (at least 3
    rounds after a warm-up; 0 times one round: a quick, rough figure).
    """
    from rapidpose.detect import load_detector
    from rapidpose.io import expand_paths
    from rapidpose.runtime.onnx_runtime import OnnxRuntime

    fmt, format_reason = _resolve_format(fmt, out)
    check_choice("scheme", scheme, SCHEMES)
    symmetric = SYMMETRIC_DEFAULT[fmt] if symmetric is None else bool(symmetric)
    if images < 1:
        raise InputError(f"--images must be at least 1; got {images}")
    if not 0 <= seconds < float("inf"):  # NaN too
        raise InputError(f"--timing-seconds must be 0 or more (and finite); got {seconds}")
    if annotations is not None and not Path(annotations).expanduser().is_file():
        raise InputError(f"annotation file '{annotations}' does not exist: pass COCO keypoint annotations of "
                         f"the images (e.g. person_keypoints_val2017.json)")
    if eval_images is not None and annotations is None:
        raise InputError("--eval-images needs --annotations: the AP is measured against annotations")
    if eval_images is not None and not Path(eval_images).expanduser().is_dir():
        raise InputError(f"eval images folder '{eval_images}' does not exist: pass the folder holding the "
                         f"annotated images")
    if isinstance(calibration, (str, Path)) and not Path(calibration).expanduser().exists():
        raise InputError(f"calibration folder '{calibration}' does not exist: give a folder of photos with people")
    paths = expand_paths([calibration] if isinstance(calibration, (str, Path)) else calibration)
    out = Path(out).expanduser() if out else Path.cwd() / f"{default_stem(str(model))}-int8{FORMATS[fmt]}"
    if out.suffix.lower() != FORMATS[fmt]:
        raise InputError(f"output '{out}' does not fit --format {fmt}: it must end in {FORMATS[fmt]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fp32 = _fp32_onnx(model, out)
    meta = read_metadata(fp32)
    input_size = tuple(meta.get("input_size") or (192, 256))
    person = load_detector(detector) if not callable(detector) else detector

    started = time.perf_counter()
    log.info("quantize: INT8 for %s, %s", _backend_name(out), format_reason)
    log.info("quantize: looking for people in %d calibration photos%s", len(paths[:images]),
             "" if callable(detector) else f" ({detector})")
    calib, calib_counts = _find_people(paths[:images], person, input_size, max_crops=256)
    if calib is None:
        raise InputError(f"the detector found no person in the {len(paths[:images])} calibration images: give a "
                         f"folder of photos with people (COCO images, say)")
    spare = paths[images:images + 32]
    check, check_counts = _find_people(spare, person, input_size, max_crops=64)
    if check is not None:
        agreement_on, agreement_images = "held-out", _images_holding(check_counts, len(check))
    else:  # nobody left over: say plainly that the agreement is measured on the calibration people
        if spare:
            log.warning("quantize: no person in the %d photos after the calibration ones; agreement is measured "
                        "on the calibration people", len(spare))
        check = calib[:64]
        agreement_on, agreement_images = "calibration", _images_holding(calib_counts, len(check))
    log.info("quantize: calibrating on %d people of %d images with %s; agreement on %d %s people", len(calib),
             _images_holding(calib_counts, len(calib)), "ONNX Runtime" if fmt == "onnx" else "NNCF", len(check),
             agreement_on)
    quantize_crops(fp32, out, calib, fmt, scheme, symmetric)
    quantize_seconds = time.perf_counter() - started

    log.info("quantize: comparing FP32 and INT8 layer by layer on %d people", len(check))
    groups = block_outputs(fp32)
    nodes = [n for _, n in groups]
    ref, low = _Probe(fp32, nodes)(check), _Probe(out, nodes)(check)
    layers = [{"layer": label, **agreement(ref[n], low[n])} for label, n in groups if n in ref and n in low]
    layers.append({"layer": "heatmaps (output)", **agreement(ref["output"], low["output"])})
    from rapidpose.runtime.exported import skeleton_from

    oks = keypoint_oks(ref["output"], low["output"], skeleton_from(meta, ref["output"].shape[1]).sigmas)

    int8_name = f"INT8, {_backend_name(out)}"
    runtimes = {"FP32, ONNX Runtime": OnnxRuntime(fp32), int8_name: _runtime(out)}
    if _importable("openvino"):
        from rapidpose.runtime.openvino_runtime import OpenVinoRuntime

        best = OpenVinoRuntime(fp32)  # bf16 where the CPU has it: the fastest non-INT8 path
        runtimes[f"FP32 weights, OpenVINO {best.precision}"] = best
    log.info("quantize: timing %s: %s", "; ".join(runtimes),
             f"about {seconds:g} s each" if seconds > 0 else "one round each")
    speed = time_models(runtimes, check, seconds)

    report = {
        "model": str(model), "variant": meta.get("variant"), "format": fmt, "format_reason": format_reason,
        "scheme": scheme, "symmetric": symmetric, "int8_model": str(out), "fp32_model": str(fp32),
        "calibration": {"images": _images_holding(calib_counts, len(calib)), "people": int(len(calib)),
                        "source": str(calibration)},
        "agreement_on": agreement_on, "agreement_images": int(agreement_images),
        "agreement_people": int(len(check)), "quantize_seconds": round(quantize_seconds, 1),
        "size_mb": {"fp32": _size_mb(fp32), "int8": _size_mb(out)},
        "timing_seconds": float(seconds),
        "ms_per_crop": speed, "speedup_vs_fp32_onnxruntime": round(speed["FP32, ONNX Runtime"] / speed[int8_name], 2),
        "layers": layers,
        "keypoints": {"mean_oks": round(float(oks.mean()), 4), "min_oks": round(float(oks.min()), 4)},
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if annotations:
        log.info("quantize: COCO keypoint AP of both models on %s", eval_images or calibration)
        report["ap"] = _ap_of_both(fp32, out, annotations, eval_images or calibration)
    _write_report(out, report)
    return report


def _fp32_onnx(model, out: Path) -> Path:
    if Path(str(model)).suffix.lower() == ".onnx":
        path = Path(model).expanduser()
        if not path.is_file():
            raise InputError(f"ONNX model '{path}' does not exist")
        return path
    from rapidpose.model.weights import load_model

    path = out.with_name(out.stem.replace("-int8", "") + "-fp32.onnx")
    log.info("quantize: exporting %s to FP32 ONNX (%s)", model, path)
    return export_onnx(load_model(model, "cpu"), path)


def _runtime(path: Path):
    if path.suffix == ".xml":
        from rapidpose.runtime.openvino_runtime import OpenVinoRuntime

        return OpenVinoRuntime(path)
    from rapidpose.runtime.onnx_runtime import OnnxRuntime

    return OnnxRuntime(path)


def _backend_name(path: Path) -> str:
    return "OpenVINO" if path.suffix == ".xml" else "ONNX Runtime"


def _size_mb(path: Path) -> float:
    files = [path] + [p for p in (path.with_suffix(".bin"), path.with_name(path.name + ".data")) if p.exists()]
    return round(sum(f.stat().st_size for f in files) / 2 ** 20, 2)


def _machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def _ap_of_both(fp32: Path, int8: Path, annotations, images) -> dict:
    from rapidpose.evaluate.coco import evaluate
    from rapidpose.topdown.estimator import PoseEstimator

    ap = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        result = evaluate(PoseEstimator(str(path), device="cpu"), annotations, images, boxes="gt")
        ap[name] = {k: round(float(v), 4) for k, v in result.metrics.items()}
    return ap


def _timing_sentence(seconds: float) -> str:
    if seconds > 0:
        return (f"Speed: median of interleaved rounds after a warm-up, each path timed for about {seconds:g} s "
                f"(at least {MIN_ROUNDS} rounds).")
    return "Speed: one round after a warm-up (timing turned down to 0 s): a rough figure."


def _agreement_sentence(report: dict) -> str:
    """Where the FP32/INT8 agreement was measured, in words: held-out people or the calibration ones."""
    people, images = report["agreement_people"], report["agreement_images"]
    if report["agreement_on"] == "held-out":
        return f"agreement measured on {people} other people, in {images} images held out from calibration."
    return (f"agreement measured on {people} of the calibration people themselves, in {images} of the calibration "
            f"images: no person was left over to hold out (give more photos than --images for an independent "
            f"measure).")


def _write_report(out: Path, report: dict) -> None:
    stem = out.with_suffix("")
    stem.with_name(stem.name + ".report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# INT8 report: {Path(report['model']).name} ({report['format']}, {report['scheme']}, "
             f"{'symmetric' if report['symmetric'] else 'asymmetric'})", "",
             f"Format: {report['format']}, run by {_backend_name(out)}; {report['format_reason']}.", "",
             f"{report['date']}, {report['machine']}. Calibration: {report['calibration']['people']} people "
             f"in {report['calibration']['images']} images of `{report['calibration']['source']}`; "
             f"{_agreement_sentence(report)}", "",
             "| | FP32 | INT8 |", "|---|---:|---:|",
             f"| size (MB) | {report['size_mb']['fp32']} | {report['size_mb']['int8']} |", "",
             _timing_sentence(report["timing_seconds"]), "",
             "| path (batch of 8) | ms per crop |", "|---|---:|"]
    lines += [f"| {name} | {ms} |" for name, ms in report["ms_per_crop"].items()]
    lines += ["", f"INT8 is {report['speedup_vs_fp32_onnxruntime']}x as fast as FP32 ONNX Runtime.", "",
              "| where | cosine similarity | SQNR (dB) |", "|---|---:|---:|"]
    lines += [f"| {g['layer']} | {g['cosine']} | {g['sqnr_db']} |" for g in report["layers"]]
    lines += ["", f"Keypoints, INT8 against FP32: mean OKS {report['keypoints']['mean_oks']} "
                  f"(lowest {report['keypoints']['min_oks']})."]
    if "ap" in report:
        lines += ["", "| COCO keypoints (ground-truth boxes) | AP | AP50 | AP75 | AR |", "|---|---:|---:|---:|---:|"]
        for name, m in report["ap"].items():
            lines.append(f"| {name.upper()} | {m.get('AP')} | {m.get('AP50')} | {m.get('AP75')} | {m.get('AR')} |")
    stem.with_name(stem.name + ".report.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- CLI
