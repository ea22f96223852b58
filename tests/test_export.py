"""ONNX / OpenVINO export and the onnxruntime / OpenVINO backends, on small random ViTPose models.

Tolerances: fp32 exports must match torch within 1e-4 * max|heatmap| + 1e-5 (rapidpose.export.tolerance;
measured about 1e-6 absolute with heatmap maxima near 0.9). OpenVINO bf16: cosine similarity of every
heatmap with torch's > 0.99 and the same argmax for at least 90% of the heatmaps (measured on the
2-block model: cosine >= 0.9999, all argmaxes equal, max abs difference about 0.7% of the peak).
"""
import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import rapidpose.skeletons as sk  # noqa: E402
from rapidpose.errors import CheckpointError, InputError  # noqa: E402
from rapidpose.export import (ExportError, add_export_parser, export_onnx, export_openvino,  # noqa: E402
                              read_metadata, run_export, tolerance)
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random  # noqa: E402
from rapidpose.runtime.onnx_runtime import OnnxRuntime  # noqa: E402


def small(seed=0, **kwargs):
    return init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12, **kwargs)), seed)


def crops(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 256, 192), dtype=np.float32)


def torch_heatmaps(model, x, index=None):
    with torch.inference_mode():
        return model(torch.from_numpy(x), index).numpy()


def assert_close(ours, ref):
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= tolerance(ref)


@pytest.fixture(scope="module")
def model():
    m = small()
    m.skeleton = sk.COCO
    return m


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "vitpose.onnx")


@pytest.fixture(scope="module")
def openvino_file(model, tmp_path_factory):
    pytest.importorskip("openvino")
    return export_openvino(model, tmp_path_factory.mktemp("ov") / "vitpose.xml")


# ---------------------------------------------------------------- ONNX

def test_onnx_round_trip_dynamic_batch(model, onnx_file):
    runtime = OnnxRuntime(onnx_file, batch_size=3)  # 5 crops -> batches of 3 and 2
    assert runtime.num_keypoints == 17 and runtime.input_size == (192, 256)
    assert runtime.skeleton is sk.COCO
    for n in (1, 5):
        x = crops(n, seed=n)
        assert_close(runtime(x), torch_heatmaps(model, x))
    assert runtime(np.zeros((0, 3, 256, 192), np.float32)).shape == (0, 17, 64, 48)
    with pytest.raises(InputError, match="shape"):
        runtime(np.zeros((2, 3, 192, 256), np.float32))


def test_onnx_metadata(onnx_file):
    meta = read_metadata(onnx_file)
    assert meta["model"] == "vitpose" and meta["variant"] == "custom" and meta["head"] == "classic"
    assert meta["skeleton"] == "coco" and meta["num_keypoints"] == 17
    assert meta["input_size"] == (192, 256) and meta["dataset_index"] == 0
    assert meta["rapidpose_version"]
    import onnx

    proto = onnx.load(str(onnx_file))
    assert [i.name for i in proto.graph.input] == ["crops"]
    assert [o.name for o in proto.graph.output] == ["heatmaps"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch


def test_vitpose_plus_expert(tmp_path):
    # ViTPose++: 6 experts, the published extra heads (AIC 14, MPII 16, AP-10K 17, APT-36K 17, WholeBody 133)
    m = small(seed=2, num_experts=6, part_features=96, associate_keypoints=(14, 16, 17, 17, 133))
    path = export_onnx(m, tmp_path / "plus.onnx", dataset_index=3)
    x = crops(2, seed=3)
    ref = torch_heatmaps(m, x, 3)
    out = OnnxRuntime(path)(x)
    assert_close(out, ref)
    assert np.abs(ref - torch_heatmaps(m, x, 0)).max() > 10 * tolerance(ref)  # index 3 really differs from 0
    meta = read_metadata(path)
    assert meta["dataset_index"] == 3 and meta["skeleton"] == "ap10k" and meta["num_experts"] == 6
    assert m.dataset_index == 0  # the module itself is unchanged


def test_25_keypoints_without_skeleton_attribute(tmp_path):
    m = small(seed=4, num_keypoints=25)
    assert not hasattr(m, "skeleton")  # built by hand: export falls back to skeleton_for(25)
    path = export_onnx(m, tmp_path / "k25.onnx")
    meta = read_metadata(path)
    assert meta["num_keypoints"] == 25 and meta["skeleton"] == "coco_25"
    runtime = OnnxRuntime(path)
    x = crops(2, seed=5)
    out = runtime(x)
    assert out.shape == (2, 25, 64, 48) and runtime.num_keypoints == 25
    assert runtime.skeleton is sk.COCO_25
    assert_close(out, torch_heatmaps(m, x))


def test_fixed_batch_export(model, tmp_path):
    path = export_onnx(model, tmp_path / "b4.onnx", dynamic_batch=False, batch_size=4)
    runtime = OnnxRuntime(path)
    assert runtime.batch_size == 4
    x = crops(6, seed=6)  # 4 + 2 (padded)
    assert_close(runtime(x), torch_heatmaps(model, x))


def test_dynamo_exporter(model, tmp_path):
    pytest.importorskip("onnxscript")
    path = export_onnx(model, tmp_path / "dynamo.onnx", exporter="dynamo")
    x = crops(3, seed=7)
    assert_close(OnnxRuntime(path)(x), torch_heatmaps(model, x))
    assert read_metadata(path)["skeleton"] == "coco"


def test_check_failure_raises(model, tmp_path, monkeypatch):
    import rapidpose.export as export

    monkeypatch.setattr(export, "tolerance", lambda ref: -1.0)
    with pytest.raises(ExportError, match="does not reproduce"):
        export_onnx(model, tmp_path / "bad.onnx")


def test_bad_arguments(model, tmp_path):
    with pytest.raises(InputError, match=".onnx"):
        export_onnx(model, tmp_path / "model.bin")
    with pytest.raises(InputError, match="out of range"):
        export_onnx(model, tmp_path / "model.onnx", dataset_index=2)
    with pytest.raises(InputError, match="ViTPose module"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "model.onnx")


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 50)
    with pytest.raises(CheckpointError, match="corrupt.onnx"):
        OnnxRuntime(bad)
    with pytest.raises(CheckpointError, match="corrupt.onnx"):
        read_metadata(bad)
    with pytest.raises(CheckpointError, match="missing.onnx"):
        OnnxRuntime(tmp_path / "missing.onnx")
    xml = tmp_path / "corrupt.xml"
    xml.write_text("<net><layers>")
    xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt.xml"):
        read_metadata(xml)
    try:
        from rapidpose.runtime.openvino_runtime import OpenVinoRuntime
        import openvino  # noqa: F401
    except ImportError:
        return
    with pytest.raises(CheckpointError, match="corrupt.onnx"):
        OpenVinoRuntime(bad)
    with pytest.raises(CheckpointError, match="corrupt.xml"):
        OpenVinoRuntime(xml)


# ---------------------------------------------------------------- OpenVINO

def test_openvino_fp32(model, openvino_file):
    from rapidpose.runtime.openvino_runtime import OpenVinoRuntime

    assert openvino_file.with_suffix(".bin").is_file()
    meta = read_metadata(openvino_file)
    assert meta["skeleton"] == "coco" and meta["num_keypoints"] == 17 and meta["input_size"] == (192, 256)
    runtime = OpenVinoRuntime(openvino_file, precision="fp32", batch_size=4)
    assert runtime.precision == "fp32" and runtime.num_keypoints == 17 and runtime.input_size == (192, 256)
    assert runtime.skeleton is sk.COCO and runtime.metadata["dataset_index"] == 0
    for n in (1, 5):
        x = crops(n, seed=10 + n)
        assert_close(runtime(x), torch_heatmaps(model, x))
    assert runtime(np.zeros((0, 3, 256, 192), np.float32)).shape == (0, 17, 64, 48)


def test_openvino_from_onnx(model, onnx_file, tmp_path):
    from rapidpose.runtime.openvino_runtime import OpenVinoRuntime

    pytest.importorskip("openvino")
    runtime = OpenVinoRuntime(onnx_file, device="cpu", precision="fp32")  # an .onnx works directly
    assert runtime.skeleton is sk.COCO and runtime.metadata["skeleton"] == "coco"
    x = crops(2, seed=20)
    assert_close(runtime(x), torch_heatmaps(model, x))
    xml = export_openvino(onnx_file, tmp_path / "from_onnx.xml")  # ONNX -> IR keeps the metadata
    assert read_metadata(xml)["skeleton"] == "coco"


def test_openvino_bf16(model, openvino_file):
    from rapidpose.runtime.openvino_runtime import OpenVinoRuntime, cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no bf16 support in OpenVINO (needs AVX512-BF16 or AMX)")
    runtime = OpenVinoRuntime(openvino_file)  # "auto" picks bf16 here
    assert runtime.precision == "bf16"
    x = crops(4, seed=30)
    out, ref = runtime(x), torch_heatmaps(model, x)
    assert out.shape == ref.shape and out.dtype == np.float32
    a, b = out.reshape(4, 17, -1).astype(np.float64), ref.reshape(4, 17, -1).astype(np.float64)
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() > 0.99
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9


# ---------------------------------------------------------------- command line

def _parse(argv):
    parser = argparse.ArgumentParser(prog="rapidpose")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("openvino", ".xml")])
def test_run_export(tiny_checkpoint, tmp_path, fmt, suffix):
    if fmt == "openvino":
        pytest.importorskip("openvino")
    out = tmp_path / "sub" / f"tiny{suffix}"
    args = _parse(["export", "--model", str(tiny_checkpoint), "--format", fmt, "--output", str(out)])
    assert run_export(args) == 0
    assert out.is_file()
    meta = read_metadata(out)
    assert meta["skeleton"] == "coco" and meta["source"] == str(tiny_checkpoint)


def test_run_export_default_name_and_errors(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_export(_parse(["export", "--model", str(tiny_checkpoint), "--no-check"])) == 0
    assert (tmp_path / "vitpose-tiny.onnx").is_file()
    with pytest.raises(InputError, match="must end in .xml"):
        run_export(_parse(["export", "--model", str(tiny_checkpoint), "--format", "openvino",
                           "--output", "x.onnx"]))
    with pytest.raises(CheckpointError, match="does not exist"):
        run_export(_parse(["export", "--model", str(tmp_path / "nope.pth")]))
