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
with the LayerNorm before them; it would make fc2's a two-pass loop over the row (0.84 ms). On GPUs with Triton
the torch runtime hands qkv and fc1 rows quantized by fused_norm's kernel instead (residual add, LayerNorm and
quantization in one; Float8Linear.quantized). Figures: benchmarks/fp8_kernels.py, docs/benchmarks.md.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import nn
from torch.nn import functional as F

from rapidpose.errors import InputError

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
def register_triton_rows():
    """Registers the custom op `torch.ops.rapidpose.fp8_rows(x, gelu)`: quantize_rows of x (or of GELU(x), in
    GELU_FORM) in one Triton kernel, and returns its launcher `launch(x, gelu_mode, rows, launcher,
    values_dtype)` (gelu_mode 0 none, 1 exact, 2 tanh form by exp, 3 tanh form by tanh.approx; rows a program;
    values_dtype float32 keeps the values before the e4m3 cast), which benchmarks/fp8_kernels.py compares.
    Registered when a layer is made on a GPU, so importing this module needs no Triton (CPUs have none), and
    called as a torch op, which torch.compile traces whole."""
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def rows_kernel(x_ptr, values_ptr, scales_ptr, rows, width, stride, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                    GELU: tl.constexpr, LARGEST: tl.constexpr, SMALLEST: tl.constexpr):
        row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        inside = (row[:, None] < rows) & (cols[None, :] < width)
        x = tl.load(x_ptr + row[:, None] * stride + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        if GELU == 1:  # nn.GELU's exact form
            x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        elif GELU == 2:  # its tanh form, as x * sigmoid(2u): one exponential, no erf
            x = x / (1.0 + tl.exp(-x * (1.5957691216057308 + 0.07135481627260025 * x * x)))
        elif GELU == 3:  # its tanh form with the GPU's one-instruction tanh (relative error 2^-11)
            u = x * (0.7978845608028654 + 0.035677408136300125 * x * x)
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True,
                                          pack=1)
            x = 0.5 * x * (1.0 + t)
        inverse = LARGEST / tl.maximum(tl.max(tl.abs(x), axis=1), SMALLEST)
        values = tl.clamp(x * inverse[:, None], -LARGEST, LARGEST)
        tl.store(values_ptr + row[:, None] * width + cols[None, :], values.to(values_ptr.dtype.element_ty),
                 mask=inside)
        tl.store(scales_ptr + row, 1.0 / inverse, mask=row < rows)

    def launch(x, gelu_mode: int, rows: int, launcher=lambda kernel: kernel, values_dtype=FP8):
        count, width = x.shape
        values = torch.empty((count, width), dtype=values_dtype, device=x.device)
        scales = torch.empty((count, 1), dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(width)
        launcher(rows_kernel)[(triton.cdiv(count, rows),)](
            x, values, scales, count, width, x.stride(0), BLOCK=block, ROWS=rows, GELU=gelu_mode,
            LARGEST=FP8_MAX, SMALLEST=TINY, num_warps=8 if block * rows >= 2048 else 4)
        return values, scales

    @triton_op("rapidpose::fp8_rows", mutates_args={})
    def fp8_rows(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mode = GELU_KERNEL_MODES[GELU_FORM] if gelu else 0
        return launch(x, mode, rows_per_program(x.shape[1]), wrap_triton)

    return launch


def quantize_activations(x, gelu: bool = False, after_norm: bool = False):
    """quantize_rows of the (M, K) activations x, or of GELU(x): in the Triton kernel on GPUs, except a
    LayerNorm's output (after_norm) under torch.compile, whose quantization Inductor fuses with the norm."""
    if x.is_cuda and not (after_norm and torch.compiler.is_compiling()):
        if not torch.compiler.is_compiling():
            register_triton_rows()  # once: a layer made on the CPU and moved to a GPU
        return torch.ops.rapidpose.fp8_rows(x.contiguous(), gelu)
    return quantize_rows(F.gelu(x, approximate=GELU_FORM) if gelu else x)


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
        return self.quantized(values, scale, x.dtype).reshape(*x.shape[:-1], self.out_features)

    def quantized(self, values, scale, dtype=torch.bfloat16):
        """The product of input rows already quantized (e4m3 values (M, in), float32 scales (M, 1), as
        quantize_rows gives them): (M, out) in dtype. fused_norm's backbone hands it a LayerNorm's rows."""
        y = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias,
                             out_dtype=torch.bfloat16, use_fast_accum=self.fast_accumulation)
        return y.to(dtype)

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
    return swapped


WORKSPACE_VARIABLE = "CUBLASLT_WORKSPACE_SIZE"  # torch's cuBLASLt workspace, KiB (default 1,024)


def prefer_memset_free_products() -> None:
    """Asks torch for no cuBLASLt workspace, unless the user set one (WORKSPACE_VARIABLE).

    Given a workspace, cuBLASLt picks FP8 kernels that clear it before each product: one memset a product,
    48 a ViTPose-B forward, each a node of its CUDA graph. Without one it picks statically scheduled kernels
    of the same tiles that run as fast and clear nothing: on an H200 ViTPose-B's fp8 batch of 64 takes 4.07
    instead of 4.17 ms (network_speed.py, docs/benchmarks.md). torch 2.11 reads the variable at every product;
    later versions once, at the first: call this before any (torch 2.13's torch.backends.cuda.
    cublaslt_workspace_size would set it later too, but no GPU here has run it). It is the process's: its
    other cuBLASLt products (an fp16 runtime's) run without a workspace too."""
    os.environ.setdefault(WORKSPACE_VARIABLE, "0")


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
    if importlib.util.find_spec("triton") is None:
        raise InputError("precision 'fp8' quantizes activations with Triton kernels and this torch install has no "
                         "Triton: pip install triton (on Windows triton-windows), or use precision fp16")
    try:  # the same kind of product as the layers', so a build without it is told here, not mid-batch
        Float8Linear(nn.Linear(16, 16).to(device))(torch.ones(16, 16, device=device, dtype=torch.bfloat16))
        torch.cuda.synchronize(device)
    except RuntimeError as exc:
        raise InputError(f"this torch build ({torch.__version__}) cannot run row-scaled FP8 matrix products on "
                         f"{name} ({str(exc).splitlines()[0]}): use precision fp16 or bf16, or a newer CUDA "
                         f"build of torch") from None
