"""Read every published ViTPose checkpoint layout and build the network from the weights alone.

Layouts: the official ViTPose `.pth` (`backbone.*`, `keypoint_head.*`, ViTPose++ experts and
`associate_keypoint_heads.*`, often under `state_dict`), easy_ViTPose's `.pth` (the same names,
experts merged into fc2), and Hugging Face transformers (a folder with config.json and
model.safetensors, names like `backbone.encoder.layer.0.attention.attention.query`). Hugging Face
names are translated to the official ones, which are this project's own.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from rapidpose.errors import CheckpointError, InputError, require
from rapidpose.hub import hf_download
from rapidpose.skeletons import VITPOSE_PLUS_DATASETS, Skeleton, skeleton_for, skeleton_from_meta
from rapidpose.model.vitpose import VARIANTS, ViTPose, ViTPoseConfig
from rapidpose.model.zoo import MODEL_ZOO, ZooEntry, lookup, split_for

log = logging.getLogger("rapidpose")

# What a failed download says to do instead (one sentence, no closing period).
LOCAL_MODEL_HINT = ("Pass a local file instead: --model /path/to/file.pth, or a folder holding config.json and "
                    "model.safetensors (load_model('/path/to/file.pth') in Python)")


# ---------------------------------------------------------------- reading files

_TORCH_MAGIC = 0x1950a86a20f9469cfc6c  # the first thing torch.save writes in its legacy (non-zip) format


def _unreadable(path: Path) -> str | None:
    """Why `path` is not a whole PyTorch checkpoint, found by reading its structure without running any
    of it; None when it looks whole (then a failed load is about what it stores, not about the bytes)."""
    import pickletools
    import zipfile

    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty"
    if head[:4] == b"PK\x03\x04":  # torch.save's zip format: archive/data.pkl + one file per tensor
        try:
            with zipfile.ZipFile(path) as zf:
                pickles = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not pickles:
                    return "it is a zip archive without the data.pkl of a PyTorch checkpoint"
                damaged = zf.testzip()
                if damaged:
                    return f"its part {damaged} is damaged"
                list(pickletools.genops(zf.read(pickles[0])))
        except Exception as exc:
            return f"it is a zip archive that is cut short or damaged ({type(exc).__name__}: {str(exc)[:80]})"
        return None
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy format is 5 pickles, then the tensor bytes
        try:
            with open(path, "rb") as f:
                first = [arg for op, arg, _ in pickletools.genops(f) if op.name.startswith("LONG")]
                if first[:1] != [_TORCH_MAGIC]:
                    return "it is a Python pickle but not one written by torch.save"
                for _ in range(4):  # protocol version, system info, the saved object, storage keys
                    list(pickletools.genops(f))
        except Exception as exc:
            return f"it is cut short or damaged ({type(exc).__name__}: {str(exc)[:80]})"
        return None
    text = head.lower()
    if b"<html" in text or b"<!doctype" in text:
        return "it is an HTML page (a download that saved an error page?)"
    return "it is neither a zip archive nor a pickle, the two formats of torch.save"


def _torch_load(path: Path) -> dict:
    torch = require("torch", "torch")
    trust = os.environ.get("RAPIDPOSE_TRUST_CHECKPOINTS") == "1"
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).strip()}"
    problem = _unreadable(path)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", error) if problem is None else None
    if problem is None and not unsafe and re.search(r"\bEOF\b|corrupt|truncated", error, re.IGNORECASE):
        # whole pickles but tensor bytes missing (torch: "unexpected EOF ... The file might be corrupted")
        problem = f"it is cut short or damaged ({error.splitlines()[0][:120].rstrip('. ')})"
    if problem is not None:
        raise CheckpointError(f"'{path}' is not a readable checkpoint (corrupt or not a PyTorch file): {problem}. "
                              f"Download it again, or pass another checkpoint.") from None
    if unsafe and not trust:
        raise CheckpointError(
            f"'{path}' is a PyTorch checkpoint that stores Python objects besides its weights "
            f"({unsafe[1]}), which the safe loader does not run. If you trust where the file comes from, "
            f"set RAPIDPOSE_TRUST_CHECKPOINTS=1 to load it with the full unpickler (which can run code).") from None
    raise CheckpointError(f"could not read model file '{path}' as a PyTorch checkpoint "
                          f"({error.splitlines()[0][:200].rstrip('. ')}). Check that it is a ViTPose checkpoint, "
                          f"or download it again.") from None


def _safetensors_load(path: Path) -> dict:
    require("safetensors", "torch")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"'{path}' is not a readable safetensors file (corrupt or not safetensors: "
                              f"{str(exc).strip().rstrip('.')[:200]}). Download it again, or pass another "
                              f"checkpoint.") from None


def read_checkpoint(path) -> tuple[dict, dict, dict]:
    """A local file or Hugging Face folder -> (raw state dict, Hugging Face config or {}, rapidpose's
    metadata or {}: what `rapidpose train` writes under "meta" -> "rapidpose", such as the keypoint set)."""
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
    meta = state.get("meta") if isinstance(state.get("meta"), dict) else {}
    meta = meta.get("rapidpose") if isinstance(meta.get("rapidpose"), dict) else {}
    for key in ("state_dict", "model", "module"):  # training checkpoints nest the weights
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return state, config, meta


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

def _zoo_names() -> str:
    return ", ".join(n for n in MODEL_ZOO if not n.startswith("vitpose-plus-") or n.count("-") == 2)


def resolve(name_or_path) -> tuple[Path, ZooEntry | None]:
    """A zoo name -> its downloaded local path and zoo entry; a path is returned as it is (entry None).

    Old names (zoo.ALIASES) still resolve, with a warning naming the current one."""
    text = str(name_or_path)
    entry, old = lookup(text)
    if entry is not None:
        if old is not None:
            log.warning("model name '%s' is deprecated: it is '%s' (%s, %s); use that name", old, entry.name,
                        entry.network, entry.published)
        paths = hf_download(entry.repo, list(entry.files), what=f"model '{entry.name}'", instead=LOCAL_MODEL_HINT)
        return paths[-1], entry
    path = Path(text).expanduser()
    if not path.exists() and not any(sep in text for sep in "/\\") and "." not in Path(text).name:
        raise InputError(f"unknown model '{text}': use a path to a checkpoint or one of {_zoo_names()} "
                         f"(vitpose-plus-<s|b|l|h>-<dataset> for one dataset of ViTPose++; `rapidpose models` "
                         f"lists them all)")
    return path, None


def _check_dataset_index(model: ViTPose, dataset_index: int, name_or_path, entry: ZooEntry | None) -> None:
    """Refuse a dataset_index the file has no head for: never one dataset's keypoints under another's name."""
    if 0 <= dataset_index < model.num_datasets:
        return
    experts = model.cfg.num_experts
    if experts > 1 and 0 < dataset_index < experts:
        dataset = VITPOSE_PLUS_DATASETS[dataset_index] if dataset_index < len(VITPOSE_PLUS_DATASETS) else None
        split = split_for(entry, dataset_index) if entry is not None else None
        use = (f"use --model {split.name} ({split.network}, {split.num_keypoints} {split.keypoints} keypoints)"
               if split else "use a file split for that dataset")
        raise InputError(
            f"dataset_index {dataset_index}{f' ({dataset})' if dataset else ''} asks '{name_or_path}' for a "
            f"dataset it has no keypoint head for: the file holds {experts} ViTPose++ experts but only the "
            f"{model.cfg.num_keypoints}-keypoint head of dataset 0 (COCO), so that expert would be read out with "
            f"COCO's head. To get that dataset's own keypoints, {use}, or pass the official ViTPose++ .pth, which "
            f"carries every dataset's head (--model /path/to/vitpose+_base.pth --dataset-index {dataset_index}).")
    raise InputError(f"dataset_index {dataset_index} is out of range: '{name_or_path}' has {model.num_datasets} "
                     f"dataset(s), so use 0..{model.num_datasets - 1} (--dataset-index picks a ViTPose++ expert "
                     f"of files that hold several)")


def load_model(name_or_path="vitpose-b", device: str = "cpu", dataset_index: int = 0,
               dtype=None) -> ViTPose:
    """Build the network from a checkpoint file, folder or zoo name; infer the variant from it.

    The module gets `.skeleton` (its keypoint set) and `.source` (where it came from).
    """
    require("torch", "torch")  # a clear message when the torch extra is missing
    path, entry = resolve(name_or_path)
    raw, hf_config, meta = read_checkpoint(path)
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
    _check_dataset_index(model, dataset_index, name_or_path, entry)
    model.dataset_index = dataset_index
    dataset = entry.keypoints if entry is not None else None
    if dataset is None and cfg.num_experts > 1:
        dataset = VITPOSE_PLUS_DATASETS[dataset_index] if dataset_index < len(VITPOSE_PLUS_DATASETS) else None
    model.skeleton: Skeleton = skeleton_for(model.num_keypoints_of(dataset_index), dataset)
    if meta.get("keypoint_set") and dataset_index == 0:  # a model trained by rapidpose names its own set
        carried = skeleton_from_meta(meta["keypoint_set"])
        if carried.num_keypoints == model.num_keypoints_of(0):
            model.skeleton = carried
    model.source = str(name_or_path)
    return model.to(device=device, dtype=dtype).eval()
