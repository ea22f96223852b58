"""fc1 + GELU as one product with cuBLASLt's GELU epilogue in the GPU runtime's half precisions
(runtime/fused_gelu.py): the same numbers as the model's MLP (exactly on CPUs, within the tanh form's distance on
GPUs), the swap's reach, and the runtimes that make it and those that do not."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import GPU
from rapidpose.model.vitpose import Mlp, ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime
from rapidpose.runtime.fused_gelu import LinearGELU, fuse_mlp_gelu


def test_the_swap_reaches_every_mlp_and_keeps_weights_and_output():
    cfg = ViTPoseConfig(dim=384, depth=3, heads=12, num_experts=2, part_features=96, associate_keypoints=(21,))
    model = init_random(ViTPose(cfg)).eval()
    state = model.state_dict()
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        want = model(x)
        assert fuse_mlp_gelu(model) == 3
        got = model(x)
    for block in model.backbone.blocks:
        assert isinstance(block.mlp.fc1, LinearGELU) and isinstance(block.mlp.act, nn.Identity)
    assert fuse_mlp_gelu(model) == 0  # already swapped
    assert model.state_dict().keys() == state.keys()  # checkpoints load into the swapped model as they are
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # on CPUs torch._addmm_activation computes the exact GELU: the same numbers as fc1 then nn.GELU
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_the_swap_leaves_other_activations_and_bias_free_layers_alone():
    mlp = Mlp(64, 256)
    mlp.act = nn.GELU(approximate="tanh")  # already an approximation: not the module's to change
    plain = Mlp(64, 256)
    plain.fc1 = nn.Linear(64, 256, bias=False)
    relu = Mlp(64, 256)
    relu.act = nn.ReLU()
    assert fuse_mlp_gelu(nn.ModuleList([mlp, plain, relu])) == 0
    assert type(mlp.fc1) is nn.Linear and type(plain.fc1) is nn.Linear and type(relu.fc1) is nn.Linear


def test_the_layer_takes_any_leading_shape():
    layer = nn.Linear(32, 64)
    x = torch.randn(2, 5, 7, 32)
    with torch.no_grad():
        assert torch.allclose(LinearGELU(layer)(x), F.gelu(layer(x)), atol=1e-6)
    assert "GELU" in repr(LinearGELU(layer))


def test_the_cpu_and_fp32_runtimes_keep_the_models_mlp():
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12))).eval()
    for precision in ("fp32", "bf16"):
        runtime = TorchRuntime(model, device="cpu", precision=precision, cuda_graphs=False)
        assert type(runtime.model.backbone.blocks[0].mlp.fc1) is nn.Linear


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_gpu_layer_is_the_tanh_gelu_of_the_product(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(768, 3072).to("cuda", dtype)
    x = torch.randn(4, 192, 768, device="cuda", dtype=dtype)
    with torch.no_grad():
        got = LinearGELU(layer)(x).float()
        product = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    scale = product.abs().max().item()
    tolerance = (1e-2 if dtype == torch.bfloat16 else 2e-3) * scale  # the product's own half-precision rounding
    assert (got - F.gelu(product, approximate="tanh")).abs().max().item() < tolerance
    assert (got - F.gelu(product)).abs().max().item() < tolerance + 1e-3  # the exact form: 5e-4 further at most


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("precision, swapped", [("fp16", True), ("bf16", True), ("fp32", False)])
@pytest.mark.parametrize("compile", [False, True])
def test_the_gpu_runtime_swaps_its_own_copy_in_half_precision(precision, swapped, compile):
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12))).eval()
    before = copy.deepcopy(model.state_dict())
    x = np.random.default_rng(0).normal(size=(5, 3, 256, 192)).astype(np.float32)
    reference = TorchRuntime(model, precision="fp32", cuda_graphs=False)(x)
    runtime = TorchRuntime(model, device="cuda", precision=precision, compile=compile)
    kinds = {type(block.mlp.fc1) for block in runtime.model.backbone.blocks}
    assert kinds == ({LinearGELU} if swapped else {nn.Linear})
    if swapped:  # the caller's model keeps its own layers and weights (fp32 swaps nothing and copies nothing)
        assert all(type(block.mlp.fc1) is nn.Linear for block in model.backbone.blocks)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    got = runtime(x)
    assert np.abs(got - reference).max() < 2e-2 * np.abs(reference).max()
