"""The official ViTPose training recipe: hyper-parameters, layer-wise lr decay, the lr schedule.

Numbers and rules follow ViTAE-Transformer/ViTPose: configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/
coco/ViTPose_{small,base,large,huge}_coco_256x192.py, mmcv_custom/layer_decay_optimizer_constructor.py,
and mmcv 1.x's StepLrUpdaterHook (linear warm-up, step decay by epoch). The official batch is 512
(64 per GPU on 8 GPUs); other batch sizes scale the lr linearly.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

from rapidpose.errors import InputError, check_choice, require

log = logging.getLogger("rapidpose")

# (layer decay rate, drop path rate) of each official config; the keys are ViTPoseConfig.variant's
OFFICIAL = {"s": (0.8, 0.1), "b": (0.75, 0.3), "l": (0.8, 0.5), "h": (0.85, 0.55)}


@dataclass
class Recipe:
    """Everything the official configs fix for training; defaults are ViTPose-B's, the reference config
    (`recipe_for` gives each variant its own layer decay and drop path)."""

    lr: float = 5e-4  # at the official batch of 512
    base_batch: int = 512
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.1
    layer_decay: float = 0.75
    drop_path: float = 0.3
    clip_grad: float = 1.0  # max L2 norm of all gradients together
    epochs: int = 210
    decay_epochs: tuple = (170, 200)
    decay_factor: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    sigma: float = 2.0  # Gaussian target, in heatmap pixels
    # augmentation (TopDownRandomFlip, TopDownHalfBodyTransform, TopDownGetRandomScaleRotation)
    flip_p: float = 0.5
    half_body_p: float = 0.3
    half_body_min: int = 8  # half-body only when more keypoints than this are visible
    scale_factor: float = 0.5  # scale = clip(N(1, sf), 1 - sf, 1 + sf), every sample
    rotation_factor: float = 40.0  # angle = clip(N(0, rf), -2 rf, 2 rf) ...
    rotation_p: float = 0.6  # ... applied with this probability, else 0
    # the official COCO dataset moves a box's centre once, when the training set is built (_xywh2cs):
    # with this probability, by up to +-jitter/2 of the box's width and height
    center_jitter_p: float = 0.3
    center_jitter: float = 0.4

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("betas", "decay_epochs"):
                value = _check_tuple(f.name, value)
            else:
                value = _check_number(f.name, value, int if f.type == "int" else float)
            setattr(self, f.name, value)
        for name, ok, rule in _RULES:
            if not ok(getattr(self, name)):
                raise InputError(f"recipe setting {name}={getattr(self, name)!r} is out of range: it must be {rule}")
        if self.decay_epochs and self.decay_epochs[-1] > self.epochs:
            raise InputError(f"decay_epochs {list(self.decay_epochs)} go past epochs={self.epochs}: "
                             "give decay epochs within the run, or keep the official 210 epochs and train a "
                             "shorter run: the schedule moves the decays to the same fractions of it")

    def to_dict(self) -> dict:
        """Plain types only (tuples as lists), ready for JSON and checkpoint metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """The inverse of `to_dict`; missing settings take the defaults, unknown ones are an error."""
        _check_names(d)
        return cls(**d)


def _names() -> list[str]:
    return [f.name for f in fields(Recipe)]


def _check_names(settings) -> None:
    unknown = [k for k in settings if k not in _names()]
    if unknown:
        raise InputError(f"unknown recipe setting(s) {', '.join(map(repr, unknown))}: "
                         f"valid ones are {', '.join(_names())}")


def _check_number(name, value, kind):
    # bool is an int to Python but never a meaningful setting here
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise InputError(f"recipe setting {name}={value!r} must be {'an integer' if kind is int else 'a number'}")
    return kind(value)


def _check_tuple(name, value):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InputError(f"recipe setting {name}={value!r} must be a list of numbers")
    kind = int if name == "decay_epochs" else float
    return tuple(_check_number(name, v, kind) for v in value)


_RULES = [
    ("lr", lambda v: v > 0, "> 0"),
    ("base_batch", lambda v: v >= 1, ">= 1"),
    ("betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("layer_decay", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("drop_path", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("clip_grad", lambda v: v > 0, "> 0"),
    ("epochs", lambda v: v >= 1, ">= 1"),
    ("decay_epochs", lambda v: list(v) == sorted(set(v)) and all(e >= 1 for e in v), "increasing epochs >= 1"),
    ("decay_factor", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("warmup_iters", lambda v: v >= 0, ">= 0"),
    ("warmup_ratio", lambda v: 0 < v <= 1, "in (0, 1] (as mmcv asserts)"),
    ("sigma", lambda v: v > 0, "> 0"),
    ("flip_p", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("half_body_p", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("half_body_min", lambda v: v >= 0, ">= 0"),
    ("scale_factor", lambda v: 0 <= v < 1, "in [0, 1) (the scale stays positive)"),
    ("rotation_factor", lambda v: v >= 0, ">= 0"),
    ("rotation_p", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("center_jitter_p", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("center_jitter", lambda v: 0 <= v <= 1, "in [0, 1]"),
]


def recipe_for(variant: str, **overrides) -> Recipe:
    """The official recipe of ViTPose-S/B/L/H ('s', 'b', 'l', 'h'), with any setting overridden.

    'custom' (a size no official config covers) gets ViTPose-B's recipe."""
    name = variant.lower() if isinstance(variant, str) else variant
    check_choice("ViTPose variant", name, [*OFFICIAL, "custom"])
    if name == "custom":
        log.info("no official recipe for a custom-size ViTPose: using ViTPose-B's (layer decay 0.75, drop path 0.3)")
        name = "b"
    _check_names(overrides)
    layer_decay, drop_path = OFFICIAL[name]
    return Recipe(**{"layer_decay": layer_decay, "drop_path": drop_path, **overrides})


def scaled_lr(recipe: Recipe, batch_size: int) -> float:
    """Linear scaling from the official batch: the lr for `batch_size` samples per optimizer step."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    return recipe.lr * batch_size / recipe.base_batch


def layer_id(name: str, depth: int) -> int:
    """The official layer of a parameter (get_num_layer_for_vit): embeddings 0, block i i+1, rest depth+1.

    The rest is the last norm and the heads: they train at the full lr."""
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed") \
            or name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.blocks."):
        block = int(name.split(".")[2])
        if block >= depth:
            raise InputError(f"parameter {name} is in block {block}, but the depth given is {depth}")
        return block + 1
    return depth + 1


def _unwrap(model):
    """The ViTPose inside DistributedDataParallel (.module) or torch.compile (._orig_mod), whose names
    carry no prefix: with one, no name would match and layer decay would silently vanish."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def _no_decay(name: str, param) -> bool:
    # The official rule (LayerDecayOptimizerConstructor.add_params): norms and BN are 1-D. The configs'
    # paramwise_cfg.custom_keys ('norm', 'relative_position_bias_table', ...) are never read by it.
    return param.ndim == 1 or name.endswith(".bias") or "pos_embed" in name


def param_groups(model, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups, one per (layer, decay or not), as the official optimizer constructor.

    Each group: 'params', 'lr' = lr * layer_decay ** (depth + 1 - layer), 'weight_decay' (0 for
    1-D parameters, biases and the position embedding), and 'lr_scale' and 'name' for logs. Frozen
    parameters (requires_grad False) are left out."""
    model = _unwrap(model)
    blocks = getattr(getattr(model, "backbone", None), "blocks", None)
    if blocks is None:
        raise InputError(f"layer-wise lr decay needs a ViTPose (model.backbone.blocks), got {type(model).__name__}")
    if not 0 < layer_decay <= 1:
        raise InputError(f"layer decay must be in (0, 1], got {layer_decay}")
    depth = len(blocks)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        kind = "no_decay" if _no_decay(name, param) else "decay"
        key = f"layer_{layer}_{kind}"
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[key] = {"params": [], "lr": lr * scale, "weight_decay": 0.0 if kind == "no_decay" else weight_decay,
                           "lr_scale": scale, "name": key}
        groups[key]["params"].append(param)
    if not groups:
        raise InputError("nothing to train: every parameter of the model is frozen (requires_grad False)")
    return list(groups.values())


def make_optimizer(model, recipe: Recipe, batch_size: int):
    """AdamW with the recipe's betas and weight decay, layer-wise lr decay, the lr scaled to `batch_size`."""
    torch = require("torch", "torch")
    lr = scaled_lr(recipe, batch_size)
    groups = param_groups(model, lr, recipe.weight_decay, recipe.layer_decay)
    # one fused kernel for all parameters where they all live on a GPU (the step's optimiser time drops)
    fused = all(p.is_cuda for group in groups for p in group["params"]) and bool(groups)
    return torch.optim.AdamW(groups, lr=lr, betas=recipe.betas, weight_decay=recipe.weight_decay, fused=fused or None)


class Schedule:
    """The lr factor per iteration: mmcv's linear warm-up, then step decay at the decay epochs.

    A run shorter than the official one (fewer epochs) keeps its shape: the decays move to the same
    fractions of the run (170/210, 200/210). Warm-up never takes more than a tenth of any run, so a
    fine-tune of a few hundred steps spends most of them learning; the official COCO run (about
    61,000 iterations) is far from that limit."""

    def __init__(self, recipe: Recipe, iters_per_epoch: int, epochs: int):
        for what, value in (("iterations per epoch", iters_per_epoch), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{what} must be a positive integer, got {value!r}")
        self.recipe, self.iters_per_epoch, self.epochs = recipe, iters_per_epoch, epochs
        self.total_iters = iters_per_epoch * epochs
        self.scaled = epochs < recipe.epochs
        if self.scaled:
            self.decay_iters = tuple(round(self.total_iters * e / recipe.epochs) for e in recipe.decay_epochs)
        else:  # mmcv decays by epoch: the first iteration of epoch e (counted from 0)
            self.decay_iters = tuple(e * iters_per_epoch for e in recipe.decay_epochs)
        self.warmup_iters = min(recipe.warmup_iters, self.total_iters // 10)

    def factor(self, iteration: int) -> float:
        """The lr at `iteration` (from 0) over the lr before scheduling."""
        if iteration < 0:
            raise InputError(f"iteration must be >= 0, got {iteration}")
        factor = self.recipe.decay_factor ** sum(iteration >= d for d in self.decay_iters)
        if iteration < self.warmup_iters:  # mmcv 'linear': from warmup_ratio to 1, scaling the regular lr
            factor *= 1 - (1 - iteration / self.warmup_iters) * (1 - self.recipe.warmup_ratio)
        return factor

    def describe(self) -> str:
        r = self.recipe
        warmup = f"linear warm-up over {self.warmup_iters} iterations from {r.warmup_ratio:g}x"
        if self.warmup_iters < r.warmup_iters:
            warmup += f" (the official {r.warmup_iters}, capped at 1/10 of this run)"
        head = f"lr schedule: {self.total_iters} iterations ({self.epochs} epochs x {self.iters_per_epoch}); {warmup}"
        if not self.decay_iters:
            return f"{head}; no step decay"
        decays = ", ".join(map(str, self.decay_iters))
        epochs = ", ".join(map(str, r.decay_epochs))
        why = (f"epochs {epochs} of the official {r.epochs}, moved to the same fractions of this "
               f"{self.epochs}-epoch run" if self.scaled else f"epochs {epochs}, as the official schedule")
        return f"{head}; x{r.decay_factor:g} at iterations {decays} ({why})"

    def apply(self, optimizer, iteration: int) -> float:
        """Set every group's lr for `iteration`; returns the lr before layer decay (the head's) now.

        Each group's unscheduled lr is kept as 'initial_lr' (as mmcv and torch schedulers do), which
        the optimizer's state dict saves, so a resumed run schedules from the right base."""
        factor = self.factor(iteration)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
        first = optimizer.param_groups[0]
        return first["initial_lr"] / first.get("lr_scale", 1.0) * factor


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic depth per block, rising linearly from 0 to `drop_path` (the official ViT's linspace)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InputError(f"depth must be a positive integer, got {depth!r}")
    if not 0 <= drop_path < 1:
        raise InputError(f"drop path must be in [0, 1), got {drop_path}")
    if depth == 1:
        return [0.0]
    return [drop_path * i / (depth - 1) for i in range(depth)]
