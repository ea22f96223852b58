"""Backends behind one small protocol: normalised crops (N, 3, H, W) float32 in, heatmaps out.

Each backend has `__call__(numpy crops) -> numpy heatmaps`, `num_keypoints`, `skeleton` and
`input_size`; the torch backend also has `run(tensor) -> tensor` for the all-on-GPU pipeline.
"""
from __future__ import annotations

import logging
from pathlib import Path

from rapidpose.errors import InputError, check_choice
from rapidpose.skeletons import SKELETONS, skeleton_for
from rapidpose.runtime.exported import ExportedRuntime
from rapidpose.runtime.torch_runtime import TorchRuntime, resolve_device

log = logging.getLogger("rapidpose")

BACKENDS = ("auto", "torch", "onnx", "openvino")


def default_backend(device: str) -> str:
    """The fastest backend measured for the device (docs/benchmarks.md): torch with CUDA graphs on
    GPUs; on CPUs OpenVINO (bf16 where the CPU has it, 2-3x torch fp32) when installed, else torch."""
    if device.startswith("cuda"):
        return "torch"
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "torch"
    return "openvino"


def make_runtime(model, backend: str = "auto", device: str = "cpu", precision: str = "auto",
                 batch_size: int = 64, dataset_index: int = 0, compile: bool = False,
                 keypoint_set: str | None = None):
    """A backend for `model`: a loaded ViTPose module, a hub name, a checkpoint, or an exported
    .onnx / OpenVINO .xml file (which pick their backend themselves). A backend made already (an
    OnnxRuntime, OpenVinoRuntime or TorchRuntime) is returned as it is.

    `compile` (torch.compile) needs the torch backend: with backend "auto" it picks torch even where
    another backend is the default (OpenVINO on CPUs) and says so; with an explicit backend that
    cannot compile, or an exported file, it is an InputError. `keypoint_set` names the keypoint set
    of an exported file that has no rapidpose metadata (see rapidpose.runtime.exported).
    """
    check_choice("backend", backend, BACKENDS)
    if isinstance(model, (TorchRuntime, ExportedRuntime)):  # a backend made by the caller
        if compile and not isinstance(model, TorchRuntime):
            raise InputError(f"compile=True (--compile) asks for torch.compile, but the model given is a "
                             f"{type(model).__name__}, which cannot compile: pass the checkpoint or hub name "
                             f"instead, or leave compile out")
        return model
    suffix = Path(str(model)).suffix.lower() if isinstance(model, (str, Path)) else ""
    if suffix in (".onnx", ".xml"):
        if backend == "torch" or (suffix == ".xml" and backend == "onnx"):
            runs = "openvino" if suffix == ".xml" else "onnx or openvino"
            raise InputError(f"backend '{backend}' (--backend {backend}) cannot run the exported model "
                             f"'{model}': use --backend {runs} (or auto), or give the checkpoint or hub name "
                             f"to run it with torch")
        exported = "openvino" if suffix == ".xml" or backend == "openvino" else "onnx"
        if compile:
            runs = "OpenVINO" if exported == "openvino" else "onnxruntime"
            raise InputError(f"compile=True (--compile) asks for torch.compile, which cannot apply to the "
                             f"exported model '{model}' (it runs on {runs}): leave --compile out, or give "
                             f"the checkpoint or hub name (--model vitpose-b, ...) to run it with torch")
        return _exported_runtime(exported, model, device, precision, batch_size, keypoint_set)
    if compile and backend in ("onnx", "openvino"):
        raise InputError(f"compile=True (--compile) asks for torch.compile, which backend '{backend}' "
                         f"(--backend {backend}) cannot do: use backend 'torch' or 'auto' with it, or "
                         f"leave compile out")
    if backend == "auto":
        resolved = resolve_device(device)
        backend = default_backend(resolved)
        if compile and backend != "torch":
            log.info("--compile asks for torch.compile: running on the torch backend, not %s "
                     "(the default on %s)", backend, resolved)
            backend = "torch"
        if precision == "fp8":  # only the torch backend has it (and says what it needs where it cannot)
            backend = "torch"
    from rapidpose.model.weights import load_model, resolve

    checkpoint = None
    if backend != "torch" and isinstance(model, (str, Path)):  # a checkpoint: its export may be kept
        from rapidpose.runtime import export_cache

        checkpoint = resolve(model)[0]
        if not checkpoint.exists():  # load_model says what is wrong with it
            checkpoint = None
        kept = checkpoint and export_cache.cached_export(checkpoint, dataset_index, backend)
        if kept is not None:
            runtime = _exported_runtime(backend, kept, device, precision, batch_size)
            _check_keypoint_set(keypoint_set, runtime.skeleton, model)
            return runtime
    network = model if hasattr(model, "cfg") else load_model(model, "cpu", dataset_index)
    own = getattr(network, "skeleton", None) or skeleton_for(network.num_keypoints_of(network.dataset_index))
    _check_keypoint_set(keypoint_set, own, getattr(network, "source", model))
    if backend == "torch":
        return TorchRuntime(network, device, batch_size, precision, compile)
    import tempfile

    from rapidpose.deploy.export import export_onnx, export_openvino

    def export(path: Path) -> Path:
        return export_onnx(network, path) if backend == "onnx" else export_openvino(network, path)

    if checkpoint is not None and own.name in SKELETONS:  # kept for the next run (export_cache)
        return _exported_runtime(backend, export_cache.keep_export(checkpoint, dataset_index, backend, export),
                                 device, precision, batch_size)
    # a module, or a keypoint set rapidpose does not list: exported for this run only (the backends
    # hold the model in memory, so the files can go at once)
    with tempfile.TemporaryDirectory(prefix="rapidpose-export-") as folder:
        path = export(Path(folder) / ("model.onnx" if backend == "onnx" else "model.xml"))
        # the module's own keypoint set object, which may be one rapidpose does not list
        return _exported_runtime(backend, path, device, precision, batch_size, own)


def _check_keypoint_set(keypoint_set, own, source) -> None:
    if keypoint_set is not None and own.name != keypoint_set:
        raise InputError(f"keypoint_set '{keypoint_set}' is for exported .onnx/.xml files without rapidpose "
                         f"metadata; the model '{source}' has keypoint set '{own.name}' (for a ViTPose++ "
                         f"expert, choose it with dataset_index)")


def _exported_runtime(backend, path, device, precision, batch_size, keypoint_set=None):
    if backend == "onnx":
        from rapidpose.runtime.onnx_runtime import OnnxRuntime

        if precision not in ("auto", "fp32"):  # said, not ignored: ONNX Runtime runs the graph's own types
            raise InputError(f"precision '{precision}' (--precision) is not something ONNX Runtime can switch: it "
                             f"runs '{Path(path).name}' in the types the file holds (float32, or INT8 after "
                             f"`rapidpose quantize --format onnx`); use --backend torch for fp16/bf16/fp8, or "
                             f"openvino for bf16 on CPUs, or leave --precision at auto")

        return OnnxRuntime(path, device=device, batch_size=batch_size, keypoint_set=keypoint_set)
    from rapidpose.runtime.openvino_runtime import OpenVinoRuntime

    if resolve_device(device).startswith("cuda"):
        raise InputError("the OpenVINO backend runs on the CPU here: use --device cpu, or --backend torch for the GPU")
    return OpenVinoRuntime(path, device="CPU", precision=precision, batch_size=batch_size,
                           keypoint_set=keypoint_set)


__all__ = ["TorchRuntime", "make_runtime", "BACKENDS"]
