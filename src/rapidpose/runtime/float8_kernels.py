"""The Triton kernels of precision fp8 (rapidpose.runtime.float8, which registers them as torch ops): an
activation's rows to e4m3 values and a scale a row, read once, with the GELU before it or the residual add
and LayerNorm before it folded in. Imported only on GPUs: Triton is part of CUDA builds of torch."""
import torch
import triton
import triton.language as tl

FP8 = torch.float8_e4m3fn


@triton.jit
def _store_rows(x, row, cols, inside, rows, width, values_ptr, scales_ptr, LARGEST: tl.constexpr,
                SMALLEST: tl.constexpr):
    """Each row of float32 x as e4m3 values over its absolute maximum, and that row's scale."""
    inverse = LARGEST / tl.maximum(tl.max(tl.where(inside, tl.abs(x), 0.0), axis=1), SMALLEST)
    values = tl.clamp(x * inverse[:, None], -LARGEST, LARGEST)
    tl.store(values_ptr + row[:, None] * width + cols[None, :], values.to(values_ptr.dtype.element_ty), mask=inside)
    tl.store(scales_ptr + row, 1.0 / inverse, mask=row < rows)


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
    _store_rows(x, row, cols, inside, rows, width, values_ptr, scales_ptr, LARGEST, SMALLEST)


@triton.jit
def norm_kernel(x_ptr, branch_ptr, total_ptr, weight_ptr, bias_ptr, values_ptr, scales_ptr, rows, width, eps,
                BLOCK: tl.constexpr, ROWS: tl.constexpr, ADD: tl.constexpr, LARGEST: tl.constexpr,
                SMALLEST: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    inside = (row[:, None] < rows) & (cols[None, :] < width)
    at = row[:, None] * width + cols[None, :]
    x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    if ADD:  # the residual add as torch's (float32, rounded to the stream's dtype), kept for the next add
        total = (x + tl.load(branch_ptr + at, mask=inside, other=0.0).to(tl.float32)).to(total_ptr.dtype.element_ty)
        tl.store(total_ptr + at, total, mask=inside)
        x = total.to(tl.float32)
    mean = tl.sum(x, axis=1) / width
    centred = tl.where(inside, x - mean[:, None], 0.0)
    deviation = tl.rsqrt(tl.sum(centred * centred, axis=1) / width + eps)
    weight = tl.load(weight_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
    y = centred * deviation[:, None] * weight[None, :] + bias[None, :]
    _store_rows(y, row, cols, inside, rows, width, values_ptr, scales_ptr, LARGEST, SMALLEST)


def _outputs(x):
    count, width = x.shape
    return (torch.empty((count, width), dtype=FP8, device=x.device),
            torch.empty((count, 1), dtype=torch.float32, device=x.device))


def _warps(block: int, rows: int) -> int:
    return 8 if block * rows >= 2048 else 4


def launch_rows(x, gelu_mode: int, rows: int, largest: float, smallest: float, launcher=lambda kernel: kernel):
    """(M, K) x (gelu_mode 0), or its GELU (1 exact, 2 tanh form by exp, 3 by tanh.approx), as e4m3 rows
    scaled to `largest` (a floor of `smallest` on a row's maximum) and their (M, 1) float32 scales; `rows` rows
    a program. launcher: torch.library.wrap_triton inside a torch op."""
    values, scales = _outputs(x)
    block = triton.next_power_of_2(x.shape[1])
    launcher(rows_kernel)[(triton.cdiv(len(x), rows),)](
        x, values, scales, len(x), x.shape[1], x.stride(0), BLOCK=block, ROWS=rows, GELU=gelu_mode,
        LARGEST=largest, SMALLEST=smallest, num_warps=_warps(block, rows))
    return values, scales


def launch_norm(x, branch, weight, bias, eps: float, rows: int, largest: float, smallest: float,
                launcher=lambda kernel: kernel):
    """(x + branch, and the e4m3 rows and scales of its LayerNorm, as launch_rows); without a branch, x
    itself first."""
    values, scales = _outputs(x)
    total = torch.empty_like(x) if branch is not None else x
    block = triton.next_power_of_2(x.shape[1])
    launcher(norm_kernel)[(triton.cdiv(len(x), rows),)](
        x, x if branch is None else branch, total, weight, bias, values, scales, len(x), x.shape[1], eps,
        BLOCK=block, ROWS=rows, ADD=branch is not None, LARGEST=largest, SMALLEST=smallest,
        num_warps=_warps(block, rows))
    return total, values, scales
