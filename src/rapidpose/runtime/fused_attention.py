"""Attention over ViTPose's short token sequences as one Triton kernel, on GPUs.

ViTPose-B sees 192 tokens (16x12 patches of a 256x192 crop). At that length scaled_dot_product_attention's
best backend, cuDNN's, takes 2.0 ms for the 12 blocks of a batch of 256 on an H200 (flash 2.8), from the
model's permuted views of the qkv product. The kernel here reads q, k and v straight from the qkv product's
(B, N, 3C) rows and writes the (B, N, C) rows that proj takes: each program keeps one block of 64 queries
of one head, walks the keys and values in blocks of 64 with the running-maximum softmax of flash attention
(float32 sums, the probabilities rounded to the input's dtype before the product with v, as flash
attention does), and divides once at the end: 1.39 ms for the 12 blocks (benchmarks/fp8_kernels.py
--parts attention), about 0.4 ms less a compiled fp8 batch of 256 in the model (docs/benchmarks.md).
Half precision only (in float32 tl.dot would round to TF32, where fp32 promises exact numbers). The swap is
the torch GPU runtime's (TorchRuntime), on its own copy of the model.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from rapidpose.model.vitpose import Attention

BLOCK_QUERIES, BLOCK_KEYS = 64, 64  # the fastest of 2 x 3 x 2 x 3 configurations on an H200, batch 64 and 256


def head_block(channels: int) -> int:
    """A head's channels padded to a power of two, 16 at least (tl.dot's smallest): ViTPose-H's 80 -> 128."""
    return max(16, 1 << max(0, channels - 1).bit_length())


@functools.cache
def register_triton_attention():
    """Registers `torch.ops.rapidpose.attention(qkv, heads)`: softmax(q k^T / sqrt(d)) v of every head, from
    the qkv product (B, N, 3C) as (B, N, C), one Triton kernel; returns its launcher `launch(qkv, heads,
    block_queries, block_keys, warps, stages, launcher)`, which benchmarks/fp8_kernels.py times. Registered
    when the attention is swapped on a GPU, so importing this module needs no Triton."""
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def attention_kernel(qkv_ptr, out_ptr, tokens, heads, width, CHANNELS: tl.constexpr,
                         SCALE_LOG2E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr):
        # one grid axis (the others stop at 65,535), a head's query blocks side by side: they share its keys in L2
        blocks = tl.cdiv(tokens, BLOCK_M)
        crop = tl.program_id(0) // (heads * blocks)
        head = tl.program_id(0) // blocks % heads
        first = tl.program_id(0) % blocks * BLOCK_M
        row = 3 * width  # q, k and v of a token side by side, each `heads` blocks of CHANNELS
        base = qkv_ptr + crop.to(tl.int64) * tokens * row + head * CHANNELS
        query = first + tl.arange(0, BLOCK_M)
        channel = tl.arange(0, BLOCK_D)
        in_head = channel[None, :] < CHANNELS
        q = tl.load(base + query[:, None] * row + channel[None, :], mask=(query[:, None] < tokens) & in_head,
                    other=0.0)
        largest = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        sums = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, tokens, BLOCK_N):
            key = start + tl.arange(0, BLOCK_N)
            inside = (key[:, None] < tokens) & in_head
            k = tl.load(base + width + key[:, None] * row + channel[None, :], mask=inside, other=0.0)
            # in log2 units: exp2 below is the softmax's exp (a constexpr: under torch.compile a float argument is fp64)
            logits = tl.dot(q, tl.trans(k)) * SCALE_LOG2E
            logits = tl.where(key[None, :] < tokens, logits, float("-inf"))
            new_largest = tl.maximum(largest, tl.max(logits, 1))
            p = tl.math.exp2(logits - new_largest[:, None])
            rescale = tl.math.exp2(largest - new_largest)  # the earlier blocks' sums, to the new maximum
            total = total * rescale + tl.sum(p, 1)
            v = tl.load(base + 2 * width + key[:, None] * row + channel[None, :], mask=inside, other=0.0)
            sums = sums * rescale[:, None] + tl.dot(p.to(v.dtype), v)
            largest = new_largest
        out = out_ptr + crop.to(tl.int64) * tokens * width + head * CHANNELS
        tl.store(out + query[:, None] * width + channel[None, :], (sums / total[:, None]).to(out_ptr.dtype.element_ty),
                 mask=(query[:, None] < tokens) & in_head)

    def launch(qkv, heads: int, block_queries=BLOCK_QUERIES, block_keys=BLOCK_KEYS, warps=4, stages=3,
               launcher=lambda kernel: kernel):
        crops, tokens, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        channels = width // heads
        out = torch.empty((crops, tokens, width), dtype=qkv.dtype, device=qkv.device)
        launcher(attention_kernel)[(crops * heads * triton.cdiv(tokens, block_queries),)](
            qkv, out, tokens, heads, width, CHANNELS=channels, SCALE_LOG2E=channels ** -0.5 * 1.4426950408889634,
            BLOCK_D=head_block(channels), BLOCK_M=block_queries, BLOCK_N=block_keys, num_warps=warps,
            num_stages=stages)
        return out

    @triton_op("rapidpose::attention", mutates_args={})
    def attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
        return launch(qkv, heads, launcher=wrap_triton)

    return launch


def attention_reference(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """What the kernel computes, with torch's scaled_dot_product_attention: (B, N, 3C) -> (B, N, C)."""
    b, n, three_c = qkv.shape
    c = three_c // 3
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)


class FusedAttention(nn.Module):
    """The model's Attention (the same qkv and proj layers, so the same state_dict) with the attention between
    them in the Triton kernel on GPUs in half precision, and as the model computes it elsewhere."""

    def __init__(self, attention: Attention):
        super().__init__()
        self.heads, self.qkv, self.proj = attention.heads, attention.qkv, attention.proj
        if attention.proj.weight.is_cuda:
            register_triton_attention()

    def forward(self, x):
        return self.attend(self.qkv(x))

    def attend(self, qkv):
        """The rest of the block's attention branch from the qkv product (B, N, 3C): proj of the attention."""
        if qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16):
            if not torch.compiler.is_compiling():
                register_triton_attention()  # once: a model swapped on the CPU and moved to a GPU
            return self.proj(torch.ops.rapidpose.attention(qkv.contiguous(), self.heads))
        return self.proj(attention_reference(qkv, self.heads))


def fuse_attention(model) -> int:
    """Every Attention of the model becomes a FusedAttention, in place; returns how many. For a runtime's own
    copy (the modules are shared with the copy's, not duplicated)."""
    owners = [(owner, name) for owner in model.modules() for name, child in owner.named_children()
              if type(child) is Attention]
    for owner, name in owners:
        setattr(owner, name, FusedAttention(getattr(owner, name)))
    return len(owners)
