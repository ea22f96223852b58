"""Export a ViTPose module to ONNX and OpenVINO IR, with metadata that says what the file is.

Both formats take normalised crops (N, 3, 256, 192) float32 named ``crops`` and give heatmaps
(N, K, 64, 48) float32 named ``heatmaps``; the batch dimension is dynamic. A ViTPose++ model is
exported for one dataset (its expert and head are baked in), chosen by ``dataset_index``.

The metadata written into each file (what it is, its keypoint set): rapidpose.runtime.metadata.

Exporter: the TorchScript exporter (``dynamo=False``) is the default. Measured on ViTPose-S,
torch 2.13, onnxruntime 1.31, 2 Zen 4 cores, batch 8: 37-38 ms/crop against 39-41 ms/crop for the
torch.export (dynamo) graph, whose erf-GELU onnxruntime does not fuse at opset 17 (the TorchScript
graph becomes BiasGelu); it also exports in a third of the time (2.7 s against 7.6 s) and needs only
``onnx``, not ``onnxscript``. OpenVINO runs both graphs at the same speed. ``exporter="dynamo"``
is there for torch versions that drop the TorchScript exporter.

Check tolerance (``check=True``): onnxruntime and OpenVINO fp32 against torch, on random crops, must
agree within ``1e-4 * max|heatmap| + 1e-5`` (absolute). Measured: max abs difference 1e-6 for
ViTPose-S (heatmap maxima about 0.8), i.e. about 1e-6 relative to the largest heatmap value, for
both backends; the bound leaves room for other CPUs' kernels and deeper models.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rapidpose.errors import CheckpointError, InputError, RapidPoseError, require
from rapidpose.runtime.metadata import METADATA_SECTION, encode_metadata, parse_metadata, read_metadata
from rapidpose.skeletons import SKELETONS, skeleton_to_meta

log = logging.getLogger("rapidpose")

INPUT_NAME = "crops"
OUTPUT_NAME = "heatmaps"
FORMATS = {"onnx": ".onnx", "openvino": ".xml"}


class ExportError(RapidPoseError):
    """An exported file does not reproduce the torch model, or could not be written."""


def tolerance(reference: np.ndarray) -> float:
    """Largest allowed |exported - torch| for fp32 exports: 1e-4 * max|heatmap| + 1e-5."""
    return 1e-4 * float(np.abs(reference).max(initial=0.0)) + 1e-5


# ---------------------------------------------------------------- model -> what gets exported

def _skeleton_of(model, dataset_index: int):
    from rapidpose.skeletons import VITPOSE_PLUS_DATASETS, skeleton_for

    k = model.num_keypoints_of(dataset_index)
    given = getattr(model, "skeleton", None)
    if given is not None and given.num_keypoints == k and dataset_index == getattr(model, "dataset_index", 0):
        return given
    dataset = None
    if model.cfg.num_experts > 1 and dataset_index < len(VITPOSE_PLUS_DATASETS):
        dataset = VITPOSE_PLUS_DATASETS[dataset_index]
    return skeleton_for(k, dataset)


def model_metadata(model, dataset_index: int | None = None) -> dict:
    """The metadata an export of `model` (for `dataset_index`, default the model's own) carries."""
    from rapidpose import __version__

    index = getattr(model, "dataset_index", 0) if dataset_index is None else int(dataset_index)
    cfg = model.cfg
    meta = {
        "rapidpose_version": __version__,
        "model": "vitpose",
        "variant": cfg.variant,
        "head": cfg.head,
        "num_experts": max(cfg.num_experts, 1),
        "dataset_index": index,
        "skeleton": _skeleton_of(model, index).name,
        "num_keypoints": model.num_keypoints_of(index),
        "input_size": list(cfg.input_size),
    }
    skeleton = _skeleton_of(model, index)
    if SKELETONS.get(skeleton.name) is not skeleton:  # a set of its own (a model trained by rapidpose): all of it
        meta["keypoint_set"] = skeleton_to_meta(skeleton)
    if getattr(model, "source", None):
        meta["source"] = str(model.source)
    return meta


def _check_model(model, dataset_index):
    from rapidpose.model.vitpose import ViTPose

    if not isinstance(model, ViTPose):
        raise InputError(f"expected a rapidpose ViTPose module (from rapidpose.load_model), got {type(model).__name__}")
    index = getattr(model, "dataset_index", 0) if dataset_index is None else int(dataset_index)
    if not 0 <= index < model.num_datasets:
        raise InputError(f"dataset_index {index} is out of range: this model has {model.num_datasets} "
                         f"dataset expert(s), so use 0..{model.num_datasets - 1}")
    return index


@contextlib.contextmanager
def _fp32_cpu_eval(model):
    """The model as an fp32 CPU module in eval mode, without changing the caller's module for good."""
    torch = require("torch", "torch")
    param = next(model.parameters())
    if param.dtype != torch.float32 or param.device.type != "cpu":
        copied = copy.deepcopy(model).to("cpu", torch.float32).eval()
        yield copied
        return
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


@contextlib.contextmanager
def _quiet_exporters():
    """Hide the exporters' warnings and log chatter (deprecations, tracer notes, opset conversion)."""
    names = ("torch.onnx", "onnxscript", "onnx_ir")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def _torch_heatmaps(model, crops: np.ndarray, dataset_index: int) -> np.ndarray:
    torch = require("torch", "torch")
    with torch.inference_mode():
        return model(torch.from_numpy(crops), dataset_index).numpy()


def _random_crops(batch: int, input_size, seed: int) -> np.ndarray:
    w, h = input_size
    return np.random.default_rng(seed).standard_normal((batch, 3, h, w), dtype=np.float32)


def _compare(what: str, ours: np.ndarray, ref: np.ndarray, path: Path) -> float:
    if ours.shape != ref.shape:
        raise ExportError(f"{what} '{path}' gives heatmaps of shape {ours.shape}, torch {ref.shape}")
    diff = float(np.abs(ours.astype(np.float64) - ref).max(initial=0.0))
    tol = tolerance(ref)
    if not np.isfinite(diff) or diff > tol:
        raise ExportError(f"{what} '{path}' does not reproduce the torch model: max abs difference "
                          f"{diff:.3g} > tolerance {tol:.3g}. Report this with your torch, onnx and "
                          f"backend versions; pass check=False (--no-check) to keep the file anyway")
    log.debug("%s matches torch: max abs diff %.3g (tolerance %.3g)", what, diff, tol)
    return diff


# ---------------------------------------------------------------- ONNX

def export_onnx(model, path, *, opset: int = 17, dynamic_batch: bool = True, check: bool = True,
                dataset_index: int | None = None, batch_size: int = 1, exporter: str = "torchscript") -> Path:
    """Write `model` (a rapidpose ViTPose module) to an fp32 ONNX file and return its path.

    Input ``crops`` (N, 3, 256, 192), output ``heatmaps`` (N, K, 64, 48); N is dynamic unless
    `dynamic_batch` is False, in which case it is fixed to `batch_size`. A ViTPose++ model is
    exported for `dataset_index` (default: ``model.dataset_index``). The metadata listed in this
    module's docstring goes into ``metadata_props``. A model in fp16/bf16 or on a GPU is exported
    from an fp32 CPU copy; the caller's module is left as it was. Weights over protobuf's 2 GB
    (ViTPose-H) go to one ``<name>.onnx.data`` file beside the .onnx; keep the two together.

    `exporter`: ``"torchscript"`` (torch.onnx's ``dynamo=False`` exporter; faster graph for
    onnxruntime, see the module docstring) or ``"dynamo"`` (torch.export; needs onnxscript).

    With `check`, onnxruntime runs random crops of batch 2 and 3 (of `batch_size` when the batch is
    fixed) and must match torch within ``1e-4 * max|heatmap| + 1e-5``; measured differences are
    about 1e-6 for ViTPose-S. A mismatch raises :class:`ExportError`.
    """
    torch = require("torch", "torch")
    onnx = require("onnx", "torch")
    if exporter not in ("torchscript", "dynamo"):
        raise InputError(f"unknown ONNX exporter '{exporter}': use 'torchscript' or 'dynamo'")
    index = _check_model(model, dataset_index)
    path = Path(path).expanduser()
    if path.suffix.lower() != ".onnx":
        raise InputError(f"ONNX output '{path}' must end in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = model_metadata(model, index)

    class _Fixed(torch.nn.Module):  # the dataset index baked in: one tensor in, one out
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, crops):
            return self.net(crops, index)

    with _fp32_cpu_eval(model) as net, \
            tempfile.TemporaryDirectory(dir=path.parent, prefix=".rapidpose-export-") as tmp:
        # Export into a private folder: a model over 2 GB (ViTPose-H) comes out as one file per
        # weight, which are gathered into a single <name>.onnx.data beside the output below.
        raw = Path(tmp) / "model.onnx"
        example_batch = 2 if dynamic_batch else batch_size
        example = torch.from_numpy(_random_crops(example_batch, net.cfg.input_size, seed=0))
        wrapped = _Fixed(net).eval()
        try:
            with _quiet_exporters(), torch.inference_mode(False), torch.no_grad():
                if exporter == "torchscript":
                    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
                    torch.onnx.export(wrapped, (example,), str(raw), dynamo=False, opset_version=opset,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes=axes, do_constant_folding=True)
                else:
                    require("onnxscript", "torch")
                    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
                    program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=opset,
                                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                                dynamic_shapes=shapes, optimize=True, verbose=False)
                    program.save(str(raw))
        except RapidPoseError:
            raise
        except Exception as exc:
            raise ExportError(f"torch could not export the model to ONNX ({type(exc).__name__}: "
                              f"{str(exc)[:300]})") from exc

        proto = onnx.load(str(raw))  # weights included, wherever the exporter put them
        del proto.metadata_props[:]
        for key, value in encode_metadata(meta).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = (f"rapidpose ViTPose-{meta['variant'].upper()} ({meta['skeleton']}, "
                            f"{meta['num_keypoints']} keypoints): normalised crops -> heatmaps")
        size = sum(t.ByteSize() for t in proto.graph.initializer)
        if size > 1_800_000_000:  # protobuf stops at 2 GB
            data = path.with_name(path.name + ".data")
            data.unlink(missing_ok=True)
            onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
        else:
            onnx.save_model(proto, str(path))
        del proto

        if check:
            batches = (2, 3) if dynamic_batch else (batch_size,)
            session = _ort_session(path)
            for seed, batch in enumerate(batches, 1):
                crops = _random_crops(batch, net.cfg.input_size, seed)
                ref = _torch_heatmaps(net, crops, index)
                _compare("ONNX file", session.run(None, {INPUT_NAME: crops})[0], ref, path)
    return path


def _ort_session(path: Path):
    ort = require("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- OpenVINO

def export_openvino(model_or_onnx_path, path, *, check: bool = True, dataset_index: int | None = None) -> Path:
    """Write an OpenVINO IR (`path` .xml + its .bin beside it) and return the .xml path.

    `model_or_onnx_path`: a rapidpose ViTPose module (exported to a temporary ONNX file first, for
    `dataset_index`) or an ONNX file written by :func:`export_onnx` (its metadata is carried over).
    Weights stay fp32 in the IR (no fp16 compression); precision is chosen when the IR is compiled
    (see :class:`rapidpose.runtime.OpenVinoRuntime`). Metadata goes into the IR's ``rt_info``
    (section ``rapidpose``).

    With `check`, OpenVINO compiled for fp32 on the CPU runs random crops of batch 2 and 3 and must
    match torch (or, given an ONNX file, onnxruntime) within ``1e-4 * max|heatmap| + 1e-5``;
    measured differences are about 1e-6 for ViTPose-S.
    """
    ov = require("openvino", "openvino")
    path = Path(path).expanduser()
    if path.suffix.lower() != ".xml":
        raise InputError(f"OpenVINO output '{path}' must end in .xml (the weights go to a .bin beside it)")
    path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="rapidpose-export-") as tmp:
        torch_model = None
        if isinstance(model_or_onnx_path, (str, Path)):
            onnx_path = Path(model_or_onnx_path).expanduser()
            if dataset_index is not None:
                raise InputError("dataset_index applies when exporting a torch model; an ONNX file "
                                 "already has its dataset baked in")
            if onnx_path.suffix.lower() != ".onnx":
                raise InputError(f"'{onnx_path}' is not an .onnx file: pass a ViTPose module or an ONNX "
                                 f"file from rapidpose export")
            meta = read_metadata(onnx_path)
        else:
            torch_model = model_or_onnx_path
            index = _check_model(torch_model, dataset_index)
            onnx_path = export_onnx(torch_model, Path(tmp) / "model.onnx", check=False, dataset_index=index)
            meta = parse_metadata(encode_metadata(model_metadata(torch_model, index)))

        try:
            ir = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise CheckpointError(f"OpenVINO could not convert '{onnx_path}' ({type(exc).__name__}: "
                                  f"{str(exc)[:300]})") from None
        for key, value in encode_metadata(meta).items():
            ir.set_rt_info(value, [METADATA_SECTION, key])
        ov.save_model(ir, str(path), compress_to_fp16=False)

        if check:
            input_size = tuple(meta.get("input_size") or (192, 256))
            crops = [_random_crops(batch, input_size, seed) for seed, batch in enumerate((2, 3), 1)]
            if torch_model is not None:
                with _fp32_cpu_eval(torch_model) as net:
                    refs = [_torch_heatmaps(net, c, index) for c in crops]
            else:
                session = _ort_session(onnx_path)
                refs = [session.run(None, {INPUT_NAME: c})[0] for c in crops]
            try:
                compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            except Exception as exc:
                raise ExportError(f"OpenVINO could not compile the IR it wrote to '{path}' "
                                  f"({type(exc).__name__}: {str(exc)[:300]})") from None
            request = compiled.create_infer_request()
            for c, ref in zip(crops, refs):
                _compare("OpenVINO IR", np.array(request.infer({0: c})[0]), ref, path)
    return path




# ---------------------------------------------------------------- command line


def default_stem(name: str) -> str:
    path = Path(name)
    if path.suffix in (".safetensors", ".bin") and path.stem in ("model", "pytorch_model"):
        path = path.parent
    return path.stem if path.suffix else path.name or "model"
