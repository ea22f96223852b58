"""The model zoo: every name resolves to the file it says, `rapidpose models` tells what each is, old
names still work, ViTPose++ files without a dataset's head refuse that dataset, and an unreachable hub
fails in seconds with one message. Nothing here reaches a network: downloads are served from local
random-weight files in each entry's layout, or go to a closed port on 127.0.0.1."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers  # a declared test dependency: a broken install fails, never skips
from conftest import ASSETS, randomize_

from rapidpose import DownloadError, InputError, load_model
from rapidpose.cli import main
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig
from rapidpose.model.zoo import ALIASES, DEFAULT_MODEL, MODEL_ZOO, ZooEntry

IMAGE = ASSETS / "images" / "coco-mmpose"


def _hf_folder(folder: Path, *, experts: int, simple: bool, dim=384, heads=12, depth=1, seed=0) -> Path:
    """A Hugging Face VitPose folder as the usyd-community conversions publish them: config.json +
    model.safetensors, 17 COCO labels, experts in the backbone but no extra heads."""
    backbone = transformers.VitPoseBackboneConfig(
        hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads, layer_norm_eps=1e-6,
        out_indices=[depth], num_experts=experts, part_features=dim // 4 if experts > 1 else 0)
    config = transformers.VitPoseConfig(backbone_config=backbone, use_simple_decoder=simple, num_labels=17)
    randomize_(transformers.VitPoseForPoseEstimation(config), seed).save_pretrained(folder)
    return folder


def _split_file(path: Path, num_keypoints: int, seed=0) -> Path:
    """An easy_ViTPose .pth: the official names, one expert merged into fc2, one head, under state_dict."""
    model = randomize_(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12, num_keypoints=num_keypoints)), seed)
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


@pytest.fixture(scope="module")
def fake_files(tmp_path_factory):
    """(repo, filename) -> a local file in that entry's layout, made once per distinct layout."""
    root = tmp_path_factory.mktemp("hub")
    made, files = {}, {}
    for entry in MODEL_ZOO.values():
        if entry.files[-1].endswith(".safetensors"):
            key = ("hf", entry.experts, "simple" in entry.network)
            if key not in made:
                made[key] = _hf_folder(root / f"hf-{len(made)}", experts=key[1], simple=key[2])
            for name in entry.files:
                files[(entry.repo, name)] = made[key] / name
        else:
            key = ("pth", entry.num_keypoints)
            if key not in made:
                made[key] = _split_file(root / f"split-{entry.num_keypoints}.pth", entry.num_keypoints)
            files[(entry.repo, entry.files[-1])] = made[key]
    return files


@pytest.fixture
def hub(monkeypatch, fake_files):
    """huggingface_hub serving the fake files; records what was asked for."""
    import huggingface_hub

    asked = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        asked.append((repo_id, filename))
        return str(fake_files[(repo_id, filename)])

    def no_network(*args, **kwargs):
        raise AssertionError("the files are in the (fake) cache: the hub must not be asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    return asked


# ---------------------------------------------------------------- the table

@pytest.mark.parametrize("name", list(MODEL_ZOO))
def test_every_entry_resolves_to_its_file_and_keypoints(hub, name):
    entry = MODEL_ZOO[name]
    model = load_model(name)
    assert hub == [(entry.repo, f) for f in entry.files]
    assert model.skeleton.name == entry.keypoints and model.skeleton.num_keypoints == entry.num_keypoints
    assert model.cfg.num_experts == entry.experts and model.num_datasets == entry.heads == 1
    assert model.cfg.head == ("simple" if "simple head" in entry.network else "classic")
    assert model.source == name
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 256, 192)).shape == (1, entry.num_keypoints, 64, 48)


def test_table_says_what_each_name_is():
    assert DEFAULT_MODEL == "vitpose-b" and DEFAULT_MODEL in MODEL_ZOO
    for entry in MODEL_ZOO.values():
        assert isinstance(entry, ZooEntry) and entry.network and entry.trained_on and entry.published
        if entry.coco_ap is None:
            assert not entry.published.startswith("COCO AP")
        else:
            assert entry.keypoints == "coco" and entry.published == f"COCO AP {entry.coco_ap}"
    # the figures of the ViTPose README (COCO val2017, AP-56 person detections, flip test)
    published = {"vitpose-b": 75.8, "vitpose-b-simple": 75.5, "vitpose-b-coco-aic-mpii": 77.1,
                 "vitpose-plus-s": 75.8, "vitpose-plus-b": 77.0, "vitpose-plus-l": 78.6, "vitpose-plus-h": 79.4}
    for name, ap in published.items():
        assert MODEL_ZOO[name].coco_ap == ap
        if name.startswith("vitpose-plus-"):  # a split computes what ViTPose++ does at that dataset index
            assert MODEL_ZOO[f"{name}-coco"].coco_ap == ap
    assert MODEL_ZOO["vitpose-plus-b-mpii"].published == "MPII val PCKh 92.8"
    assert MODEL_ZOO["easy-vitpose-b-coco_25"].published == "not published"
    # ViTPose++ files say so in their names; the single-task ViTPose-S/L/H are not in the zoo
    assert all("ViTPose++" in e.network for n, e in MODEL_ZOO.items() if n.startswith("vitpose-plus-"))
    assert not {"vitpose-s", "vitpose-l", "vitpose-h"} & set(MODEL_ZOO)
    assert MODEL_ZOO["vitpose-b-coco-aic-mpii"].repo == "usyd-community/vitpose-base-coco-aic-mpii"
    assert MODEL_ZOO["vitpose-plus-h-wholebody"].files == ("torch/wholebody/vitpose-h-wholebody.pth",)


def test_models_command_lists_every_name(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for entry in MODEL_ZOO.values():
        row = next(line for line in lines if line.split()[0] == entry.name)
        assert f"{entry.keypoints} ({entry.num_keypoints})" in row and entry.published in row
        assert entry.network in row and entry.source in row
    assert "vitpose-b (default)" in out and "COCO AP 75.8" in out and "not published" in out
    assert all(old in out for old in ALIASES)

    assert main(["models", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| name |") and table.count("\n| `") == len(MODEL_ZOO)

    assert main(["models", "vitpose-l"]) == 0
    detail = capsys.readouterr().out
    assert "vitpose-plus-l-coco" in detail and "old name" in detail and "easy_ViTPose" in detail


def test_models_command_unknown_name(capsys, caplog):
    assert main(["models", "vitpose-xl"]) == 2
    assert "unknown model 'vitpose-xl'" in caplog.text


# ---------------------------------------------------------------- old names

@pytest.mark.parametrize("old", ["vitpose-s", "vitpose-l", "vitpose-h", "easy-vitpose-b-mpii"])
def test_old_names_still_load_the_same_file_with_a_warning(hub, caplog, old):
    new = ALIASES[old]
    size = old.split("-")[-1] if old.startswith("vitpose-") else old.split("-")[2]
    dataset = "coco" if old.startswith("vitpose-") else old.split("-")[-1]
    model = load_model(old)
    # the very file the old name fetched before the rename
    assert hub == [("JunkyByte/easy_ViTPose", f"torch/{dataset}/vitpose-{size}-{dataset}.pth")]
    assert model.skeleton.name == dataset
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"'{old}' is deprecated" in warnings[0].message and new in warnings[0].message


def test_unknown_name_lists_the_names():
    with pytest.raises(InputError, match="unknown model 'vitpose-xl'") as info:
        load_model("vitpose-xl")
    assert "vitpose-plus-b" in str(info.value) and "rapidpose models" in str(info.value)


# ---------------------------------------------------------------- ViTPose++ and dataset_index

def test_coco_head_only_vitpose_plus_refuses_other_datasets(hub):
    assert load_model("vitpose-plus-b").skeleton.name == "coco"
    with pytest.raises(InputError) as info:
        load_model("vitpose-plus-b", dataset_index=2)
    text = str(info.value)
    assert "dataset_index 2 (mpii)" in text and "only the 17-keypoint head" in text
    assert "--model vitpose-plus-b-mpii" in text and "16 mpii keypoints" in text
    assert "every dataset's head" in text and ".." not in text
    with pytest.raises(InputError, match="vitpose-plus-h-wholebody"):
        load_model("vitpose-plus-h", dataset_index=5)
    with pytest.raises(InputError, match="out of range"):
        load_model("vitpose-plus-b", dataset_index=6)
    with pytest.raises(InputError, match="out of range"):  # a split holds one dataset
        load_model("vitpose-plus-b-mpii", dataset_index=1)


def test_coco_head_only_file_refuses_by_path_too(tmp_path):
    folder = _hf_folder(tmp_path / "plus", experts=6, simple=False)
    model = load_model(folder)
    assert model.num_datasets == 1 and model.cfg.num_experts == 6
    with pytest.raises(InputError, match="holds 6 ViTPose[+][+] experts but only the 17-keypoint head"):
        load_model(folder, dataset_index=3)
    with pytest.raises(ValueError, match="only the COCO head"):  # the module itself refuses too
        model(torch.zeros(1, 3, 256, 192), dataset_index=3)


def test_official_vitpose_plus_gives_each_dataset_its_own_keypoints(tmp_path):
    cfg = ViTPoseConfig(dim=384, depth=1, heads=12, num_experts=6, part_features=96,
                        associate_keypoints=(14, 16, 17, 17, 133))
    torch.save({"state_dict": randomize_(ViTPose(cfg), 1).state_dict()}, tmp_path / "vitpose+_small.pth")
    for index, (name, k) in enumerate([("coco", 17), ("aic", 14), ("mpii", 16), ("ap10k", 17),
                                        ("apt36k", 17), ("wholebody", 133)]):
        model = load_model(tmp_path / "vitpose+_small.pth", dataset_index=index)
        assert (model.skeleton.name, model.skeleton.num_keypoints, model.num_datasets) == (name, k, 6)


def test_vitpose_b_coco_aic_mpii_layout(monkeypatch, tmp_path):
    """usyd-community/vitpose-base-coco-aic-mpii as transformers' conversion script writes it: a plain
    ViT-B (no experts), classic head, 17 COCO labels. Random weights in that layout load under the name
    and give transformers' heatmaps."""
    import huggingface_hub

    folder = _hf_folder(tmp_path / "b-multi", experts=1, simple=False, dim=768, heads=12, depth=2, seed=3)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **kw: str(folder / filename)
                        if repo_id == "usyd-community/vitpose-base-coco-aic-mpii" else pytest.fail(repo_id))
    model = load_model("vitpose-b-coco-aic-mpii")
    assert (model.cfg.dim, model.cfg.num_experts, model.cfg.head, model.skeleton.name) == (768, 1, "classic", "coco")
    ref = transformers.VitPoseForPoseEstimation.from_pretrained(folder).eval()
    x = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x).heatmaps, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- offline

def _closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_in_seconds_with_one_message(tmp_path):
    """The real huggingface_hub against a closed local port, through the command line, in a fresh process
    (huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               RAPIDPOSE_CACHE=str(tmp_path / "cache"))
    script = ("import sys, time, torch, huggingface_hub\n"
              "from rapidpose.cli import main\n"
              "start = time.perf_counter()\n"
              f"code = main(['predict', {str(IMAGE)!r}, '--model', 'vitpose-b', '--detector', 'none'])\n"
              "print(code, time.perf_counter() - start)\n")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    code, seconds = run.stdout.split()
    assert code == "2", run.stderr
    assert float(seconds) < 5, seconds
    errors = [line for line in run.stderr.splitlines() if "could not download" in line]
    assert len(errors) == 1, run.stderr
    message = errors[0]
    assert "model 'vitpose-b'" in message and "could not be reached" in message and "127.0.0.1" in message
    assert "--model /path/to/file.pth" in message and "folder" in message and "HF_HUB_OFFLINE=1" in message
    assert ".." not in message
    assert "Retrying" not in run.stderr and "thrown while requesting" not in run.stderr  # hub's own warnings


def test_no_network_asks_the_hub_once_without_retries(monkeypatch, caplog):
    """In process: the connection error huggingface_hub raises, from the one look before downloading;
    the retrying download is never started."""
    import httpx2
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
        time.sleep(23)  # what huggingface_hub's retries cost offline
        raise AssertionError("unreachable")

    def metadata(url, timeout=None, **kwargs):
        assert timeout <= 5
        raise httpx2.ConnectError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        load_model("vitpose-b")
    assert time.perf_counter() - start < 5 and calls == [True]
    text = str(info.value)
    assert text.startswith("could not download model 'vitpose-b'") and "Network is unreachable" in text
    assert "--model /path/to/file.pth" in text and "HF_HUB_OFFLINE=1" in text and ".." not in text


def test_offline_mode_never_asks_the_hub(monkeypatch):
    import huggingface_hub

    def cache_only(repo_id, filename, local_files_only=False, **kwargs):
        assert local_files_only
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    def no_network(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1: the hub must not be asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    with pytest.raises(DownloadError) as info:  # conftest sets HF_HUB_OFFLINE=1
        load_model("vitpose-plus-b-mpii")
    text = str(info.value)
    assert "model 'vitpose-plus-b-mpii'" in text and "HF_HUB_OFFLINE=1 is set" in text
    assert "--model /path/to/file.pth" in text and ".." not in text
