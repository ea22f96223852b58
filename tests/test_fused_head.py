"""The classic head's BatchNorm + ReLU + 1x1 convolution as one module (one Triton kernel on GPUs): the same
numbers as the three layers, the swap's reach, and the GPU runtime using it on its own copy of the model."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import GPU
from rapidpose.model.vitpose import ClassicHead, ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime
from rapidpose.runtime.fused_head import NormReluPointwise, fuse_classic_heads, keypoint_block


def trained_like(norm: nn.BatchNorm2d, seed: int = 0) -> nn.BatchNorm2d:
    """BatchNorm statistics and affine weights away from the identity, as a trained head's."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(norm.num_features, generator=gen))
        norm.bias.copy_(0.3 * torch.randn(norm.num_features, generator=gen))
        norm.running_mean.copy_(0.5 * torch.randn(norm.num_features, generator=gen))
        norm.running_var.copy_(0.5 + torch.rand(norm.num_features, generator=gen))
    return norm.eval()


@pytest.mark.parametrize("keypoints", [17, 133])
def test_the_module_computes_batchnorm_relu_and_the_1x1_convolution(keypoints):
    torch.manual_seed(keypoints)
    norm, conv = trained_like(nn.BatchNorm2d(256)), nn.Conv2d(256, keypoints, 1)
    x = torch.randn(2, 256, 16, 12)
    with torch.no_grad():
        want = conv(torch.relu(norm(x)))
        fused = NormReluPointwise(norm, conv)
        got = fused(x)
    assert fused.weight.shape == (256, keypoint_block(keypoints)) and keypoint_block(keypoints) >= keypoints
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_keypoint_blocks_are_powers_of_two_from_16():
    assert [keypoint_block(k) for k in (1, 16, 17, 21, 68, 133)] == [16, 16, 32, 32, 128, 256]


def test_the_swap_fuses_every_classic_head_once_and_keeps_the_output():
    cfg = ViTPoseConfig(dim=384, depth=1, heads=12, num_experts=2, part_features=96, associate_keypoints=(21,))
    model = init_random(ViTPose(cfg)).eval()
    for head in model.modules():
        if isinstance(head, ClassicHead):
            trained_like(head.deconv_layers[-2])
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        want = [model(x, index) for index in (0, 1)]
        assert fuse_classic_heads(model) == 2  # COCO's head and the associate one
        got = [model(x, index) for index in (0, 1)]
    assert fuse_classic_heads(model) == 0  # already fused
    for head in (model.keypoint_head, model.associate_keypoint_heads[0]):
        assert isinstance(head.final_layer, NormReluPointwise)
        assert [type(m) for m in head.deconv_layers][-2:] == [nn.Identity, nn.Identity]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4 * b.abs().max())


def test_a_simple_head_is_left_as_it_is():
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12, head="simple")))
    assert fuse_classic_heads(model) == 0


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_gpu_kernel_equals_the_three_layers(dtype):
    torch.manual_seed(0)
    norm, conv = trained_like(nn.BatchNorm2d(256)), nn.Conv2d(256, 17, 1)
    x = torch.randn(37, 256, 64, 48)  # an odd batch: a last block of pixels only partly inside
    with torch.no_grad():
        want = conv(torch.relu(norm(x)))  # float32 on the CPU
        fused = NormReluPointwise(norm, conv).to("cuda", dtype)
        got = fused(x.to("cuda", dtype).contiguous(memory_format=torch.channels_last))
    assert got.dtype == dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    scale = want.abs().max().item()
    assert (got.float().cpu() - want).abs().max().item() < (2e-2 if dtype == torch.bfloat16 else 3e-3) * scale


@pytest.mark.gpu
@GPU
def test_the_gpu_runtime_fuses_its_own_copy_and_keeps_the_heatmaps():
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12))).eval()
    trained_like(model.keypoint_head.deconv_layers[-2])
    before = copy.deepcopy(model.state_dict())
    x = np.random.default_rng(0).normal(size=(5, 3, 256, 192)).astype(np.float32)
    reference = TorchRuntime(model, precision="fp32", cuda_graphs=False)(x)
    runtime = TorchRuntime(model, device="cuda", precision="fp16")
    assert isinstance(runtime.model.keypoint_head.final_layer, NormReluPointwise)
    assert model.state_dict().keys() == before.keys()  # the caller's model keeps its layers
    got = runtime(x)
    assert np.abs(got - reference).max() < 1e-2 * np.abs(reference).max()
