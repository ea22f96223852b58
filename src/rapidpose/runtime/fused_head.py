"""The classic head's last BatchNorm, ReLU and 1x1 convolution as one pass over its maps, on GPUs.

ViTPose's classic head ends: deconvolution -> BatchNorm -> ReLU -> 1x1 convolution to the keypoints. On a
GPU the deconvolution writes 256 channels at 64x48 a crop (403 MB for a batch of 256 in bf16); Inductor's
BatchNorm + ReLU reads and writes them again (0.29 ms on an H200) and the convolution reads them a third
time (0.11 ms, docs/benchmarks.md). One Triton kernel reads them once: each program takes a block of
pixels, applies the BatchNorm (folded into a scale and a shift a channel) and the ReLU in registers and
multiplies by the 1x1 weights on the tensor cores, float32 sums as cuDNN's. The swap is the torch GPU
runtime's (TorchRuntime), on its own copy of the model.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from rapidpose.model.vitpose import ClassicHead

BLOCK_PIXELS, BLOCK_CHANNELS = 128, 64


def keypoint_block(keypoints: int) -> int:
    """Output columns a program computes: the keypoints padded to a power of two, 16 at least (tl.dot's
    smallest)."""
    return max(16, 1 << max(0, keypoints - 1).bit_length())


@functools.cache
def register_triton_head():
    """Registers `torch.ops.rapidpose.norm_relu_pointwise(x, scale, shift, weight, bias)`: the 1x1
    convolution of ReLU(x * scale + shift) for channels-last x (N, C, H, W), as (N, H, W, K), one Triton
    kernel; returns its launcher `launch(x, scale, shift, weight, bias, launcher)`. Registered when the head
    is swapped on a GPU, so importing this module needs no Triton."""
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def head_kernel(x_ptr, scale_ptr, shift_ptr, weight_ptr, bias_ptr, out_ptr, pixels, keypoints,
                    CHANNELS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
        pixel = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        column = tl.arange(0, BLOCK_K)
        inside = pixel[:, None] < pixels
        sums = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
        for start in range(0, CHANNELS, BLOCK_C):
            channel = start + tl.arange(0, BLOCK_C)
            x = tl.load(x_ptr + pixel[:, None] * CHANNELS + channel[None, :], mask=inside, other=0.0)
            y = x.to(tl.float32) * tl.load(scale_ptr + channel)[None, :] + tl.load(shift_ptr + channel)[None, :]
            weight = tl.load(weight_ptr + channel[:, None] * BLOCK_K + column[None, :])
            # rounded to the maps' dtype before the product, as the separate BatchNorm + ReLU writes them
            sums += tl.dot(tl.maximum(y, 0.0).to(weight.dtype), weight)
        sums += tl.load(bias_ptr + column, mask=column < keypoints, other=0.0)[None, :]
        tl.store(out_ptr + pixel[:, None] * keypoints + column[None, :], sums.to(out_ptr.dtype.element_ty),
                 mask=inside & (column[None, :] < keypoints))

    def launch(x, scale, shift, weight, bias, launcher=lambda kernel: kernel):
        n, channels, h, w = x.shape
        keypoints = bias.shape[0]
        out = torch.empty((n, h, w, keypoints), dtype=x.dtype, device=x.device)
        pixels = n * h * w
        launcher(head_kernel)[(triton.cdiv(pixels, BLOCK_PIXELS),)](
            x, scale, shift, weight, bias, out, pixels, keypoints, CHANNELS=channels, BLOCK_P=BLOCK_PIXELS,
            BLOCK_C=BLOCK_CHANNELS, BLOCK_K=weight.shape[1], num_warps=4)
        return out

    @triton_op("rapidpose::norm_relu_pointwise", mutates_args={})
    def norm_relu_pointwise(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor) -> torch.Tensor:
        return launch(x, scale, shift, weight, bias, wrap_triton)

    return launch


class NormReluPointwise(nn.Module):
    """BatchNorm2d (inference) -> ReLU -> 1x1 Conv2d as one module: one Triton kernel on GPUs, the three
    torch ops elsewhere. Made from the trained modules; holds the BatchNorm as float32 scale and shift."""

    def __init__(self, norm: nn.BatchNorm2d, conv: nn.Conv2d):
        super().__init__()
        scale = norm.weight.detach().float() / torch.sqrt(norm.running_var.float() + norm.eps)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", norm.bias.detach().float() - norm.running_mean.float() * scale)
        keypoints, channels = conv.out_channels, conv.in_channels
        weight = conv.weight.detach().reshape(keypoints, channels)
        padded = weight.new_zeros(channels, keypoint_block(keypoints))
        padded[:, :keypoints] = weight.t()
        self.register_buffer("weight", padded)  # (C, K padded): the kernel's right operand, in the model's dtype
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(keypoints)
        self.register_buffer("bias", bias.float())
        self.keypoints = keypoints
        if norm.weight.is_cuda:
            register_triton_head()

    def forward(self, x):
        channels = x.shape[1]
        # half precision only: in float32 tl.dot would round to TF32, where fp32 promises the exact numbers
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and channels % BLOCK_CHANNELS == 0:
            if not torch.compiler.is_compiling():
                register_triton_head()  # once: a head swapped on the CPU and moved to a GPU
            out = torch.ops.rapidpose.norm_relu_pointwise(x.contiguous(memory_format=torch.channels_last),
                                                          self.scale, self.shift, self.weight, self.bias)
            return out.permute(0, 3, 1, 2)  # (N, K, H, W), channels-last in memory as cuDNN's output
        y = F.relu(x * self.scale.to(x.dtype)[:, None, None] + self.shift.to(x.dtype)[:, None, None])
        weight = self.weight[:, :self.keypoints].t().reshape(self.keypoints, channels, 1, 1)
        return F.conv2d(y, weight.to(x.dtype), self.bias.to(x.dtype))


def fuse_classic_heads(model) -> int:
    """In each of the model's classic heads, the last BatchNorm + ReLU + the 1x1 convolution become one
    NormReluPointwise (the BatchNorm and ReLU modules become Identity); returns how many heads. In place:
    for a runtime's own copy, cast to its dtype and device first."""
    fused = 0
    for head in model.modules():
        if not isinstance(head, ClassicHead):
            continue
        layers = head.deconv_layers
        if not (isinstance(layers[-2], nn.BatchNorm2d) and isinstance(layers[-1], nn.ReLU)):
            continue  # already fused
        head.final_layer = NormReluPointwise(layers[-2], head.final_layer)
        layers[-2], layers[-1] = nn.Identity(), nn.Identity()
        fused += 1
    return fused
