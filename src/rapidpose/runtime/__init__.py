"""Backends behind one small protocol: normalised crops (N, 3, H, W) float32 in, heatmaps out.

Each backend has `__call__(numpy crops) -> numpy heatmaps`, `num_keypoints`, `skeleton` and
`input_size`; the torch backend also has `run(tensor) -> tensor` for the all-on-GPU pipeline.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .torch_runtime import TorchRuntime, resolve_device

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
                 batch_size: int = 64, dataset_index: int = 0, compile: bool = False):
    """A backend for `model`: a loaded ViTPose module, a hub name, a checkpoint, or an exported
    .onnx / OpenVINO .xml file (which pick their backend themselves)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    suffix = Path(str(model)).suffix.lower() if isinstance(model, (str, Path)) else ""
    if suffix in (".onnx", ".xml"):
        exported = "openvino" if suffix == ".xml" or backend == "openvino" else "onnx"
        return _exported_runtime(exported, model, device, precision, batch_size)
    if backend == "auto":
        backend = default_backend(resolve_device(device))
    from ..model.weights import load_model

    network = model if hasattr(model, "cfg") else load_model(model, "cpu", dataset_index)
    if backend == "torch":
        return TorchRuntime(network, device, batch_size, precision, compile)
    import tempfile

    from ..export import export_onnx, export_openvino

    # export on the fly; the backends hold the model in memory, so the files can go at once.
    # `rapidpose export` writes them once for runs that start often.
    with tempfile.TemporaryDirectory(prefix="rapidpose-export-") as folder:
        path = (export_onnx(network, Path(folder) / "model.onnx") if backend == "onnx"
                else export_openvino(network, Path(folder) / "model.xml"))
        return _exported_runtime(backend, path, device, precision, batch_size)


def _exported_runtime(backend, path, device, precision, batch_size):
    if backend == "onnx":
        from .onnx_runtime import OnnxRuntime

        return OnnxRuntime(path, device=device, batch_size=batch_size)
    from .openvino_runtime import OpenVinoRuntime

    if resolve_device(device).startswith("cuda"):
        raise InputError("the OpenVINO backend runs on the CPU here: use --device cpu, or --backend torch for the GPU")
    return OpenVinoRuntime(path, device="CPU", precision=precision, batch_size=batch_size)


__all__ = ["TorchRuntime", "make_runtime", "BACKENDS"]
