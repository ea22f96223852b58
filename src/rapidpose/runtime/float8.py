"""FP8 linear layers for the torch backend's `precision="fp8"`, and the swap that installs them.

Each of the ViT blocks' Linear layers (qkv, proj, fc1, fc2) becomes one `torch._scaled_mm`: both operands
in FP8 e4m3, scaled per row (the weights once per output channel, the activations per token row as they
come), accumulated by the tensor cores, bf16 out with the bias added in the same kernel. Calibration-free:
every scale is its row's absolute maximum over e4m3's largest value (448), so nothing clips and no data is
needed beforehand. The patch embedding, the head, LayerNorm and attention stay in bf16.

A per-row activation scale needs the whole row before any of it is cast. On GPUs one Triton kernel
reads each row once, takes its maximum in registers and writes the e4m3 values and the scale; fc2's kernel
also applies the GELU before it (the MLP's own GELU is taken out), so the widest activation (4x the width)
is never written in bf16. That GELU is the tanh form, computed with the GPU's one-instruction tanh: within
5e-4 of the exact erf form, far below e4m3's own steps (1/16 of a value), and 2.3x cheaper (0.13 against
0.30 ms for a batch of 256 on an H200, where reading and writing the row alone take 0.11). Under
torch.compile (--compile) the inputs of qkv and fc1 are left to Inductor, which fuses their quantization
with the LayerNorm before them; it would make fc2's a two-pass loop over the row (0.84 ms). Figures:
benchmarks/fp8_kernels.py, docs/benchmarks.md.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from rapidpose.errors import InputError
from rapidpose.model.vitpose import ViT

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
TINY = 1e-12  # an all-zero row keeps a finite scale
LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # in each of the backbone's blocks
AFTER_NORM = ("qkv", "fc1")  # the layers whose input is a LayerNorm's output (norm1's, norm2's)
NEEDS = "an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 or more: H100, H200, L40, L4, RTX 40xx)"


def quantize_rows(x):
    """(M, K) bf16 or float32 -> (its e4m3 values, float32 (M, 1) scales), x ~ values * scales.

    The product by the inverse scale runs in x's own dtype: no float32 copy of the activations."""
    amax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).float()
    inverse = (FP8_MAX / amax.clamp(min=TINY)).to(x.dtype)
    # the clamp: the rounded inverse may overshoot 448 a little, and torch does not promise a saturating cast;
    # the scale handed to the product is the inverse actually used, rounding included
    return (x * inverse).clamp(-FP8_MAX, FP8_MAX).to(FP8), inverse.float().reciprocal()


GELU_FORM = "tanh"  # fp8's fc2 takes the MLP's GELU in this form (F.gelu's `approximate`): see quantize_activations
GELU_KERNEL_MODES = {"none": 1, "tanh": 3}  # F.gelu's `approximate` -> the row kernel's GELU mode (0: no GELU)


def rows_per_program(width: int) -> int:
    """Rows the row kernel quantizes in one program: about 4,096 values each (one 3,072-wide row, eight
    768-wide ones), enough work a program to hide memory latency without spilling registers."""
    return max(1, min(16, 4096 // _next_power_of_2(width)))


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@functools.cache
def register_triton_rows() -> None:
    """Registers the custom ops `torch.ops.rapidpose.fp8_rows(x, gelu)` (quantize_rows of x, or of GELU(x) in
    GELU_FORM), `fp8_norm_rows(x, weight, bias, eps)` (of LayerNorm(x)) and `fp8_add_norm_rows(x, branch,
    weight, bias, eps)` (x + branch, and the rows of LayerNorm of that sum), each one Triton kernel
    (float8_kernels). Registered when a layer is made on a GPU, so importing this module needs no Triton
    (CPUs have none), and called as torch ops, which torch.compile traces whole."""
    from torch.library import triton_op, wrap_triton

    from rapidpose.runtime.float8_kernels import launch_norm, launch_rows

    @triton_op("rapidpose::fp8_rows", mutates_args={})
    def fp8_rows(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mode = GELU_KERNEL_MODES[GELU_FORM] if gelu else 0
        return launch_rows(x, mode, rows_per_program(x.shape[1]), FP8_MAX, TINY, wrap_triton)

    @triton_op("rapidpose::fp8_norm_rows", mutates_args={})
    def fp8_norm_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        _, values, scales = launch_norm(x, None, weight, bias, eps, rows_per_program(x.shape[1]), FP8_MAX, TINY,
                                        wrap_triton)
        return values, scales

    @triton_op("rapidpose::fp8_add_norm_rows", mutates_args={})
    def fp8_add_norm_rows(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return launch_norm(x, branch, weight, bias, eps, rows_per_program(x.shape[1]), FP8_MAX, TINY, wrap_triton)


def quantize_activations(x, gelu: bool = False, after_norm: bool = False):
    """quantize_rows of the (M, K) activations x, or of GELU(x): in the Triton kernel on GPUs, except a
    LayerNorm's output (after_norm) under torch.compile, whose quantization Inductor fuses with the norm."""
    if x.is_cuda and not (after_norm and torch.compiler.is_compiling()):
        if not torch.compiler.is_compiling():
            register_triton_rows()  # once: a layer made on the CPU and moved to a GPU
        return torch.ops.rapidpose.fp8_rows(x.contiguous(), gelu)
    return quantize_rows(F.gelu(x, approximate=GELU_FORM) if gelu else x)


def norm_activations(norm: nn.LayerNorm, x, branch=None):
    """The residual stream x (+ branch) and the quantize_rows of LayerNorm(it), as (stream, values, scales):
    on GPUs one Triton kernel reads x and the branch once, writes their sum and the e4m3 rows, where
    torch.compile's version took 0.10 ms a block's norm for a batch of 256 (docs/benchmarks.md)."""
    width = x.shape[-1]
    if x.is_cuda:
        if not torch.compiler.is_compiling():
            register_triton_rows()
        flat = x.reshape(-1, width).contiguous()
        if branch is None:
            values, scales = torch.ops.rapidpose.fp8_norm_rows(flat, norm.weight, norm.bias, norm.eps)
            return x, values, scales
        total, values, scales = torch.ops.rapidpose.fp8_add_norm_rows(
            flat, branch.reshape(-1, width).contiguous(), norm.weight, norm.bias, norm.eps)
        return total.reshape(x.shape), values, scales
    total = x if branch is None else x + branch
    normed = F.layer_norm(total.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
    return (total, *quantize_rows(normed.reshape(-1, width)))


class Float8Linear(nn.Module):
    """A Linear layer as an FP8 matrix product, out in the input's dtype (bf16 on GPUs); with gelu_first, of
    GELU(input) (the GELU is applied as the input is quantized).

    Made from a float nn.Linear (`Float8Linear(linear)`) for inference only; it holds e4m3 weights and
    their float32 scales, so `.to(dtype)` would spoil it (`.to(device)` is fine): cast the float model,
    then swap."""

    def __init__(self, linear: nn.Linear, gelu_first: bool = False, after_norm: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.gelu_first = gelu_first
        self.after_norm = after_norm  # its input is a LayerNorm's output (see quantize_activations)
        # Hopper's full FP8 rate (H200, M = 49,152: qkv 1,071 against 902 TFLOP/s), but its accumulators
        # are not promoted to float32 along K: less exact over fc2's 3,072 (gpu_precision.py compares)
        self.fast_accumulation = True
        if linear.weight.is_cuda:
            register_triton_rows()
        weight, scale = quantize_rows(linear.weight.detach().float())
        self.register_buffer("weight", weight)  # (out, in) row-major: its .t() is the column-major operand
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, out): one scale per output channel
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x):
        values, scale = quantize_activations(x.reshape(-1, self.in_features), self.gelu_first, self.after_norm)
        # in the input's dtype: a drop-in beside float layers (on GPUs the model is bf16 already: no cast)
        return self.product(values, scale, x.shape[:-1]).to(x.dtype)

    def product(self, values, scale, leading_shape):
        """The layer's bf16 output, shaped (*leading_shape, out_features), from its input's e4m3 rows."""
        y = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias,
                             out_dtype=torch.bfloat16, use_fast_accum=self.fast_accumulation)
        return y.reshape(*leading_shape, self.out_features)

    def extra_repr(self) -> str:
        gelu = ", GELU on its input" if self.gelu_first else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row-scaled{gelu}"


def swap_linears(model) -> list[str]:
    """Replace the Linear layers of a ViTPose's blocks (LAYERS) by Float8Linear, in place; returns their
    names. fc2 takes over its MLP's GELU (the MLP's act becomes an Identity). Cast the model to bf16 on its
    device first."""
    swapped = []
    for i, block in enumerate(model.backbone.blocks):
        for path in LAYERS:
            owner_path, name = path.rsplit(".", 1)
            owner = block.get_submodule(owner_path)
            layer = getattr(owner, name)
            if name == "fc2" and hasattr(owner, "experts"):
                continue  # ViTPose++: fc2's weight is read and joined with an expert's, not called: stays bf16
            if layer.in_features % 16 or layer.out_features % 16:
                continue  # _scaled_mm takes sizes in multiples of 16 only (every published ViTPose has them)
            gelu_first = name == "fc2" and isinstance(owner.act, nn.GELU) and owner.act.approximate == "none"
            setattr(owner, name, Float8Linear(layer, gelu_first, after_norm=name in AFTER_NORM))
            if gelu_first:
                owner.act = nn.Identity()
            swapped.append(f"backbone.blocks.{i}.{path}")
    if all(isinstance(block.get_submodule(path), Float8Linear) for block in model.backbone.blocks
           for path in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")):  # every product in FP8: the norms join in
        model.backbone.__class__ = Float8ViT
    return swapped


class Float8ViT(ViT):
    """The backbone once every block's products are FP8 (swap_linears sets it as the class of the model's own
    backbone: the same modules and weights). Each residual add, the LayerNorm after it and the quantization of
    that norm's output for the next product are one pass (norm_activations), across the blocks' borders too:
    the stream is read and written once a norm, the normed rows never written in bf16."""

    def run_blocks(self, x, dataset_index: int = 0):
        leading = x.shape[:-1]
        x, values, scales = norm_activations(self.blocks[0].norm1, x)
        for i, block in enumerate(self.blocks):
            attended = block.attn.attend(block.attn.qkv.product(values, scales, leading))
            x, values, scales = norm_activations(block.norm2, x, attended)
            branch = block.mlp.fc2(block.mlp.fc1.product(values, scales, leading))  # fc2 applies the GELU
            if i + 1 < len(self.blocks):
                x, values, scales = norm_activations(self.blocks[i + 1].norm1, x, branch)
            else:
                x = x + branch
        return x


def check_device(device: str) -> None:
    """An InputError unless `device` runs the row-scaled FP8 products Float8Linear makes."""
    if not device.startswith("cuda"):
        raise InputError(f"precision 'fp8' needs {NEEDS}; the device here is '{device}': use precision bf16 "
                         f"or fp32 on the CPU")
    name = torch.cuda.get_device_name(device)
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise InputError(f"precision 'fp8' needs {NEEDS}; {name} has compute capability {major}.{minor}: "
                         f"use precision fp16 or bf16 on it")
    try:  # the same kind of product as the layers', so a build without it is told here, not mid-batch
        Float8Linear(nn.Linear(16, 16).to(device))(torch.ones(16, 16, device=device, dtype=torch.bfloat16))
        torch.cuda.synchronize(device)
    except RuntimeError as exc:
        raise InputError(f"this torch build ({torch.__version__}) cannot run row-scaled FP8 matrix products on "
                         f"{name} ({str(exc).splitlines()[0]}): use precision fp16 or bf16, or a newer CUDA "
                         f"build of torch") from None
