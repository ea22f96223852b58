"""The ViTPose network in plain PyTorch: ViT backbone (+ ViTPose++ experts), classic or simple head.

Module and parameter names follow the official ViTPose checkpoints (`backbone.blocks.0.attn.qkv`,
`keypoint_head.deconv_layers.0`, ...), so an official state dict loads as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# (dim, depth, heads) of the published variants
VARIANTS = {"s": (384, 12, 12), "b": (768, 12, 12), "l": (1024, 24, 16), "h": (1280, 32, 16)}


@dataclass
class ViTPoseConfig:
    dim: int = 768
    depth: int = 12
    heads: int = 12
    num_keypoints: int = 17
    head: str = "classic"  # "classic" (2 deconvs + 1x1) or "simple" (ReLU, x4 bilinear, 3x3)
    grid: tuple[int, int] = (16, 12)  # patches (rows, cols) of a 256x192 input
    num_experts: int = 1  # ViTPose++: 6
    part_features: int = 0  # ViTPose++: width of each expert's slice of the MLP output
    associate_keypoints: tuple[int, ...] = field(default=())  # ViTPose++ extra heads, one per dataset > 0
    eps: float = 1e-6
    mlp_ratio: int = 4

    @property
    def input_size(self) -> tuple[int, int]:
        """Network input as (width, height)."""
        return self.grid[1] * 16, self.grid[0] * 16

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.grid[1] * 4, self.grid[0] * 4

    @property
    def variant(self) -> str:
        for name, (dim, depth, _) in VARIANTS.items():
            if (dim, depth) == (self.dim, self.depth):
                return name
        return "custom"

    @classmethod
    def from_variant(cls, name: str, **kwargs) -> "ViTPoseConfig":
        dim, depth, heads = VARIANTS[name]
        return cls(dim=dim, depth=depth, heads=heads, **kwargs)


class PatchEmbed(nn.Module):
    """16x16 patches (stride 16, padding 2, as the official code) -> tokens (N, L, dim).

    The weights stay those of the official Conv2d; the product runs as one matrix product over
    the unfolded patches, which is the same sum and, on GPUs, about 20x faster than the
    convolution kernels cuDNN picks for this stride-16 shape (1.9 ms of a 26 ms ViTPose-B batch).
    """

    def __init__(self, dim: int, patch: int = 16, padding: int = 2):
        super().__init__()
        self.patch, self.padding = patch, padding
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch, padding=padding)

    def forward(self, x):
        n, c, h, w = x.shape
        p, pad = self.patch, self.padding
        gh, gw = (h + 2 * pad - p) // p + 1, (w + 2 * pad - p) // p + 1
        x = F.pad(x, (pad, pad, pad, pad))[:, :, :gh * p, :gw * p]
        patches = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # fused kernel where the device has one
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2; with experts (ViTPose++) the last `part_features` outputs come from
    the expert of the chosen dataset instead of fc2."""

    def __init__(self, dim: int, hidden: int, num_experts: int = 1, part_features: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim - part_features if num_experts > 1 else dim)
        if num_experts > 1:
            self.experts = nn.ModuleList(nn.Linear(hidden, part_features) for _ in range(num_experts))

    def forward(self, x, dataset_index: int = 0):
        x = self.act(self.fc1(x))
        if not hasattr(self, "experts"):
            return self.fc2(x)
        expert = self.experts[dataset_index]
        # One matrix product for the shared and the expert part.
        weight = torch.cat([self.fc2.weight, expert.weight], 0)
        bias = torch.cat([self.fc2.bias, expert.bias], 0)
        return F.linear(x, weight, bias)


class Block(nn.Module):
    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = Mlp(cfg.dim, cfg.dim * cfg.mlp_ratio, cfg.num_experts, cfg.part_features)
        self.drop_path = 0.0  # stochastic depth while training (ViT.set_drop_path); never at inference

    def forward(self, x, dataset_index: int = 0):
        x = x + self._dropped(self.attn(self.norm1(x)))
        return x + self._dropped(self.mlp(self.norm2(x), dataset_index))

    def _dropped(self, branch):
        """Each sample's residual branch kept with probability 1 - drop_path and scaled to keep its mean."""
        if not self.training or self.drop_path == 0.0:
            return branch
        keep = 1.0 - self.drop_path
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)
        return branch * mask / keep


class ViT(nn.Module):
    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.grid = cfg.grid
        self.patch_embed = PatchEmbed(cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid[0] * cfg.grid[1] + 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.last_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 at the first block to `rate` at the last, as ViTPose
        trains (drop path 0.1 S, 0.3 B, 0.5 L, 0.55 H); it acts only in training mode."""
        for block, r in zip(self.blocks, torch.linspace(0, float(rate), len(self.blocks)).tolist()):
            block.drop_path = r

    def forward(self, x, dataset_index: int = 0):
        x = self.patch_embed(x)
        # The first row was the class token's; ViTPose adds it to every patch instead.
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x, dataset_index)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)


class ClassicHead(nn.Module):
    def __init__(self, dim: int, num_keypoints: int, channels: int = 256):
        super().__init__()
        self.deconv_layers = nn.Sequential(
            nn.ConvTranspose2d(dim, channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.final_layer = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, x):
        return self.final_layer(self.deconv_layers(x))


class SimpleHead(nn.Module):
    def __init__(self, dim: int, num_keypoints: int):
        super().__init__()
        self.final_layer = nn.Conv2d(dim, num_keypoints, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(F.relu(x), scale_factor=4, mode="bilinear", align_corners=False)
        return self.final_layer(x)


def _make_head(cfg: ViTPoseConfig, num_keypoints: int) -> nn.Module:
    if cfg.head == "simple":
        return SimpleHead(cfg.dim, num_keypoints)
    return ClassicHead(cfg.dim, num_keypoints)


class ViTPose(nn.Module):
    """Normalised crops (N, 3, 256, 192) -> heatmaps (N, K, 64, 48).

    ViTPose++ checkpoints hold one expert and one head per training dataset; `dataset_index`
    (0 = COCO) picks both, per call or by default through the `dataset_index` attribute.
    """

    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.cfg = cfg
        self.dataset_index = 0
        self.backbone = ViT(cfg)
        self.keypoint_head = _make_head(cfg, cfg.num_keypoints)
        if cfg.associate_keypoints:
            self.associate_keypoint_heads = nn.ModuleList(_make_head(cfg, k) for k in cfg.associate_keypoints)

    @property
    def num_datasets(self) -> int:
        """The datasets it predicts keypoints for: one per expert that has its own head. A ViTPose++ file
        with every expert but only the COCO head (Hugging Face's conversions) predicts for COCO alone:
        another expert read out by COCO's head gives no dataset's keypoints."""
        if self.cfg.num_experts > 1 and self.cfg.associate_keypoints:
            return min(self.cfg.num_experts, 1 + len(self.cfg.associate_keypoints))
        return 1

    def num_keypoints_of(self, dataset_index: int) -> int:
        if dataset_index > 0 and self.cfg.associate_keypoints:
            return self.cfg.associate_keypoints[dataset_index - 1]
        return self.cfg.num_keypoints

    def forward(self, x, dataset_index: int | None = None):
        index = self.dataset_index if dataset_index is None else int(dataset_index)
        if not 0 <= index < self.num_datasets:
            only_coco = (f" (it holds {self.cfg.num_experts} experts but only the COCO head)"
                         if self.cfg.num_experts > self.num_datasets else "")
            raise ValueError(f"dataset_index {index} is out of range: this model predicts for {self.num_datasets} "
                             f"dataset(s){only_coco}, so use 0..{self.num_datasets - 1}")
        features = self.backbone(x, index)
        if index > 0 and self.cfg.associate_keypoints:
            return self.associate_keypoint_heads[index - 1](features)
        return self.keypoint_head(features)


def init_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with realistic spread, BN statistics included, for any ViTPose implementation
    (tests and benchmarks only; never a result)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or "pos" in name:  # matrices and position embeddings
                fan_in = p[0].numel() if p.dim() > 1 else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # norms
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model.eval()
