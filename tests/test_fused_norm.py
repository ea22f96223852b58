"""The blocks' residual add + LayerNorm (+ FP8 row quantization) as one Triton kernel (runtime/fused_norm.py): which
backbones the swap takes and how, the swapped backbone's forward off the GPU (the same torch ops, the same
numbers), and on GPUs the kernels against torch's ops and the fp16/bf16/fp8 runtimes (eager and compiled) with and
without the swap."""
import copy
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import CPU_SCALED_MM, FP8_GPU, GPU
from rapidpose.model.vitpose import ViT, ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime
from rapidpose.runtime.float8 import quantize_rows, rows_per_program, swap_linears
from rapidpose.runtime.fused_attention import fuse_attention
from rapidpose.runtime.fused_gelu import fuse_mlp_gelu
from rapidpose.runtime.fused_norm import (FusedNormViT, add_norm_reference, fuse_norms, register_triton_norm,
                                          swap_kind)


def fp8_model(dtype=torch.bfloat16, attention=True, **cfg):
    model = init_random(ViTPose(ViTPoseConfig(**{"dim": 384, "depth": 2, "heads": 12, **cfg})), seed=4).to(dtype)
    swap_linears(model)
    if attention:
        fuse_attention(model)
    return model


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def half_model(dtype=torch.bfloat16, attention=True, gelu=True, **cfg):
    model = init_random(ViTPose(ViTPoseConfig(**{"dim": 384, "depth": 2, "heads": 12, **cfg})), seed=4).to(dtype)
    if attention:
        fuse_attention(model)
    if gelu:
        fuse_mlp_gelu(model)
    return model


def test_the_swap_takes_fp8_and_half_vit_backbones():
    model = fp8_model()
    keys = model.state_dict().keys()
    assert swap_kind(model.backbone) == "fp8"
    assert fuse_norms(model) == 2 and isinstance(model.backbone, FusedNormViT) and model.backbone.fp8
    assert model.state_dict().keys() == keys  # the same modules: checkpoints still load
    assert fuse_norms(model) == 0  # already swapped
    assert fuse_norms(fp8_model(attention=False)) == 2  # the model's own Attention is computed as it does
    plain = half_model()
    assert swap_kind(plain.backbone) == "half"  # no FP8 layers: the norms alone, in the model's dtype
    assert fuse_norms(plain) == 2 and not plain.backbone.fp8
    # ViTPose++: fc2 is joined with an expert's and stays bf16, so its FP8 blocks stay as they are; the half
    # blocks take the dataset index to their MLP
    assert fuse_norms(fp8_model(num_experts=2, part_features=96, associate_keypoints=(21,))) == 0
    assert fuse_norms(half_model(num_experts=2, part_features=96, associate_keypoints=(21,))) == 2
    # widths _scaled_mm cannot take (not multiples of 16): swap_linears leaves the layers bf16, the half kind
    assert swap_kind(fp8_model(dim=360, heads=12).backbone) == "half"
    mixed = fp8_model()
    mixed.backbone.blocks[1].mlp.fc1 = nn.Linear(384, 1536).to(torch.bfloat16)  # one block half, one FP8
    assert swap_kind(mixed.backbone) is None and fuse_norms(mixed) == 0
    no_bias = half_model()
    no_bias.backbone.last_norm = nn.LayerNorm(384, elementwise_affine=False)
    assert fuse_norms(no_bias) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("attention, gelu", [(True, True), (False, False)])
@pytest.mark.parametrize("experts", [1, 2])
def test_the_half_swap_off_the_gpu_gives_the_same_numbers(dtype, attention, gelu, experts):
    cfg = {"num_experts": 2, "part_features": 96, "associate_keypoints": (21,)} if experts > 1 else {}
    model = half_model(dtype, attention, gelu, **cfg).eval()
    swapped = copy.deepcopy(model)
    assert fuse_norms(swapped) == 2
    x = torch.randn(3, 3, 256, 192).to(dtype)
    with torch.inference_mode():
        for dataset in range(experts):
            assert torch.equal(swapped(x, dataset), model(x, dataset))


@CPU_SCALED_MM
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])  # a GPU's bf16 model; the CPU's fp32 weights
@pytest.mark.parametrize("attention", [True, False])
def test_the_swapped_backbone_off_the_gpu_gives_the_same_numbers(dtype, attention):
    model = fp8_model(dtype, attention).eval()
    swapped = copy.deepcopy(model)
    assert fuse_norms(swapped) == 2
    x = torch.randn(3, 3, 256, 192).to(dtype)
    with torch.inference_mode():
        assert torch.equal(swapped(x), model(x))


def test_the_reference_is_the_models_add_norm_and_quantization():
    torch.manual_seed(0)
    norm = nn.LayerNorm(384, eps=1e-6)
    x, y = torch.randn(7, 384), torch.randn(7, 384)
    total, values, scales = add_norm_reference(x, y, norm.weight, norm.bias, norm.eps)
    want_values, want_scales = quantize_rows(norm(x + y))
    assert torch.equal(total, x + y) and torch.equal(values.float(), want_values.float())
    assert torch.equal(scales, want_scales)
    assert add_norm_reference(x, None, norm.weight, norm.bias, norm.eps)[0] is x  # the first block: no add


def torch_add_norm(x, y, norm):
    """The unswapped model's numbers on the GPU: the bf16 add, LayerNorm in bf16, quantize_rows on its output."""
    total = x if y is None else x + y
    h = F.layer_norm(total, (x.shape[1],), norm.weight, norm.bias, norm.eps)
    return total, h, *quantize_rows(h)


@pytest.mark.gpu
@FP8_GPU
@pytest.mark.parametrize("width", [384, 768, 1024, 1280])  # ViTPose-S, B, L, H
@pytest.mark.parametrize("add", [True, False])  # the first block's norm has no add
def test_the_gpu_kernel_against_torchs_ops(width, add):
    torch.manual_seed(width)
    count = 1001  # not a multiple of any rows-a-program (8, 4, 4, 2)
    assert count % rows_per_program(width)
    x = (torch.randn(count, width, device="cuda") * 3).to(torch.bfloat16)
    y = torch.randn(count, width, device="cuda").to(torch.bfloat16)
    x[1] *= 100  # an outlier row
    y[2] = -x[2]  # a row summing to 0: its norm is the bias alone
    norm = init_random(nn.LayerNorm(width, eps=1e-6)).to("cuda", torch.bfloat16)
    register_triton_norm()
    with torch.inference_mode():
        if add:
            total, values, scales = torch.ops.rapidpose.add_norm_fp8(x, y, norm.weight, norm.bias, norm.eps)
        else:
            values, scales = torch.ops.rapidpose.norm_fp8(x, norm.weight, norm.bias, norm.eps)
        want_total, h, want_values, want_scales = torch_add_norm(x, y if add else None, norm)
    if add:
        assert total.dtype == torch.bfloat16 and torch.equal(total, want_total)  # both round the float32 sum
    assert values.dtype == torch.float8_e4m3fn and values.shape == (count, width) and scales.shape == (count, 1)
    assert torch.isfinite(scales).all()
    # the model's quantize_rows on bf16 rounds its inverse scale to bf16 (2^-9) and the row's largest LayerNorm
    # output may land a bf16 step (2^-8) away from the kernel's float32 LayerNorm: scales agree to 1e-2
    assert torch.allclose(scales, want_scales, rtol=1e-2)
    got, want = values.float() * scales, want_values.float() * want_scales
    # within one e4m3 step (an eighth of a value, or the smallest subnormal's 2^-9 of the scale), a little more
    # for the scales' difference
    assert ((got - want).abs() <= 1.02 * (want.abs() / 8 + 2 ** -9 * want_scales)).all()
    same = (values.view(torch.uint8) == want_values.view(torch.uint8)).float().mean().item()
    assert same > 0.9, same
    # against the kernel's own arithmetic (float8's row kernel: a float32 inverse) on torch's bf16 LayerNorm output,
    # the codes differ only where the two LayerNorms round a value a bf16 step apart
    exact_values, exact_scales = quantize_rows(h.float())
    assert torch.allclose(scales, exact_scales, rtol=1e-2)
    exact = (values.view(torch.uint8) == exact_values.view(torch.uint8)).float().mean().item()
    assert exact > 0.99, exact


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("width", [384, 768, 1280])  # ViTPose-S, B, H
def test_the_gpu_half_kernel_against_torchs_ops(dtype, width):
    torch.manual_seed(width)
    count = 1001
    x = (torch.randn(count, width, device="cuda") * 3).to(dtype)
    y = torch.randn(count, width, device="cuda").to(dtype)
    x[1] *= 100  # an outlier row
    y[2] = -x[2]  # a row summing to 0: its norm is the bias alone
    norm = init_random(nn.LayerNorm(width, eps=1e-6)).to("cuda", dtype)
    register_triton_norm()
    with torch.inference_mode():
        total, h = torch.ops.rapidpose.add_norm_half(x, y, norm.weight, norm.bias, norm.eps)
        want = norm(x + y)
    assert torch.equal(total, x + y)  # both round the float32 sum
    assert h.dtype == dtype and h.shape == (count, width)
    # float32 LayerNorms of the same rows, rounded: a step of the dtype apart at most
    step = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
    assert ((h.float() - want.float()).abs() <= step * want.float().abs() + 1e-3).all()
    assert (h == want).float().mean().item() > 0.95


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_half_runtime_swaps_its_own_copy_and_keeps_the_heatmaps(compile, precision):
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12)), seed=5).eval()
    x = np.random.default_rng(0).normal(size=(5, 3, 256, 192)).astype(np.float32)
    with mock.patch("rapidpose.runtime.fused_norm.fuse_norms", lambda model: 0):
        unswapped = TorchRuntime(model, device="cuda", precision=precision, compile=compile)
    runtime = TorchRuntime(model, device="cuda", precision=precision, compile=compile)
    assert type(unswapped.model.backbone) is ViT and isinstance(runtime.model.backbone, FusedNormViT)
    assert not runtime.model.backbone.fp8 and type(model.backbone) is ViT  # the caller's model is its own
    want, got = unswapped(x), runtime(x)
    assert cosine(got, want) > 0.9999 and np.abs(got - want).max() < 2e-2 * np.abs(want).max()


@pytest.mark.gpu
@pytest.mark.parametrize("kind, dtype, agreement", [
    pytest.param("half", torch.float16, 0.9999, marks=GPU), pytest.param("fp8", torch.bfloat16, 0.999, marks=FP8_GPU)])
def test_the_swapped_gpu_backbone_compiles_whole(kind, dtype, agreement):
    model = (half_model(dtype) if kind == "half" else fp8_model()).to("cuda").eval()
    fuse_norms(model)
    x = torch.randn(2, 3, 256, 192, device="cuda", dtype=dtype)
    with torch.inference_mode():
        eager = model.backbone(x)
        compiled = torch.compile(model.backbone, fullgraph=True, dynamic=False)(x)  # the ops traced, no break
    assert cosine(compiled.float().cpu(), eager.float().cpu()) > agreement


@pytest.mark.gpu
@FP8_GPU
@pytest.mark.parametrize("compile", [False, True])
def test_the_fp8_runtime_swaps_its_own_copy_and_keeps_the_heatmaps(compile):
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12)), seed=5).eval()
    x = np.random.default_rng(0).normal(size=(5, 3, 256, 192)).astype(np.float32)
    with mock.patch("rapidpose.runtime.fused_norm.fuse_norms", lambda model: 0):
        unswapped = TorchRuntime(model, device="cuda", precision="fp8", compile=compile)
    runtime = TorchRuntime(model, device="cuda", precision="fp8", compile=compile)
    assert type(unswapped.model.backbone) is ViT and isinstance(runtime.model.backbone, FusedNormViT)
    assert type(model.backbone) is ViT  # the caller's model is its own
    want, got = unswapped(x), runtime(x)
    # the same FP8 products; a few e4m3 codes a step apart where the LayerNorms round differently
    assert cosine(got, want) > 0.995 and np.abs(got - want).max() < 0.1 * np.abs(want).max()
