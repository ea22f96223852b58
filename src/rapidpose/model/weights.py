"""Read every published ViTPose checkpoint layout and build the network from the weights alone.

Layouts: the official ViTPose `.pth` (`backbone.*`, `keypoint_head.*`, ViTPose++ experts and
`associate_keypoint_heads.*`, often under `state_dict`), easy_ViTPose's `.pth` (the same names,
experts merged into fc2), and Hugging Face transformers (a folder with config.json and
model.safetensors, names like `backbone.encoder.layer.0.attention.attention.query`). Hugging Face
names are translated to the official ones, which are this project's own.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rapidpose.errors import CheckpointError, InputError, require
from rapidpose.hub import hf_download
from rapidpose.skeletons import VITPOSE_PLUS_DATASETS, Skeleton, skeleton_for
from rapidpose.model.vitpose import VARIANTS, ViTPose, ViTPoseConfig

EASY_VITPOSE_REPO = "JunkyByte/easy_ViTPose"
EASY_DATASETS = ("coco", "coco_25", "wholebody", "mpii", "aic", "ap10k", "apt36k")


@dataclass(frozen=True)
class HubModel:
    repo: str
    files: tuple[str, ...]
    dataset: str = "coco"
    note: str = ""


def _zoo() -> dict[str, HubModel]:
    zoo = {
        "vitpose-b": HubModel("usyd-community/vitpose-base", ("config.json", "model.safetensors"),
                              note="ViTPose-B, classic head, COCO (75.8 AP published)"),
        "vitpose-b-simple": HubModel("usyd-community/vitpose-base-simple", ("config.json", "model.safetensors"),
                                     note="ViTPose-B, simple head, COCO"),
    }
    for short, long in (("s", "small"), ("b", "base"), ("l", "large"), ("h", "huge")):
        zoo[f"vitpose-plus-{short}"] = HubModel(
            f"usyd-community/vitpose-plus-{long}", ("config.json", "model.safetensors"),
            note=f"ViTPose++-{short.upper()}, 6 dataset experts, COCO head")
        for dataset in EASY_DATASETS:
            zoo[f"easy-vitpose-{short}-{dataset}"] = HubModel(
                EASY_VITPOSE_REPO, (f"torch/{dataset}/vitpose-{short}-{dataset}.pth",), dataset,
                note=f"easy_ViTPose's ViTPose-{short.upper()} for {dataset}")
    for short in "slh":  # no ViTPose-S/L/H on the usyd-community hub: easy_ViTPose's COCO files
        zoo[f"vitpose-{short}"] = zoo[f"easy-vitpose-{short}-coco"]
    return zoo


MODEL_ZOO = _zoo()


# ---------------------------------------------------------------- reading files

def _torch_load(path: Path) -> dict:
    torch = require("torch", "torch")
    trust = os.environ.get("RAPIDPOSE_TRUST_CHECKPOINTS") == "1"
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        hint = ("" if trust else " If it is a checkpoint you trust that stores Python objects, set "
                "RAPIDPOSE_TRUST_CHECKPOINTS=1 to read it without the safe loader.")
        raise CheckpointError(f"could not read model file '{path}' as a PyTorch checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]}).{hint}") from None


def _safetensors_load(path: Path) -> dict:
    require("safetensors", "torch")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"could not read model file '{path}' as safetensors ({exc})") from None


def read_checkpoint(path) -> tuple[dict, dict]:
    """A local file or Hugging Face folder -> (raw state dict, Hugging Face config or {})."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file '{path}' does not exist: pass a ViTPose checkpoint "
                              f"(.pth, .safetensors or a Hugging Face folder) or a model name such as 'vitpose-b'")
    config = {}
    if path.is_dir():
        if (path / "config.json").exists():
            config = json.loads((path / "config.json").read_text())
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(f"folder '{path}' holds no model.safetensors or pytorch_model.bin")
    elif (path.parent / "config.json").exists() and path.suffix == ".safetensors":
        config = json.loads((path.parent / "config.json").read_text())
    state = _safetensors_load(path) if path.suffix == ".safetensors" else _torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a ViTPose checkpoint: it holds a {type(state).__name__}, "
                              f"not a dict of weights")
    for key in ("state_dict", "model", "module"):  # training checkpoints nest the weights
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return state, config


# ---------------------------------------------------------------- layouts

_HF_RULES = [
    (r"backbone\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (r"backbone\.embeddings\.position_embeddings$", "backbone.pos_embed"),
    (r"backbone\.encoder\.layer\.(\d+)\.layernorm_before\.", r"backbone.blocks.\1.norm1."),
    (r"backbone\.encoder\.layer\.(\d+)\.layernorm_after\.", r"backbone.blocks.\1.norm2."),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"backbone.blocks.\1.attn.proj."),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.", r"backbone.blocks.\1.mlp."),
    (r"backbone\.layernorm\.", "backbone.last_norm."),
    (r"head\.deconv1\.", "keypoint_head.deconv_layers.0."),
    (r"head\.batchnorm1\.", "keypoint_head.deconv_layers.1."),
    (r"head\.deconv2\.", "keypoint_head.deconv_layers.3."),
    (r"head\.batchnorm2\.", "keypoint_head.deconv_layers.4."),
    (r"head\.conv\.", "keypoint_head.final_layer."),
]
_HF_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def hf_to_official(state: dict) -> dict:
    """Translate Hugging Face transformers names to the official ViTPose ones (q, k, v -> qkv)."""
    torch = require("torch", "torch")
    out, qkv = {}, {}
    for key, value in state.items():
        key = key.removeprefix("vitpose.")
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        for pattern, repl in _HF_RULES:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = value
                break
    for (layer, kind), parts in qkv.items():
        out[f"backbone.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def to_official(state: dict, source: str) -> dict:
    """Any supported layout -> official names, only the keys the network uses."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(("backbone.embeddings.", "backbone.encoder.")) for k in state):
        state = hf_to_official(state)
    elif "patch_embed.proj.weight" in state:  # a bare backbone + head saved without prefix
        state = {(k if k.startswith(("keypoint_head.", "associate_keypoint_heads."))
                  else "backbone." + k): v for k, v in state.items()}
    if "backbone.patch_embed.proj.weight" not in state:
        sample = ", ".join(list(state)[:4]) or "none"
        raise CheckpointError(
            f"'{source}' is not a ViTPose checkpoint: it has no ViTPose backbone weights (its first keys: "
            f"{sample}). Pass an official ViTPose or easy_ViTPose .pth, or a Hugging Face VitPose folder "
            f"or model.safetensors.")
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "keypoint_head.", "associate_keypoint_heads."))}


def infer_config(state: dict, hf_config: dict | None = None) -> ViTPoseConfig:
    """Everything about the network from the official-layout weights (heads and eps need a hint)."""
    hf_backbone = (hf_config or {}).get("backbone_config") or {}
    dim = state["backbone.patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(m[1]) for k in state if (m := re.match(r"backbone\.blocks\.(\d+)\.", k)))
    heads = hf_backbone.get("num_attention_heads") or next(
        (h for d, _, h in VARIANTS.values() if d == dim), max(dim // 64, 1))
    patches = state["backbone.pos_embed"].shape[1] - 1
    rows = round((patches * 4 / 3) ** 0.5)  # the 4:3 (256x192) input of every published model
    if rows * (patches // rows) != patches:
        raise CheckpointError(f"position embedding of {patches} patches is not a 4:3 grid")
    num_experts = len({k.split(".")[5] for k in state if k.startswith("backbone.blocks.0.mlp.experts.")})
    part = state["backbone.blocks.0.mlp.experts.0.weight"].shape[0] if num_experts else 0
    if "keypoint_head.final_layer.weight" not in state:
        raise CheckpointError("checkpoint has a ViTPose backbone but no keypoint head "
                              "(keypoint_head.final_layer): it cannot predict keypoints")
    final = state["keypoint_head.final_layer.weight"]
    head = "classic" if "keypoint_head.deconv_layers.0.weight" in state else "simple"
    assoc = sorted({int(m[1]) for k in state if (m := re.match(r"associate_keypoint_heads\.(\d+)\.", k))})
    return ViTPoseConfig(
        dim=dim, depth=depth, heads=heads, num_keypoints=final.shape[0], head=head,
        grid=(rows, patches // rows), num_experts=max(num_experts, 1), part_features=part,
        associate_keypoints=tuple(state[f"associate_keypoint_heads.{i}.final_layer.weight"].shape[0] for i in assoc),
        eps=float(hf_backbone.get("layer_norm_eps", 1e-6)),
    )


# ---------------------------------------------------------------- public entry points

def resolve(name_or_path) -> tuple[Path, str | None]:
    """A hub name -> downloaded local path (+ its dataset); a path is returned as it is."""
    text = str(name_or_path)
    if text in MODEL_ZOO:
        entry = MODEL_ZOO[text]
        paths = hf_download(entry.repo, list(entry.files), what=f"model '{text}'", flag="--model")
        return paths[-1], entry.dataset
    path = Path(text).expanduser()
    if not path.exists() and not any(sep in text for sep in "/\\") and "." not in Path(text).name:
        raise InputError(f"unknown model '{text}': use a path to a checkpoint or one of "
                         f"{', '.join(sorted(n for n in MODEL_ZOO if not n.startswith('easy-')))} "
                         f"(easy_ViTPose files as easy-vitpose-<s|b|l|h>-<dataset>)")
    return path, None


def load_model(name_or_path="vitpose-b", device: str = "cpu", dataset_index: int = 0,
               dtype=None) -> ViTPose:
    """Build the network from a checkpoint file, folder or hub name; infer the variant from it.

    The module gets `.skeleton` (its keypoint set) and `.source` (where it came from).
    """
    require("torch", "torch")  # a clear message when the torch extra is missing
    path, dataset = resolve(name_or_path)
    raw, hf_config = read_checkpoint(path)
    state = to_official(raw, str(path))
    cfg = infer_config(state, hf_config)
    model = ViTPose(cfg)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(f"'{path}' does not match the ViTPose network it describes "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"'{path}' has weights of the wrong shape for ViTPose: {str(exc)[:300]}") from None
    if not 0 <= dataset_index < model.num_datasets:
        raise InputError(f"dataset_index {dataset_index} is out of range: '{name_or_path}' has "
                         f"{model.num_datasets} dataset expert(s)")
    model.dataset_index = dataset_index
    if dataset is None and cfg.num_experts > 1:
        dataset = VITPOSE_PLUS_DATASETS[dataset_index] if dataset_index < len(VITPOSE_PLUS_DATASETS) else None
    model.skeleton: Skeleton = skeleton_for(model.num_keypoints_of(dataset_index), dataset)
    model.source = str(name_or_path)
    return model.to(device=device, dtype=dtype).eval()
