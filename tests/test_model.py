"""The network: parity with Hugging Face transformers, every checkpoint layout, clear errors."""
import json
import os

import pytest
import torch
import transformers  # a declared test dependency: a broken install fails, never skips
from conftest import randomize_

from rapidpose import CheckpointError, DownloadError, InputError, load_model
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig
from rapidpose.model.weights import infer_config, to_official
from rapidpose.model.zoo import MODEL_ZOO

VARIANTS = {"s": (384, 12, 12), "b": (768, 12, 12)}


def hf_model(variant, simple, experts=1, seed=0, depth=None):
    dim, full_depth, heads = VARIANTS[variant]
    depth = depth or full_depth
    backbone = transformers.VitPoseBackboneConfig(
        hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads, layer_norm_eps=1e-6,
        out_indices=[depth], num_experts=experts, part_features=dim // 4)
    config = transformers.VitPoseConfig(backbone_config=backbone, use_simple_decoder=simple, num_labels=17)
    return randomize_(transformers.VitPoseForPoseEstimation(config), seed)


def hf_heatmaps(model, x, index=None):
    with torch.no_grad():
        ds = None if index is None else torch.full((len(x),), index)
        return model(x, dataset_index=ds).heatmaps


def crops(n=2, seed=0):
    return torch.randn(n, 3, 256, 192, generator=torch.Generator().manual_seed(seed))


def save_hf_folder(model, folder):
    model.save_pretrained(folder)  # config.json + model.safetensors, as the hub publishes them
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    return folder


@pytest.mark.parametrize("variant", ["s", "b"])
@pytest.mark.parametrize("simple", [False, True], ids=["classic", "simple"])
def test_parity_with_transformers(variant, simple, tmp_path):
    ref = hf_model(variant, simple)
    ours = load_model(save_hf_folder(ref, tmp_path / "hf"))
    assert ours.cfg.variant == variant and ours.cfg.head == ("simple" if simple else "classic")
    x = crops()
    with torch.no_grad():
        got = ours(x)
    want = hf_heatmaps(ref, x)
    assert got.shape == (2, 17, 64, 48)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert want.abs().max() > 0.1  # the comparison is not between near-zero maps

    # the same weights written in the official .pth layout give the same heatmaps
    official = tmp_path / "official.pth"
    torch.save({"state_dict": ours.state_dict(), "meta": {}}, official)
    again = load_model(official)
    assert set(again.state_dict()) == set(ours.state_dict())
    with torch.no_grad():
        assert torch.allclose(again(x), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["s", "b"])
def test_vitpose_plus_every_expert(variant, tmp_path):
    """Hugging Face's ViTPose++ folders hold the 6 experts and the COCO head only: each expert (read out
    by that head, as transformers does) gives transformers' heatmaps; the module itself answers for
    dataset 0 alone, since no other dataset has a head in the file."""
    ref = hf_model(variant, simple=False, experts=6, depth=4)
    ours = load_model(save_hf_folder(ref, tmp_path / "hf"))
    assert ours.cfg.num_experts == 6 and ours.cfg.part_features == VARIANTS[variant][0] // 4
    assert ours.num_datasets == 1
    x = crops(3)
    outs = []
    for index in range(6):
        with torch.no_grad():
            got = ours.keypoint_head(ours.backbone(x, index))
        want = hf_heatmaps(ref, x, index)
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (index, (got - want).abs().max())
        outs.append(got)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)  # the experts really differ
    with torch.no_grad():
        assert torch.allclose(ours(x), outs[0])
    with pytest.raises(ValueError, match="dataset_index 1 .*only the COCO head"):
        ours(x, dataset_index=1)


def test_easy_vitpose_layout_merged_experts_and_25_keypoints(tmp_path):
    """easy_ViTPose ships ViTPose++ with one expert merged into fc2, and 25-keypoint heads."""
    plus = randomize_(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12, num_experts=6, part_features=96)), 3)
    state = dict(plus.state_dict())
    merged = {}
    for k, v in state.items():
        if ".mlp.experts." in k:
            continue
        if ".mlp.fc2." in k:
            v = torch.cat([v, state[k.replace("fc2.", "experts.2.")]])
        merged[k] = v
    torch.save({"state_dict": merged}, tmp_path / "vitpose-s-mpii.pth")
    easy = load_model(tmp_path / "vitpose-s-mpii.pth")
    assert easy.cfg.num_experts == 1
    x = crops()
    with torch.no_grad():
        assert torch.allclose(easy(x), plus.keypoint_head(plus.backbone(x, 2)), atol=1e-5)  # expert 2

    # a 25-keypoint head (easy_ViTPose's COCO + feet) under the 'module.' prefix of DataParallel
    k25 = randomize_(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12, num_keypoints=25)), 4)
    torch.save({"module." + k: v for k, v in k25.state_dict().items()}, tmp_path / "vitpose-25-s.pth")
    model = load_model(tmp_path / "vitpose-25-s.pth")
    assert model.cfg.num_keypoints == 25 and model.skeleton.num_keypoints == 25
    with torch.no_grad():
        assert model(x).shape == (2, 25, 64, 48)


def test_official_vitpose_plus_with_associate_heads(tmp_path):
    cfg = ViTPoseConfig(dim=384, depth=2, heads=12, num_experts=6, part_features=96,
                        associate_keypoints=(14, 16, 17, 17, 133))
    model = randomize_(ViTPose(cfg), 5)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "vitpose++.pth")
    for index, k in enumerate((17, 14, 16, 17, 17, 133)):
        loaded = load_model(tmp_path / "vitpose++.pth", dataset_index=index)
        assert loaded.skeleton.num_keypoints == k
        with torch.no_grad():
            out = loaded(crops(1))
        assert out.shape == (1, k, 64, 48)
        with torch.no_grad():
            assert torch.allclose(out, model(crops(1), dataset_index=index), atol=1e-5)
    assert load_model(tmp_path / "vitpose++.pth", dataset_index=2).skeleton.name == "mpii"


def test_variant_inferred_from_weights_alone():
    for name, (dim, depth, heads) in {"l": (1024, 24, 16), "h": (1280, 32, 16)}.items():
        # shapes only: meta tensors cost no memory
        with torch.device("meta"):
            model = ViTPose(ViTPoseConfig.from_variant(name, head="simple", num_keypoints=133))
        cfg = infer_config(to_official(model.state_dict(), "meta"))
        assert (cfg.dim, cfg.depth, cfg.heads, cfg.head, cfg.num_keypoints) == (dim, depth, heads, "simple", 133)


def test_wrong_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pth"):
        load_model(tmp_path / "text.pth")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a ViTPose checkpoint"):
        load_model(tmp_path / "resnet.pth")
    good = ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12)).state_dict()
    torch.save({"state_dict": good}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_model(tmp_path / "truncated.pth")
    broken = dict(good)
    broken["backbone.blocks.1.attn.qkv.weight"] = torch.zeros(5, 5)
    torch.save(broken, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="shape.pth"):
        load_model(tmp_path / "shape.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")


def test_hub_names_resolve_and_fail_offline_with_a_hint(monkeypatch):
    import huggingface_hub

    asked = []

    def offline(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DownloadError, match=r"--model /path/to/file.pth") as info:
        load_model("vitpose-b")
    assert asked == [("usyd-community/vitpose-base", "config.json")]  # HF_HUB_OFFLINE=1: the cache only
    assert "HF_HUB_OFFLINE=1" in str(info.value) and ".." not in str(info.value)
    assert MODEL_ZOO["vitpose-plus-s-coco"].files == ("torch/coco/vitpose-s-coco.pth",)
    assert MODEL_ZOO["easy-vitpose-h-coco_25"].repo == "JunkyByte/easy_ViTPose"
    with pytest.raises(InputError, match="unknown model 'vitpose-xl'"):
        load_model("vitpose-xl")


def test_hub_name_uses_cached_download(monkeypatch, tmp_path):
    """Once downloaded, a name loads from the cache: the hub is asked with local_files_only first."""
    import huggingface_hub

    ref = hf_model("s", simple=True, depth=2)
    folder = save_hf_folder(ref, tmp_path / "cache")
    calls = []

    def cached(repo_id, filename, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached)
    model = load_model("vitpose-b-simple")
    assert calls == [True, True] and model.cfg.head == "simple" and model.source == "vitpose-b-simple"
    assert json.loads((folder / "config.json").read_text())["use_simple_decoder"] is True


# ---------------------------------------------------------------- corrupt or unsafe checkpoint files

class TrainingState:
    """A Python object some training scripts save beside the weights (the safe loader refuses it)."""

    def __init__(self, epoch):
        self.epoch = epoch


def _small_state():
    return randomize_(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12)), 7).state_dict()


@pytest.mark.parametrize("kind", ["random bytes", "truncated", "truncated legacy, in its pickles",
                                  "truncated legacy, in its tensors", "html page", "empty"])
def test_a_corrupt_file_is_called_corrupt(tmp_path, monkeypatch, kind):
    path = tmp_path / "model.pth"
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind.startswith("truncated"):
        torch.save({"state_dict": _small_state()}, path, _use_new_zipfile_serialization=kind == "truncated")
        data = path.read_bytes()
        path.write_bytes(data[:200] if kind.endswith("pickles") else data[: len(data) // 2])
    elif kind == "html page":
        path.write_text("<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>")
    else:
        path.write_bytes(b"")
    for trust in ("0", "1"):  # trusting a corrupt file does not help, and the message does not suggest it
        monkeypatch.setenv("RAPIDPOSE_TRUST_CHECKPOINTS", trust)
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        text = str(info.value)
        assert "model.pth' is not a readable checkpoint (corrupt or not a PyTorch file)" in text, text
        assert "Download it again" in text and "RAPIDPOSE_TRUST_CHECKPOINTS" not in text and ".." not in text


def test_a_checkpoint_with_python_objects_needs_trust(tmp_path, monkeypatch):
    model = randomize_(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12)), 7)
    for legacy in (False, True):
        path = tmp_path / f"trained-{legacy}.pth"
        torch.save({"state_dict": model.state_dict(), "training": TrainingState(210)}, path,
                   _use_new_zipfile_serialization=not legacy)
        monkeypatch.delenv("RAPIDPOSE_TRUST_CHECKPOINTS", raising=False)
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        text = str(info.value)
        assert "RAPIDPOSE_TRUST_CHECKPOINTS=1" in text and "TrainingState" in text and "not a readable" not in text
        monkeypatch.setenv("RAPIDPOSE_TRUST_CHECKPOINTS", "1")
        loaded = load_model(path)
        x = crops(1)
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x), atol=1e-5)
