"""The onnxruntime backend: runs an ONNX file from `rapidpose export` on batches of crops."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from rapidpose.errors import CheckpointError, InputError, require
from rapidpose.runtime.exported import ExportedRuntime, describe

log = logging.getLogger("rapidpose")


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology / "physical_package_id").read_text().strip()
                      + ":" + (topology / "core_id").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(len(cores), 1)


class OnnxRuntime(ExportedRuntime):
    """Normalised crops (N, 3, H, W) float32 -> heatmaps (N, K, H/4, W/4) float32 with onnxruntime.

    `device`: "cpu", "cuda"/"cuda:N" for the CUDAExecutionProvider (falls back to the CPU, with a
    warning, when this onnxruntime build has none), or "auto" (CUDA where there is one).
    `threads`: intra-op threads on the CPU (default: the physical cores). Crops run in batches of
    up to `batch_size` (exactly the exported batch, padded, for a fixed-batch export).
    `keypoint_set`: the keypoint set ("coco", "ap10k", ...) of a file without rapidpose metadata,
    where its keypoint count fits several (17: COCO and AP-10K); a file from `rapidpose export`
    names its own, and one that is neither is refused (rapidpose.runtime.exported).
    """

    def __init__(self, path, device: str = "cpu", threads: int | None = None, batch_size: int = 64,
                 keypoint_set: str | None = None):
        ort = require("onnxruntime", "onnxruntime")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model '{self.path}' does not exist: write one with "
                                  f"`rapidpose export --format onnx`")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size

        providers: list = ["CPUExecutionProvider"]
        self.device = "cpu"
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if device == "auto":
            device = "cuda" if has_cuda else "cpu"
        if device.startswith("cuda"):
            if has_cuda:
                device_id = int(device.split(":", 1)[1]) if ":" in device else 0
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
                self.device = device
            else:
                log.warning("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu); "
                            "running '%s' on the CPU", self.path.name)
        elif device != "cpu":
            raise InputError(f"unknown device '{device}' for onnxruntime: use cpu, cuda, cuda:N or auto")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads) if threads else physical_cores()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:
            raise CheckpointError(f"'{self.path}' is not a usable ONNX model ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); export it again with `rapidpose export`") from None

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
            raise CheckpointError(f"'{self.path}' is not a pose network: expected one (N, 3, H, W) input and "
                                  f"(N, K, h, w) heatmaps, got inputs {[i.shape for i in inputs]} and outputs "
                                  f"{[o.shape for o in outputs]}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        from rapidpose.runtime.metadata import parse_metadata

        self.metadata = parse_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        in_shape, out_shape = inputs[0].shape, outputs[0].shape
        self._input_size, self._num_keypoints, self._heatmap_size, self.skeleton = describe(
            self.metadata, self.path, [d if isinstance(d, int) else None for d in in_shape],
            [d if isinstance(d, int) else None for d in out_shape], keypoint_set)
        fixed = in_shape[0] if isinstance(in_shape[0], int) else None
        if fixed is not None:  # an export with a fixed batch takes exactly that many crops per run
            self.batch_size = fixed
        self._fixed_batch = fixed

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def __repr__(self) -> str:
        return (f"OnnxRuntime('{self.path}', device='{self.device}', {self._num_keypoints} keypoints, "
                f"skeleton '{self.skeleton.name}')")
