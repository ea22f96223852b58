"""The torch GPU runtime's Triton kernels (attention, the head's last layers, FP8 row quantization, residual add +
LayerNorm + quantization) run by Triton's interpreter on the CPU: their arithmetic, masks and partial blocks
checked in CI, which has no GPU. fp16 inputs (the interpreter's bf16 rounds differently from a GPU's) and
shapes that are not whole blocks; the compiled kernels at the models' sizes are the GPU tests' (marked gpu)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import INTERPRETED_TRITON
from rapidpose.runtime.float8 import FP8_MAX, TINY, register_triton_rows
from rapidpose.runtime.fused_attention import attention_reference, register_triton_attention
from rapidpose.runtime.fused_head import NormReluPointwise, register_triton_head
from rapidpose.runtime.fused_norm import register_triton_norm

pytestmark = pytest.mark.skipif(not INTERPRETED_TRITON, reason="with a GPU the gpu tests run these kernels compiled; "
                                                             "without Linux x86-64 there is no Triton")


def before_the_cast(rows: torch.Tensor):
    """float8.quantize_rows's arithmetic in float32, up to the e4m3 cast: (the values, the scales). The
    interpreter's own e4m3 cast is not a GPU's (it can land an octave off), so the kernels are checked on the
    values they would cast (float32 values_dtype), the cast itself by the GPU tests."""
    inverse = FP8_MAX / rows.abs().amax(1, keepdim=True).clamp(min=TINY)
    return (rows * inverse).clamp(-FP8_MAX, FP8_MAX), 1 / inverse


def rows_with_edges(count: int, width: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.randn(count, width) * 3
    x[1] *= 100  # an outlier row
    x[2] = 0  # an empty row: a finite scale, zeros
    return x.to(torch.float16)


@pytest.mark.parametrize("gelu_mode, form", [(0, None), (1, "none"), (2, "tanh")])  # 3 is PTX: not interpretable
@pytest.mark.parametrize("rows", [1, 4])  # 37 rows: the last program of 4 has one
def test_the_row_kernel_quantizes_as_the_reference(gelu_mode, form, rows):
    x = rows_with_edges(37, 96, seed=rows)  # 96 wide: a block of 128 with its last 32 columns masked
    values, scales = register_triton_rows()(x, gelu_mode, rows, values_dtype=torch.float32)
    want_values, want_scales = before_the_cast(x.float() if form is None else F.gelu(x.float(), approximate=form))
    assert values.shape == x.shape and scales.shape == (37, 1)
    assert torch.allclose(scales, want_scales, rtol=1e-5) and (values[2] == 0).all()
    assert torch.allclose(values, want_values, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("add", [True, False])  # the first block's norm has no add
def test_the_add_norm_kernel_against_torchs_ops(add):
    x, y = rows_with_edges(37, 96, seed=5), rows_with_edges(37, 96, seed=6)
    y[3] = -x[3]  # a row summing to 0: its norm is the bias alone
    norm = nn.LayerNorm(96, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    norm = norm.half()
    got = register_triton_norm()(x, y if add else None, norm.weight, norm.bias, norm.eps, values_dtype=torch.float32)
    total, values, scales = got if add else (x, *got)
    # the model's numbers: the sum and the LayerNorm in fp16, then the row quantization of that output
    want_total = x + y if add else x
    with torch.no_grad():
        want_values, want_scales = before_the_cast(norm(want_total).float())
    assert torch.equal(total, want_total)  # both round the float32 sum to fp16
    assert scales.shape == (37, 1) and torch.isfinite(scales).all()
    # the two float32 LayerNorms may round a value to neighbouring fp16 numbers (2^-11 apart, relatively)
    assert torch.allclose(scales, want_scales, rtol=2e-3)
    assert torch.allclose(values, want_values, rtol=2e-3, atol=0.5)


@pytest.mark.parametrize("tokens, width, heads", [(50, 128, 4), (70, 96, 2)])  # 32 and 48 channels a head
def test_the_attention_kernel_equals_scaled_dot_product_attention(tokens, width, heads):
    torch.manual_seed(tokens)
    qkv = torch.randn(2, tokens, 3 * width).half()  # a last block of queries and keys partly inside
    got = register_triton_attention()(qkv, heads)
    assert got.dtype == torch.float16 and got.shape == (2, tokens, width)
    assert (got.float() - attention_reference(qkv.float(), heads)).abs().max().item() < 3e-3


def test_the_head_kernel_equals_the_norm_relu_and_pointwise_convolution():
    torch.manual_seed(0)
    norm, conv = nn.BatchNorm2d(64).eval(), nn.Conv2d(64, 17, 1)
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.3, 0.3)
    module = NormReluPointwise(norm, conv.half())
    x = torch.randn(2, 64, 5, 3).half().contiguous(memory_format=torch.channels_last)  # 30 pixels of a 128 block
    got = register_triton_head()(x, module.scale, module.shift, module.weight, module.bias)
    assert got.shape == (2, 5, 3, 17)
    with torch.no_grad():
        want = conv.float()(F.relu(norm(x.float()))).permute(0, 2, 3, 1)
    assert (got.float() - want).abs().max().item() < 2e-2 * want.abs().max().item()


@pytest.mark.parametrize("add", [True, False])
def test_the_add_norm_kernel_in_half_precision_writes_the_models_norm(add):
    x, y = rows_with_edges(37, 96, seed=7), rows_with_edges(37, 96, seed=8)
    norm = nn.LayerNorm(96, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    norm = norm.half()
    got = register_triton_norm()(x, y if add else None, norm.weight, norm.bias, norm.eps, quantize=False)
    total, h = got if add else (x, *got)
    want_total = x + y if add else x
    with torch.no_grad():
        want = norm(want_total)
    assert torch.equal(total, want_total) and h.dtype == torch.float16 and h.shape == (37, 96)
    # two float32 LayerNorms rounded to fp16: neighbours at most, mostly the same number
    assert torch.allclose(h.float(), want.float(), rtol=2 ** -10, atol=1e-3)
    assert (h == want).float().mean().item() > 0.95
