"""The OpenVINO backend: runs an IR (.xml + .bin) or ONNX file from `rapidpose export` on batches of crops.

Performance hint: LATENCY (one stream using every core) with one synchronous request per batch.
Measured on 2 Zen 4 cores, ViTPose-S, batch 8: THROUGHPUT makes 2 one-core streams, so one request
of 8 crops runs at half speed (31 against 16 ms/crop in bf16); splitting each batch over both streams
with an AsyncInferQueue only catches up with LATENCY (15.5-17.6 against 15.7-16.9 ms/crop) at more
complexity. THROUGHPUT can still be asked for (`hint=`) by callers that feed it from several threads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rapidpose.errors import CheckpointError, InputError, check_choice, require
from rapidpose.runtime.exported import ExportedRuntime, describe

PRECISIONS = ("auto", "fp32", "bf16")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def cpu_supports_bf16(core=None) -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX512-BF16 or AMX)."""
    ov = require("openvino", "openvino")
    core = core or ov.Core()
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # pragma: no cover - plugin without the property
        return False


class OpenVinoRuntime(ExportedRuntime):
    """Normalised crops (N, 3, H, W) float32 -> heatmaps (N, K, H/4, W/4) float32 with OpenVINO.

    `path`: an OpenVINO IR .xml (with its .bin beside it) or an ONNX file. `device`: an OpenVINO
    device ("CPU", "GPU", "AUTO"; "cpu" is accepted). `precision`: "auto" (bf16 where the CPU
    supports it, else fp32; the device's own default on other devices), "fp32" or "bf16".
    `hint`: OpenVINO performance hint, "LATENCY" (default, faster for one batch at a time) or
    "THROUGHPUT". `threads`: CPU inference threads (default: OpenVINO's choice, the physical cores).
    Crops run in batches of up to `batch_size`. One instance is not meant for concurrent calls.
    `keypoint_set`: the keypoint set ("coco", "ap10k", ...) of a file without rapidpose metadata,
    where its keypoint count fits several (17: COCO and AP-10K); a file from `rapidpose export`
    names its own, and one that is neither is refused (rapidpose.runtime.exported).
    """

    def __init__(self, path, device: str = "CPU", precision: str = "auto", batch_size: int = 64,
                 hint: str = "LATENCY", threads: int | None = None, keypoint_set: str | None = None):
        ov = require("openvino", "openvino")
        self.path = Path(path).expanduser()
        if self.path.suffix.lower() not in (".xml", ".onnx"):
            raise InputError(f"OpenVINO takes an IR .xml or an .onnx file, not '{self.path}'")
        if not self.path.is_file():
            raise CheckpointError(f"model file '{self.path}' does not exist: write one with "
                                  f"`rapidpose export --format openvino`")
        if self.path.suffix.lower() == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise CheckpointError(f"'{self.path}' has no weights file '{self.path.with_suffix('.bin').name}' "
                                  f"beside it: keep the .xml and .bin of an IR together")
        check_choice("precision", precision, PRECISIONS)
        if hint.upper() not in ("LATENCY", "THROUGHPUT"):
            raise InputError(f"unknown performance hint '{hint}': use LATENCY or THROUGHPUT")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if device.lower().startswith("cuda"):
            raise InputError(f"OpenVINO cannot run on '{device}': use CPU (or an Intel GPU), or the "
                             f"onnxruntime/torch backends for CUDA")
        self.device = device.upper() if device.lower() in ("cpu", "gpu", "auto", "npu") else device
        self.batch_size = batch_size

        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:
            raise CheckpointError(f"OpenVINO could not read '{self.path}' ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); export it again with `rapidpose export`") from None
        if len(model.inputs) != 1 or model.inputs[0].get_partial_shape().rank.get_length() != 4:
            raise CheckpointError(f"'{self.path}' is not a pose network: expected one (N, 3, H, W) input")

        from rapidpose.runtime.metadata import METADATA_SECTION, parse_metadata

        # an IR from `rapidpose export` has a "rapidpose" section; an .onnx read directly (or an IR
        # converted from one by hand) has the ONNX metadata under "framework"
        if _has_section(model, METADATA_SECTION, self.path):
            self.metadata = parse_metadata(_rt_section(model, METADATA_SECTION, self.path, required=True))
        else:
            self.metadata = parse_metadata(_rt_section(model, "framework", self.path))
        in_shape = model.inputs[0].get_partial_shape()
        out_shape = model.outputs[0].get_partial_shape()
        self._input_size, self._num_keypoints, self._heatmap_size, self.skeleton = describe(
            self.metadata, self.path, [d.get_length() if d.is_static else None for d in in_shape],
            [d.get_length() if d.is_static else None for d in out_shape], keypoint_set)

        on_cpu = self.device == "CPU"
        if precision == "auto":
            precision = ("bf16" if cpu_supports_bf16(core) else "fp32") if on_cpu else "auto"
        elif precision == "bf16" and on_cpu and not cpu_supports_bf16(core):
            raise InputError("precision 'bf16' was asked for but this CPU has no bf16 support "
                             "(AVX512-BF16 or AMX) in OpenVINO: use precision 'fp32' or 'auto'")
        self.precision = precision
        config = {"PERFORMANCE_HINT": hint.upper()}
        if precision in _OV_PRECISION:
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as exc:
            raise CheckpointError(f"OpenVINO could not compile '{self.path}' for {self.device} "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None
        self.request = self.compiled.create_infer_request()

        self._fixed_batch = in_shape[0].get_length() if in_shape[0].is_static else None
        if self._fixed_batch is not None:
            self.batch_size = self._fixed_batch

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # the request reuses its output buffer: copy before the next batch overwrites it
        return np.array(self.request.infer({0: batch})[0], dtype=np.float32, copy=True)

    def __repr__(self) -> str:
        return (f"OpenVinoRuntime('{self.path}', device='{self.device}', precision='{self.precision}', "
                f"{self._num_keypoints} keypoints, skeleton '{self.skeleton.name}')")


def _has_section(model, name: str, path) -> bool:
    try:
        return bool(model.has_rt_info([name]))
    except Exception as exc:
        raise CheckpointError(f"the rt_info of '{path}' cannot be read ({type(exc).__name__}: "
                              f"{str(exc)[:200]}): export it again with `rapidpose export`") from None


def _rt_section(model, name: str, path, required: bool = False) -> dict[str, str]:
    """One section of a model's rt_info as strings: {} if absent, or if it is not a section and not
    `required`; a CheckpointError if a `required` one (rapidpose's own) cannot be read."""
    if not _has_section(model, name, path):
        return {}
    try:
        section = model.get_rt_info()[name]
        if isinstance(section, dict):
            return {str(k): (v.astype(str) if hasattr(v, "astype") else str(v)) for k, v in section.items()}
        problem = "it is a single value, not a section of keys"
    except Exception as exc:
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    if not required:
        return {}
    raise CheckpointError(f"the '{name}' metadata of '{path}' cannot be read ({problem}): export it again "
                          f"with `rapidpose export`, whose metadata names the keypoint set")
