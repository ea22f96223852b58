"""The ViT blocks' residual add + LayerNorm (+ FP8 row quantization under fp8) as one Triton kernel each.

With FP8 layers (float8.py) the input of qkv and of fc1 is a LayerNorm's output quantized per row, and the
LayerNorm's input is a residual sum: read x and the branch's output y, write x + y (the next residual), the
e4m3 rows and a float32 scale a row, in one pass that keeps several whole rows a program in registers. Under
torch.compile Inductor fuses these ops into one kernel a norm too, but leaves them between the blocks' other
kernels: on an H200 (benchmarks/fp8_kernels.py --parts norm swaps, docs/benchmarks.md) this kernel takes 0.077
against Inductor's 0.081 ms for a batch of 256 (49,152 rows x 768), and ViTPose-B compiled with CUDA graphs runs
a batch of 256 in 15.59 ms with it against 15.99 without (16,421 against 16,008 crops/s). In fp16/bf16 the same
kernel writes the norm in the model's dtype instead (no quantization): the runtime's default path, uncompiled,
otherwise runs each add and each LayerNorm as kernels of their own.

The add after a block's MLP belongs with the NEXT block's norm1, so the swap is the backbone's whole forward
(FusedNormViT, made by the torch GPU runtime on its own copy of the model): per block, (x, v, s) = x + the last
MLP's output with norm1 quantized (no add for the first block); qkv from (v, s); attention and proj as before;
(x, v, s) = x + the attention's output with norm2 quantized; fc1 from (v, s); fc2 as before (its GELU and
quantization in float8's row kernel). In half precision the same order with (x, norm) pairs and the model's own
attention and MLP; the last norm takes the last add in both.

Numerics, per row: s = x + y rounded to the rows' dtype (as torch stores it); LayerNorm of s in float32 (mean,
biased variance, rsqrt(var + eps), times weight plus bias) rounded to the rows' dtype, as the model's LayerNorm
writes it; then, under fp8, float8's row kernel on that row (its inverse scale in float32). Off GPUs the swapped
forward runs the unswapped model's torch ops, in the same order, so it gives the same numbers.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from rapidpose.model.vitpose import Attention, Block, Mlp, ViT
from rapidpose.runtime.float8 import FP8, FP8_MAX, TINY, Float8Linear, quantize_rows, rows_per_program
from rapidpose.runtime.fused_attention import FusedAttention, attention_reference


@functools.cache
def register_triton_norm():
    """Registers `torch.ops.rapidpose.add_norm_fp8(x, y, weight, bias, eps) -> (x + y, values, scales)` and
    `torch.ops.rapidpose.norm_fp8(x, weight, bias, eps) -> (values, scales)` (the first block's, no add), for
    (M, C) rows: e4m3 values (M, C) and float32 scales (M, 1) of the LayerNorm's output, one Triton kernel each;
    and, for fp16/bf16 models, `torch.ops.rapidpose.add_norm_half(x, y, weight, bias, eps) -> (x + y, norm)` with
    the LayerNorm's output in x's dtype. Returns the launcher `launch(x, y, weight, bias, eps, rows, warps,
    values_dtype, quantize, launcher)` (y None: no add; rows a program, default float8.rows_per_program;
    values_dtype float32 keeps the values before the e4m3 cast; quantize False: the norm in x's dtype, no
    scales), which benchmarks/fp8_kernels.py times. Registered when the backbone is swapped on a GPU, so
    importing this module needs no Triton."""
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def add_norm_kernel(x_ptr, y_ptr, weight_ptr, bias_ptr, sum_ptr, values_ptr, scales_ptr, rows, width,
                        EPS: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, ADD: tl.constexpr,
                        QUANT: tl.constexpr, LARGEST: tl.constexpr, SMALLEST: tl.constexpr):
        row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        inside = (row[:, None] < rows) & (cols[None, :] < width)
        offsets = row[:, None] * width + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
        if ADD:  # rounded to the rows' dtype, as torch stores x + y: the next block adds to that
            x = (x.to(tl.float32) + tl.load(y_ptr + offsets, mask=inside, other=0.0).to(tl.float32)).to(
                x_ptr.dtype.element_ty)
            tl.store(sum_ptr + offsets, x, mask=inside)
        x = x.to(tl.float32)
        mean = tl.sum(x, axis=1) / width
        centered = tl.where(inside, x - mean[:, None], 0.0)
        rstd = tl.math.rsqrt(tl.sum(centered * centered, axis=1) / width + EPS)  # torch's: biased variance
        weight = tl.load(weight_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
        # rounded to the rows' dtype: the model's bf16 LayerNorm output, which the row quantization takes
        h = (centered * rstd[:, None] * weight[None, :] + bias[None, :]).to(x_ptr.dtype.element_ty).to(tl.float32)
        h = tl.where(inside, h, 0.0)
        if QUANT:  # float8's rows_kernel from here on
            inverse = LARGEST / tl.maximum(tl.max(tl.abs(h), axis=1), SMALLEST)
            values = tl.clamp(h * inverse[:, None], -LARGEST, LARGEST)
            tl.store(values_ptr + offsets, values.to(values_ptr.dtype.element_ty), mask=inside)
            tl.store(scales_ptr + row, 1.0 / inverse, mask=row < rows)
        else:  # the norm's output as the model's LayerNorm writes it
            tl.store(values_ptr + offsets, h.to(values_ptr.dtype.element_ty), mask=inside)

    def launch(x, y, weight, bias, eps: float, rows: int | None = None, warps: int | None = None,
               values_dtype=FP8, quantize: bool = True, launcher=lambda kernel: kernel):
        count, width = x.shape
        rows = rows or rows_per_program(width)
        values = torch.empty((count, width), dtype=values_dtype if quantize else x.dtype, device=x.device)
        scales = torch.empty((count, 1), dtype=torch.float32, device=x.device) if quantize else None
        total = None if y is None else torch.empty_like(x)
        block = triton.next_power_of_2(width)
        # without the add, y and the sum are never touched (nor the scales without the quantization): `values`
        # stands in for them (no input looks written)
        launcher(add_norm_kernel)[(triton.cdiv(count, rows),)](
            x, values if y is None else y, weight, bias, values if y is None else total, values,
            values if scales is None else scales, count, width, EPS=eps, BLOCK=block, ROWS=rows, ADD=y is not None,
            QUANT=quantize, LARGEST=FP8_MAX, SMALLEST=TINY, num_warps=warps or (8 if block * rows >= 2048 else 4))
        outputs = (values, scales) if quantize else (values,)
        return outputs if y is None else (total, *outputs)

    @triton_op("rapidpose::add_norm_fp8", mutates_args={})
    def add_norm_fp8(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return launch(x, y, weight, bias, eps, launcher=wrap_triton)

    @triton_op("rapidpose::add_norm_half", mutates_args={})
    def add_norm_half(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return launch(x, y, weight, bias, eps, quantize=False, launcher=wrap_triton)

    @triton_op("rapidpose::norm_fp8", mutates_args={})
    def norm_fp8(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return launch(x, None, weight, bias, eps, launcher=wrap_triton)

    return launch


def add_norm_reference(x, y, weight, bias, eps: float):
    """What the unswapped model computes, in torch ops: (x + y, *quantize_rows(LayerNorm(x + y))); y None:
    (x, *quantize_rows(LayerNorm(x)))."""
    total = x if y is None else x + y
    return (total, *quantize_rows(F.layer_norm(total, (x.shape[-1],), weight, bias, eps)))


def add_norm(x, y, norm: nn.LayerNorm):
    """(x + y, e4m3 values, scales) of norm(x + y) for (M, C) rows (y None: x itself, no add): the ops on GPUs,
    add_norm_reference elsewhere."""
    if not x.is_cuda:
        return add_norm_reference(x, y, norm.weight, norm.bias, norm.eps)
    if not torch.compiler.is_compiling():
        register_triton_norm()  # once: a model swapped on the CPU and moved to a GPU
    if y is None:
        return (x, *torch.ops.rapidpose.norm_fp8(x.contiguous(), norm.weight, norm.bias, norm.eps))
    return torch.ops.rapidpose.add_norm_fp8(x.contiguous(), y.contiguous(), norm.weight, norm.bias, norm.eps)


def add_layer_norm(x, y, norm: nn.LayerNorm):
    """(x + y, norm(x + y)) for (M, C) rows, both in the rows' dtype (half precision: the fp16/bf16 blocks' norms,
    and every model's last norm): the op on GPUs, the model's torch ops elsewhere."""
    if not x.is_cuda:
        total = x + y
        return total, norm(total)
    if not torch.compiler.is_compiling():
        register_triton_norm()  # once: a model swapped on the CPU and moved to a GPU
    return torch.ops.rapidpose.add_norm_half(x.contiguous(), y.contiguous(), norm.weight, norm.bias, norm.eps)


def swap_kind(backbone) -> str | None:
    """How FusedNormViT can run this backbone: "fp8" where every block's qkv and fc1 are Float8Linear
    (float8.swap_linears: fp8, widths multiples of 16) and no MLP has experts (ViTPose++'s fc2 is joined with
    an expert's and stays on the existing path), "half" where none of them is (the fp16/bf16 runtime's), None
    otherwise. Either needs a plain ViT (not swapped yet) with the model's blocks and affine LayerNorms."""
    if type(backbone) is not ViT or not len(backbone.blocks):
        return None
    kinds = set()
    for block in backbone.blocks:
        if type(block) is not Block or type(block.attn) not in (Attention, FusedAttention) or type(block.mlp) is not Mlp:
            return None
        if any(norm.weight is None or norm.bias is None for norm in (block.norm1, block.norm2)):
            return None
        fp8 = [isinstance(layer, Float8Linear) for layer in (block.attn.qkv, block.mlp.fc1)]
        if all(fp8) and not hasattr(block.mlp, "experts"):
            kinds.add("fp8")
        elif not any(fp8):
            kinds.add("half")
        else:
            return None
    if backbone.last_norm.weight is None or backbone.last_norm.bias is None:
        return None
    return kinds.pop() if len(kinds) == 1 else None


class FusedNormViT(nn.Module):
    """The ViT backbone (the same modules, so the same state_dict) with each block's residual adds and norms as
    one kernel each (fp8: with the row quantization of qkv's and fc1's inputs, add_norm; half: add_layer_norm);
    for inference (no stochastic depth)."""

    def __init__(self, vit: ViT, kind: str):
        super().__init__()
        self.grid, self.fp8 = vit.grid, kind == "fp8"
        self.patch_embed, self.pos_embed, self.blocks, self.last_norm = (vit.patch_embed, vit.pos_embed, vit.blocks,
                                                                         vit.last_norm)
        if vit.pos_embed.is_cuda:
            register_triton_norm()

    def forward(self, x, dataset_index: int = 0):  # dataset_index picks an expert (half only: see swap_kind)
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]  # as ViT.forward
        crops, tokens, width = x.shape
        x = x.reshape(-1, width)  # (M, C) token rows from here on
        pending = None  # the last MLP's output: added to x with the next norm
        for block in self.blocks:
            if self.fp8:
                x, pending = self._fp8_block(block, x, pending, crops, tokens)
                continue
            # the first block's norm1 has no add: the model's LayerNorm, one kernel as it is
            x, h = (x, block.norm1(x)) if pending is None else add_layer_norm(x, pending, block.norm1)
            x, h = add_layer_norm(x, block.attn(h.reshape(crops, tokens, width)).reshape(-1, width), block.norm2)
            pending = block.mlp(h, dataset_index)
        x = add_layer_norm(x, pending, self.last_norm)[1].reshape(crops, tokens, width)
        return x.transpose(1, 2).reshape(crops, -1, *self.grid)

    @staticmethod
    def _fp8_block(block, x, pending, crops: int, tokens: int):
        """One block with FP8 qkv and fc1 from rows add_norm quantized: (the residual x, the MLP's output)."""
        width = x.shape[1]
        x, values, scales = add_norm(x, pending, block.norm1)
        qkv = block.attn.qkv.quantized(values, scales, x.dtype).reshape(crops, tokens, -1)
        if isinstance(block.attn, FusedAttention):
            out = block.attn.attend(qkv)
        else:  # Attention's own computation, from its qkv product
            out = block.attn.proj(attention_reference(qkv, block.attn.heads))
        x, values, scales = add_norm(x, out.reshape(-1, width), block.norm2)
        mlp = block.mlp
        return x, mlp.fc2(mlp.act(mlp.fc1.quantized(values, scales, x.dtype)))  # act: fc2's own GELU if swapped


def fuse_norms(model) -> int:
    """The ViTPose's backbone becomes a FusedNormViT, in place, where swap_kind finds a way (fp8: after
    float8.swap_linears; fused_attention's and fused_gelu's swaps before it or not); returns the blocks now
    running through its kernels (0: left as it was). For a runtime's own copy on its device and dtype: the
    modules are shared, not duplicated."""
    backbone = getattr(model, "backbone", None)
    kind = swap_kind(backbone)
    if kind is None:
        return 0
    model.backbone = FusedNormViT(backbone, kind)
    return len(backbone.blocks)
