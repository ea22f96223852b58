"""Backends: precisions agree with the fp32 reference; CUDA graphs equal eager; clear errors."""
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GPU
from rapidpose import InputError
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime, make_runtime
from rapidpose.runtime.torch_runtime import cpu_has_bf16, resolve_precision
from rapidpose.skeletons import COCO


@pytest.fixture(scope="module")
def model():
    m = init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12)), seed=2)
    m.skeleton = COCO
    return m


def crops(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, 256, 192)).astype(np.float32)


def cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_fp32_is_the_module_itself(model):
    x = crops(3)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = TorchRuntime(model, precision="fp32", batch_size=2)(x)  # two batches, concatenated
    assert np.allclose(got, want, atol=1e-5)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16")
def test_cpu_bf16_autocast_agrees_with_fp32(model):
    x = crops(4)
    ref = TorchRuntime(model, precision="fp32")(x)
    got = TorchRuntime(model, precision="bf16")(x)
    assert got.dtype == np.float32 and cosine(got, ref) > 0.999
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_precision_and_device_errors(model):
    assert resolve_precision("auto", "cuda") == "fp16"
    with pytest.raises(InputError, match="fp16 runs on GPUs only"):
        TorchRuntime(model, precision="fp16")
    with pytest.raises(InputError, match="unknown precision 'int3'"):
        TorchRuntime(model, precision="int3")
    with pytest.raises(InputError, match="unknown backend 'tensorflow'"):
        make_runtime(model, backend="tensorflow")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="sees no CUDA GPU"):
            TorchRuntime(model, device="cuda")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        TorchRuntime(model, device="tpu")


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def test_auto_precision_on_the_cpu_follows_its_bf16_support(monkeypatch):
    import rapidpose.runtime.torch_runtime as torch_runtime

    monkeypatch.setattr(torch_runtime, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch_runtime, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.undo()
    # the probe itself, against the CPU's own flags: native bf16 instructions mean oneDNN runs bf16
    if _cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        assert cpu_has_bf16() and resolve_precision("auto", "cpu") == "bf16"


def test_compile_with_the_auto_backend_runs_torch_and_says_so(model, monkeypatch, caplog):
    import rapidpose.runtime as runtime

    monkeypatch.setattr(runtime, "default_backend", lambda device: "openvino")  # the CPU default with openvino
    caplog.set_level(logging.INFO, logger="rapidpose")
    compiled = make_runtime(model, backend="auto", device="cpu", precision="fp32", compile=True)
    assert isinstance(compiled, TorchRuntime)
    assert compiled.forward is not compiled.model  # torch.compile's wrapper, not the module itself
    assert "--compile" in caplog.text and "torch backend" in caplog.text and "openvino" in caplog.text
    plain = make_runtime(model, backend="torch", device="cpu", precision="fp32")
    assert plain.forward is plain.model


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_compile_with_a_backend_that_cannot_compile_is_refused(model, backend):
    with pytest.raises(InputError, match=f"backend '{backend}'.*use backend 'torch'"):
        make_runtime(model, backend=backend, device="cpu", compile=True)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_precision_onnx_runtime_cannot_switch_is_said_not_ignored(model, precision):
    with pytest.raises(InputError, match=f"precision '{precision}' .* ONNX Runtime .* --backend torch"):
        make_runtime(model, backend="onnx", device="cpu", precision=precision)
    assert make_runtime(model, backend="onnx", device="cpu", precision="fp32")(np.zeros((1, 3, 256, 192), np.float32)).shape == (1, 17, 64, 48)


@pytest.mark.parametrize("name, runs", [("model.onnx", "onnxruntime"), ("model.xml", "OpenVINO")])
def test_compile_with_an_exported_model_is_refused(tmp_path, name, runs):
    path = tmp_path / name  # refused before the file is even looked at
    with pytest.raises(InputError, match=f"exported model '.*{name}' \\(it runs on {runs}\\).*checkpoint"):
        make_runtime(str(path), compile=True)


@pytest.mark.parametrize("name, backend, use", [("model.onnx", "torch", "onnx or openvino"),
                                                ("model.xml", "torch", "openvino"), ("model.xml", "onnx", "openvino")])
def test_a_backend_that_cannot_run_an_exported_model_is_refused(tmp_path, name, backend, use):
    with pytest.raises(InputError, match=f"backend '{backend}'.*cannot run the exported model.*--backend {use}"):
        make_runtime(str(tmp_path / name), backend=backend)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_graphs_equal_eager_and_precisions_agree(model, precision):
    ref = TorchRuntime(model, precision="fp32", cuda_graphs=False)(crops(5))  # the fp32 CPU reference
    graphed = TorchRuntime(model, device="cuda", precision=precision, cuda_graphs=True)
    eager = TorchRuntime(model, device="cuda", precision=precision, cuda_graphs=False)
    for n in (1, 3, 5):
        x = crops(n, seed=n)
        a, b = graphed(x), eager(x)
        assert np.allclose(a, b, atol=1e-2 * np.abs(b).max()), (n, np.abs(a - b).max())
    assert sorted(graphed._graphs) == [1, 4, 8]
    assert cosine(graphed(crops(5)), ref) > 0.995
    # results on the device outlive the next replay of the graph that made them
    first = graphed.run(torch.from_numpy(crops(4, seed=1)))
    kept = first.clone()
    graphed.run(torch.from_numpy(crops(4, seed=2)))
    assert torch.equal(first, kept)
    chunked = TorchRuntime(model, device="cuda", batch_size=2, precision=precision, cuda_graphs=True)
    x = crops(5, seed=3)
    assert np.allclose(chunked(x), eager(x), atol=1e-2 * np.abs(eager(x)).max())  # chunks of 2, 2 and 1


@pytest.mark.parametrize("backend", ["onnx", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="needs openvino: pip install 'rapidpose[openvino]'"))])
def test_a_checkpoints_export_is_kept_and_made_again_when_it_changes(tiny_checkpoint, tmp_path, monkeypatch, backend):
    import os
    import shutil

    import rapidpose.deploy.export as export_module

    checkpoint = tmp_path / "model.pth"
    shutil.copy(tiny_checkpoint, checkpoint)
    x = np.random.default_rng(0).normal(size=(2, 3, 256, 192)).astype(np.float32)
    first = make_runtime(checkpoint, backend=backend)
    kept = list((Path(os.environ["RAPIDPOSE_CACHE"]) / "exported").glob("*/model.*"))
    assert len(kept) == 1 + (backend == "openvino")  # the .onnx, or the IR's .xml and .bin
    exports = []
    name = f"export_{backend}"
    original = getattr(export_module, name)
    monkeypatch.setattr(export_module, name, lambda *a, **k: exports.append(1) or original(*a, **k))
    again = make_runtime(checkpoint, backend=backend)
    assert exports == [] and again.skeleton.name == "coco"  # read back, not exported again
    np.testing.assert_array_equal(again(x), first(x))
    with pytest.raises(InputError, match="keypoint set 'coco'"):
        make_runtime(checkpoint, backend=backend, keypoint_set="ap10k")
    os.utime(checkpoint, ns=(1, 1))  # the checkpoint changed: its export is made again
    make_runtime(checkpoint, backend=backend)
    assert exports == [1]
    assert len(list((Path(os.environ["RAPIDPOSE_CACHE"]) / "exported").glob("*/model.*"))) == 2 * len(kept)


def test_a_compiled_cpu_runtime_takes_any_number_of_people_in_two_graphs():
    # a CPU batch is as many crops as people found: after the first new size the batch dimension turns
    # dynamic (fixed shapes would compile once a size, and past dynamo's limit run uncompiled)
    from torch._dynamo.utils import counters

    model = init_random(ViTPose(ViTPoseConfig(dim=96, depth=1, heads=4)), seed=0).eval()
    model.skeleton = COCO
    compiled = TorchRuntime(model, precision="fp32", compile=True)
    eager = TorchRuntime(model, precision="fp32")
    torch._dynamo.reset()
    counters.clear()
    for n in (1, 3, 5, 7, 2, 9, 11, 4, 6, 13):
        x = crops(n, seed=n)
        assert np.allclose(compiled(x), eager(x), atol=1e-4), n
    assert counters["stats"]["unique_graphs"] == 2
    assert torch._dynamo.config.recompile_limit >= 9  # on GPUs: a graph for each of the 9 batch buckets
