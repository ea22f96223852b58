"""Attention as one Triton kernel on GPUs (runtime/fused_attention.py): the same numbers as the model's
Attention, the swap's reach, and the GPU runtime (eager and compiled) using it on its own copy of the model."""
import copy

import numpy as np
import pytest
import torch

from conftest import GPU
from rapidpose.model.vitpose import Attention, ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime
from rapidpose.runtime.fused_attention import (FusedAttention, attention_reference, fuse_attention, head_block,
                                                 register_triton_attention)


def test_head_blocks_are_powers_of_two_from_16():
    assert [head_block(c) for c in (8, 16, 32, 64, 80, 128)] == [16, 16, 32, 64, 128, 128]


def test_the_fused_module_off_the_gpu_is_the_models_attention():
    torch.manual_seed(0)
    attention = Attention(384, 6).eval()
    x = torch.randn(3, 50, 384)
    with torch.no_grad():
        want = attention(x)
        fused = FusedAttention(attention)
        got = fused(x)
    assert fused.qkv is attention.qkv and fused.proj is attention.proj
    assert torch.equal(got, want)


def test_the_swap_reaches_every_block_and_keeps_weights_and_output():
    cfg = ViTPoseConfig(dim=384, depth=3, heads=12, num_experts=2, part_features=96, associate_keypoints=(21,))
    model = init_random(ViTPose(cfg)).eval()
    keys = model.state_dict().keys()
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        want = model(x)
        assert fuse_attention(model) == 3
        got = model(x)
    assert all(isinstance(block.attn, FusedAttention) for block in model.backbone.blocks)
    assert fuse_attention(model) == 0  # already fused
    assert model.state_dict().keys() == keys  # checkpoints load into the fused model as they are
    assert torch.equal(got, want)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("crops, tokens, width, heads", [
    (5, 192, 768, 12),   # ViTPose-B at 256x192: 64 channels a head, three whole key blocks
    (3, 50, 384, 12),    # ViTPose-S's 32 channels a head, a last block of queries and keys partly inside
    (2, 432, 1280, 16),  # ViTPose-H's 80 channels (padded to 128) at 384x288
])
def test_the_gpu_kernel_equals_scaled_dot_product_attention(dtype, crops, tokens, width, heads):
    torch.manual_seed(0)
    qkv = torch.randn(crops, tokens, 3 * width, device="cuda", dtype=dtype)
    want = attention_reference(qkv.float(), heads)
    register_triton_attention()
    got = torch.ops.rapidpose.attention(qkv, heads)
    assert got.dtype == dtype and got.shape == (crops, tokens, width)
    assert (got.float() - want).abs().max().item() < (2e-2 if dtype == torch.bfloat16 else 3e-3)


@pytest.mark.gpu
@GPU
def test_the_gpu_kernel_takes_more_programs_than_a_grid_axis_beyond_the_first():
    """crops x heads past 65,535 (the limit of a CUDA grid's second and third axes)."""
    torch.manual_seed(0)
    qkv = torch.randn(5500, 4, 3 * 768, device="cuda", dtype=torch.float16)  # 66,000 crop-heads
    register_triton_attention()
    got = torch.ops.rapidpose.attention(qkv, 12)
    assert (got[-8:].float() - attention_reference(qkv[-8:].float(), 12)).abs().max().item() < 3e-3


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("compile", [False, True])
def test_the_gpu_runtime_fuses_its_own_copy_and_keeps_the_heatmaps(compile):
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12))).eval()
    before = copy.deepcopy(model.state_dict())
    x = np.random.default_rng(0).normal(size=(5, 3, 256, 192)).astype(np.float32)
    reference = TorchRuntime(model, precision="fp32", cuda_graphs=False)(x)
    runtime = TorchRuntime(model, device="cuda", precision="fp16", compile=compile)
    assert all(isinstance(block.attn, FusedAttention) for block in runtime.model.backbone.blocks)
    assert all(type(block.attn) is Attention for block in model.backbone.blocks)  # the caller's model is its own
    assert model.state_dict().keys() == before.keys()
    got = runtime(x)
    assert np.abs(got - reference).max() < 1e-2 * np.abs(reference).max()
