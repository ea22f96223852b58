"""ONNX / OpenVINO export and the onnxruntime / OpenVINO backends, on small random ViTPose models.

Tolerances: fp32 exports must match torch within 1e-4 * max|heatmap| + 1e-5 (rapidpose.deploy.export.tolerance;
measured about 1e-6 absolute with heatmap maxima near 0.9). OpenVINO bf16: cosine similarity of every
heatmap with torch's > 0.99 and the same argmax for at least 90% of the heatmaps (measured on the
2-block model: cosine >= 0.9999, all argmaxes equal, max abs difference about 0.7% of the peak).
"""
import argparse
import logging
import re
import shutil

import numpy as np
import onnx
import openvino as ov
import pytest
import torch

import rapidpose.skeletons as sk
from rapidpose.cli.export import add_export_parser, run_export
from rapidpose.deploy.export import ExportError, export_onnx, export_openvino, tolerance
from rapidpose.errors import CheckpointError, InputError
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime.metadata import read_metadata
from rapidpose.runtime.onnx_runtime import OnnxRuntime
from rapidpose.runtime.openvino_runtime import OpenVinoRuntime
from rapidpose.topdown.estimator import PoseEstimator


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


def strip_metadata(onnx_path, out):
    """A copy of an ONNX file without its metadata, as other tools write them."""
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(out))
    return out


def with_metadata(onnx_path, out, **changes):
    """A copy of an ONNX file with some metadata values changed (None: removed)."""
    proto = onnx.load(str(onnx_path))
    kept = [(e.key, changes.get(e.key, e.value)) for e in proto.metadata_props]
    del proto.metadata_props[:]
    for key, value in kept:
        if value is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def edited_ir(xml, out, *edits):
    """A copy of an IR whose .xml text has each (pattern, replacement) applied once or more."""
    text = xml.read_text()
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, flags=re.S)
        assert n, pattern
    out.write_text(text)
    shutil.copy(xml.with_suffix(".bin"), out.with_suffix(".bin"))
    return out


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


def test_25_keypoints_without_skeleton_attribute(tmp_path, caplog):
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
    # without metadata, 25 keypoints are still unambiguous (only coco_25 has 25): used, and said so
    bare = strip_metadata(path, tmp_path / "bare25.onnx")
    with caplog.at_level(logging.WARNING, logger="rapidpose"):
        assert OnnxRuntime(bare).skeleton is sk.COCO_25
    assert "bare25.onnx' has no rapidpose metadata" in caplog.text and "'coco_25'" in caplog.text


def test_fixed_batch_export(model, tmp_path):
    path = export_onnx(model, tmp_path / "b4.onnx", dynamic_batch=False, batch_size=4)
    runtime = OnnxRuntime(path)
    assert runtime.batch_size == 4
    x = crops(6, seed=6)  # 4 + 2 (padded)
    assert_close(runtime(x), torch_heatmaps(model, x))


def test_dynamo_exporter(model, tmp_path):
    path = export_onnx(model, tmp_path / "dynamo.onnx", exporter="dynamo")
    x = crops(3, seed=7)
    assert_close(OnnxRuntime(path)(x), torch_heatmaps(model, x))
    assert read_metadata(path)["skeleton"] == "coco"


def test_check_failure_raises(model, tmp_path, monkeypatch):
    import rapidpose.deploy.export as export

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
    with pytest.raises(CheckpointError, match="corrupt.onnx"):
        OpenVinoRuntime(bad)
    with pytest.raises(CheckpointError, match="corrupt.xml"):
        OpenVinoRuntime(xml)


# ---------------------------------------------------------------- OpenVINO

def test_openvino_fp32(model, openvino_file):
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
    runtime = OpenVinoRuntime(onnx_file, device="cpu", precision="fp32")  # an .onnx works directly
    assert runtime.skeleton is sk.COCO and runtime.metadata["skeleton"] == "coco"
    x = crops(2, seed=20)
    assert_close(runtime(x), torch_heatmaps(model, x))
    xml = export_openvino(onnx_file, tmp_path / "from_onnx.xml")  # ONNX -> IR keeps the metadata
    assert read_metadata(xml)["skeleton"] == "coco"


def test_openvino_bf16(model, openvino_file):
    from rapidpose.runtime.openvino_runtime import cpu_supports_bf16

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


# ---------------------------------------------------------------- what the file says it is

@pytest.fixture(scope="module")
def ap10k_model():
    m = small(seed=5)
    m.skeleton = sk.AP10K  # 17 keypoints, like COCO, but other left/right pairs
    return m


@pytest.fixture(scope="module")
def ap10k_files(ap10k_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ap10k")
    onnx_path = export_onnx(ap10k_model, folder / "ap10k.onnx")
    return onnx_path, export_openvino(onnx_path, folder / "ap10k.xml")


def test_ap10k_metadata_decodes_with_ap10k_flip_pairs(ap10k_model, ap10k_files):
    import copy

    image = np.random.default_rng(0).integers(0, 256, (300, 240, 3), dtype=np.uint8)
    box = np.array([[20, 30, 200, 280]], np.float32)
    ref = PoseEstimator(ap10k_model, backend="torch", precision="fp32", flip_test=True)(image, box)
    as_coco = copy.deepcopy(ap10k_model)
    as_coco.skeleton = sk.COCO
    wrong = PoseEstimator(as_coco, backend="torch", precision="fp32", flip_test=True)(image, box)
    assert np.abs(wrong.keypoints - ref.keypoints).max() > 2  # the flip pairs matter for these weights
    for path in ap10k_files:
        est = PoseEstimator(str(path), device="cpu", precision="fp32", flip_test=True)
        assert est.skeleton is sk.AP10K and est.skeleton.name == "ap10k", path
        assert (est._flip_index == sk.AP10K.flip_index()).all()
        got = est(image, box)
        assert np.abs(got.keypoints - ref.keypoints).max() < 0.5, path
    # OpenVINO reads the .onnx file's metadata too
    assert OpenVinoRuntime(ap10k_files[0], precision="fp32").skeleton is sk.AP10K


def test_a_file_without_metadata_is_refused_not_taken_for_coco(onnx_file, tmp_path):
    bare = strip_metadata(onnx_file, tmp_path / "bare.onnx")
    bare_ir = tmp_path / "bare.xml"  # an IR converted by hand from it: no rapidpose section either
    ov.save_model(ov.convert_model(str(bare)), str(bare_ir), compress_to_fp16=False)
    assert read_metadata(bare) == {} and read_metadata(bare_ir) == {}
    for make, path in ((OnnxRuntime, bare), (OpenVinoRuntime, bare), (OpenVinoRuntime, bare_ir)):
        with pytest.raises(InputError, match=rf"'{re.escape(str(path))}' has no rapidpose metadata, and its 17 "
                                             rf"keypoints fit several keypoint sets \(coco, ap10k, apt36k\).*"
                                             rf"`rapidpose export`.*keypoint_set='coco'.*--keypoint-set"):
            make(path)
        assert make(path, keypoint_set="ap10k").skeleton is sk.AP10K
        assert make(path, keypoint_set="coco").skeleton is sk.COCO
        with pytest.raises(InputError, match=r"keypoint_set 'mpii' has 16 keypoints but .* predicts 17: "
                                             r"use one of coco, ap10k, apt36k"):
            make(path, keypoint_set="mpii")
    with pytest.raises(InputError, match="unknown keypoint_set 'horse' for .*bare.onnx'"):
        OnnxRuntime(bare, keypoint_set="horse")
    with pytest.raises(InputError, match="has no rapidpose metadata"):
        PoseEstimator(str(bare), device="cpu")
    # a keypoint set that contradicts the file's own metadata is an error, not a silent override
    with pytest.raises(InputError, match="keypoint_set 'ap10k' contradicts .*vitpose.onnx', whose metadata says 'coco'"):
        OnnxRuntime(onnx_file, keypoint_set="ap10k")


@pytest.mark.parametrize("changes, message", [
    ({"skeleton": "horse"}, "its metadata names keypoint set 'horse', which this rapidpose does not know"),
    ({"skeleton": "mpii"}, "gives 17 heatmaps, but its metadata names keypoint set 'mpii' of 16"),
    ({"skeleton": None}, "has rapidpose metadata without a keypoint set"),
    ({"num_keypoints": "seventeen"}, "num_keypoints 'seventeen' is not a number"),
    ({"num_keypoints": "25"}, "gives 17 heatmaps, but its metadata says 25 keypoints"),
    ({"input_size": "[192]"}, r"input_size \(192,\) is not \[width, height\]"),
    ({"input_size": "[256, 192]"}, "takes 192x256 crops, but its metadata says 256x192"),
])
def test_broken_onnx_metadata_is_refused(onnx_file, tmp_path, changes, message):
    path = with_metadata(onnx_file, tmp_path / "broken.onnx", **changes)
    for make in (OnnxRuntime, OpenVinoRuntime):  # both backends read the file's metadata alike
        with pytest.raises(CheckpointError, match=rf"broken.onnx.*{message}.*`rapidpose export`"):
            make(path)


def test_unreadable_openvino_metadata_is_refused(ap10k_files, tmp_path):
    xml = ap10k_files[1]
    # the rapidpose section is there but is one value, not keys, and nothing else says what the file is:
    # this IR once ran as COCO
    single = edited_ir(xml, tmp_path / "single.xml", (r"<framework>.*?</framework>", ""),
                       (r"<rapidpose>.*?</rapidpose>", '<rapidpose value="ap10k" />'))
    with pytest.raises(CheckpointError, match=r"the 'rapidpose' metadata of '.*single.xml' cannot be read "
                                              r"\(it is a single value, not a section of keys\).*`rapidpose export`"):
        OpenVinoRuntime(single)
    # the rapidpose section is authoritative: a good copy under "framework" does not stand in for it
    with_framework = edited_ir(xml, tmp_path / "with_framework.xml",
                               (r"<rapidpose>.*?</rapidpose>", '<rapidpose value="ap10k" />'))
    with pytest.raises(CheckpointError, match="cannot be read"):
        OpenVinoRuntime(with_framework)
    wrong = edited_ir(xml, tmp_path / "wrong.xml", (r'(<rapidpose>.*?<skeleton value=")ap10k(")', r"\1wholebody\2"))
    with pytest.raises(CheckpointError, match="'.*wrong.xml' gives 17 heatmaps, but its metadata names keypoint "
                                              "set 'wholebody' of 133"):
        OpenVinoRuntime(wrong)


# ---------------------------------------------------------------- command line

def _parse(argv):
    parser = argparse.ArgumentParser(prog="rapidpose")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("openvino", ".xml")])
def test_run_export(tiny_checkpoint, tmp_path, fmt, suffix):
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
