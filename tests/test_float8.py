"""precision fp8: the FP8 linear layer against float32, the swap's reach, the clear error where FP8 cannot
run, and (on an FP8 GPU) agreement with fp32 under CUDA graphs and torch.compile."""
import argparse
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import CPU_SCALED_MM, FP8_GPU, SCALED_MM_ON_CPU
from rapidpose import InputError
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime, make_runtime
from rapidpose.runtime import float8
from rapidpose.runtime.float8 import FP8_MAX, GELU_FORM, LAYERS, Float8Linear, quantize_activations, quantize_rows, swap_linears
from rapidpose.skeletons import COCO


def emulated(layer: Float8Linear, x):
    """What the layer computes, in float32 from its own e4m3 values and scales: the product's reference."""
    x = nn.functional.gelu(x, approximate=GELU_FORM) if layer.gelu_first else x
    values, scale = quantize_rows(x.reshape(-1, layer.in_features))
    weight = layer.weight.float() * layer.weight_scale.t()
    return ((values.float() * scale) @ weight.t() + layer.bias.float()).reshape(*x.shape[:-1], -1)


def fp8_linear(layer: Float8Linear, x):
    return layer(x).float() if SCALED_MM_ON_CPU else emulated(layer, x)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def sqnr_db(reference, other) -> float:
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    return float(10 * np.log10((reference ** 2).sum() / ((reference - other) ** 2).sum()))


@pytest.fixture(scope="module")
def small():
    m = init_random(ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12)), seed=3)
    m.skeleton = COCO
    return m.eval()


def crops(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, 256, 192)).astype(np.float32)


def test_the_fp8_linear_is_a_float32_product_within_fp8_error():
    torch.manual_seed(0)
    linear = nn.Linear(384, 1152)
    x = torch.randn(2, 192, 384).to(torch.bfloat16)
    layer = Float8Linear(linear)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (1, 1152)
    got = fp8_linear(layer, x)
    with torch.no_grad():
        want = linear(x.float())  # the same bf16 inputs: only FP8's rounding differs
    assert got.shape == want.shape
    # e4m3 keeps 3 mantissa bits: about 31.5 dB per operand scaled per row, 28.7 dB for the product of two
    assert cosine(got, want) > 0.999 and sqnr_db(want, got) > 27
    if SCALED_MM_ON_CPU:  # the real product is the emulation's, up to its bf16 output
        assert torch.allclose(got, emulated(layer, x), rtol=1e-2, atol=1e-2)


def test_row_scales_use_the_whole_range_and_keep_rows_apart():
    x = torch.randn(4, 64)
    x[1] *= 1000  # an outlier row
    x[2] = 0  # an empty row (a padded token)
    values, scale = quantize_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (4, 1) and scale.dtype == torch.float32
    peaks = values.float().abs().amax(-1)
    assert torch.allclose(peaks[[0, 1, 3]], torch.full((3,), FP8_MAX), rtol=0.02)  # each row fills e4m3's range
    assert torch.isfinite(scale).all() and (values.float()[2] == 0).all()
    back = values.float() * scale
    for row in (0, 3):  # the outlier costs the other rows nothing
        assert cosine(back[row], x[row]) > 0.998


def test_the_swap_replaces_exactly_the_blocks_linear_layers():
    model = init_random(ViTPose(ViTPoseConfig.from_variant("s"))).eval()
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()
                 if n.startswith(("keypoint_head.", "backbone.patch_embed.", "backbone.pos_embed", "backbone.last_norm"))}
    model.to(torch.bfloat16)
    swapped = swap_linears(model)
    assert sorted(swapped) == sorted(f"backbone.blocks.{i}.{name}" for i in range(12) for name in LAYERS)
    assert {n for n, m in model.named_modules() if isinstance(m, Float8Linear)} == set(swapped)
    assert not [n for n, m in model.named_modules() if type(m) is nn.Linear]  # no float Linear left
    assert isinstance(model.backbone.patch_embed.proj, nn.Conv2d)
    for block in model.backbone.blocks:  # fc2 applies the GELU as it quantizes its input: the MLP's own is gone
        assert block.mlp.fc2.gelu_first and isinstance(block.mlp.act, nn.Identity)
        assert not (block.attn.qkv.gelu_first or block.attn.proj.gelu_first or block.mlp.fc1.gelu_first)
    for name, before in untouched.items():  # the head and the patch embedding are bf16 as they were
        after = model.get_parameter(name)
        assert after.dtype == torch.bfloat16 and torch.equal(after, before.to(torch.bfloat16)), name


def test_the_swap_leaves_a_vitpose_plus_experts_fc2_in_bf16():
    cfg = ViTPoseConfig(dim=384, depth=1, heads=12, num_experts=6, part_features=192)
    model = init_random(ViTPose(cfg)).to(torch.bfloat16)
    swapped = swap_linears(model)
    assert swapped == ["backbone.blocks.0.attn.qkv", "backbone.blocks.0.attn.proj", "backbone.blocks.0.mlp.fc1"]
    mlp = model.backbone.blocks[0].mlp
    assert type(mlp.fc2) is nn.Linear and all(type(e) is nn.Linear for e in mlp.experts)  # read as weights
    assert isinstance(mlp.act, nn.GELU)  # applied by the MLP, as fc2 is not swapped


def test_an_fp8_mlp_equals_the_float_mlp_within_fp8_error():
    # fc2 takes the GELU over: the swapped MLP still computes fc2(GELU(fc1(x)))
    torch.manual_seed(1)
    cfg = ViTPoseConfig(dim=384, depth=1, heads=12)
    model = init_random(ViTPose(cfg)).eval()
    mlp = model.backbone.blocks[0].mlp
    x = torch.randn(2, 192, 384).to(torch.bfloat16)
    with torch.no_grad():
        want = mlp.fc2(nn.functional.gelu(mlp.fc1(x.float())))
        swap_linears(model.to(torch.bfloat16))
        got = fp8_linear(mlp.fc2, fp8_linear(mlp.fc1, x).to(torch.bfloat16))
    assert cosine(got, want) > 0.998 and sqnr_db(want, got) > 24


def test_fp8_on_a_device_without_fp8_is_a_clear_error(small, monkeypatch):
    with pytest.raises(InputError, match=r"precision 'fp8' needs an NVIDIA GPU with FP8 tensor cores .*H100, "
                                         r"H200, L40.*'cpu': use precision bf16 or fp32"):
        TorchRuntime(small, device="cpu", precision="fp8")
    with pytest.raises(InputError, match="FP8 tensor cores"):  # the default backend on CPUs (OpenVINO) has no fp8
        make_runtime(small, device="cpu", precision="fp8")
    # a GPU older than Ada: its name, its compute capability and what to use instead
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(InputError, match=r"A100-SXM4-80GB has compute capability 8\.0: use precision fp16 or bf16"):
        float8.check_device("cuda:0")


def test_fp8_without_triton_is_refused_with_what_to_do(monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    with pytest.raises(InputError, match=r"no Triton: pip install triton .*or use precision fp16"):
        float8.check_device("cuda:0")


def test_the_command_line_offers_fp8():
    from rapidpose.cli.options import add_network_options

    parser = argparse.ArgumentParser()
    add_network_options(parser)
    assert parser.parse_args(["--precision", "fp8"]).precision == "fp8"
    assert "fp8: FP8 matrix products" in " ".join(parser.format_help().split())  # as wrapped to the terminal


@CPU_SCALED_MM
def test_the_fp8_runtime_on_the_cpu_swaps_a_copy_and_agrees_with_fp32(small, monkeypatch):
    # the device check bypassed: users get the error above; this torch build runs _scaled_mm on the CPU (the
    # layers around the FP8 ones stay fp32 there, as every CPU precision keeps its weights)
    monkeypatch.setattr(float8, "check_device", lambda device: None)
    before = copy.deepcopy(small.state_dict())
    runtime = TorchRuntime(small, device="cpu", precision="fp8")
    assert runtime.precision == "fp8" and isinstance(runtime.model.backbone.blocks[0].attn.qkv, Float8Linear)
    assert type(small.backbone.blocks[0].attn.qkv) is nn.Linear  # the caller's model keeps its layers
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    x = crops(3)
    ref = TorchRuntime(small, precision="fp32")(x)
    got = runtime(x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert cosine(got, ref) > 0.99


@CPU_SCALED_MM
def test_a_block_with_fp8_layers_compiles_whole():
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12))).eval().to(torch.bfloat16)
    swap_linears(model)
    block = model.backbone.blocks[0]
    x = torch.randn(2, 192, 384, dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = block(x)
        # fullgraph: no break at the FP8 products, so Inductor may fuse their row quantization with the
        # LayerNorm and GELU before them
        compiled = torch.compile(block, fullgraph=True, dynamic=False)(x)
    assert compiled.dtype == torch.bfloat16 and cosine(compiled.float(), eager.float()) > 0.999


@pytest.mark.gpu
@FP8_GPU
@pytest.mark.parametrize("width", [768, 3072])
@pytest.mark.parametrize("gelu", [False, True])
def test_the_gpu_row_kernel_quantizes_as_the_reference_does(width, gelu):
    torch.manual_seed(width)
    x = torch.randn(1000, width, device="cuda").to(torch.bfloat16) * 3
    x[1] *= 1000  # an outlier row
    x[2] = 0  # an empty row
    values, scale = quantize_activations(x, gelu)
    reference = nn.functional.gelu(x.float(), approximate=GELU_FORM) if gelu else x.float()  # float32 throughout
    want_values, want_scale = quantize_rows(reference)
    assert values.dtype == torch.float8_e4m3fn and values.shape == x.shape and scale.shape == (1000, 1)
    assert torch.allclose(scale, want_scale, rtol=1e-6)
    # the same e4m3 codes but where rounding lands on the other side of a tie: float32's, and with the GELU
    # the GPU's tanh instruction (relative error 2^-11); such codes are neighbours, an e4m3 step apart
    same = (values.view(torch.uint8) == want_values.view(torch.uint8)).float().mean().item()
    assert same > (0.99 if gelu else 0.999), same
    got, want = values.float(), want_values.float()
    assert ((got - want).abs() <= want.abs() / 8 + 2 ** -9).all()
    assert (values.float()[2] == 0).all() and torch.isfinite(scale).all()


@pytest.mark.gpu
@FP8_GPU
def test_fp8_on_the_gpu_agrees_with_fp32_and_cuda_graphs_replay_it(small):
    ref = TorchRuntime(small, precision="fp32", cuda_graphs=False)(crops(5))  # the fp32 CPU reference
    graphed = TorchRuntime(small, device="cuda", precision="fp8", cuda_graphs=True)
    eager = TorchRuntime(small, device="cuda", precision="fp8", cuda_graphs=False)
    assert type(small.backbone.blocks[0].attn.qkv) is nn.Linear  # the caller's model keeps its layers
    for n in (1, 3, 5):
        x = crops(n, seed=n)
        a, b = graphed(x), eager(x)
        assert np.allclose(a, b, atol=1e-2 * np.abs(b).max()), (n, np.abs(a - b).max())
    assert sorted(graphed._graphs) == [1, 4, 8] and all(g is not None for g in graphed._graphs.values())
    assert cosine(graphed(crops(5)), ref) > 0.99


@pytest.mark.gpu
@FP8_GPU
def test_fp8_compiled_under_cuda_graphs_agrees_with_fp32(small):
    ref = TorchRuntime(small, precision="fp32", cuda_graphs=False)(crops(4))
    compiled = TorchRuntime(small, device="cuda", precision="fp8", compile=True, cuda_graphs=True)
    assert cosine(compiled(crops(4)), ref) > 0.99
    assert compiled._graphs[4] is not None  # captured, not fallen back to a plain run


@pytest.mark.gpu
@FP8_GPU
def test_a_gpu_block_with_fp8_layers_compiles_whole_with_the_row_kernel():
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12))).eval().to("cuda", torch.bfloat16)
    swap_linears(model)
    block = model.backbone.blocks[0]
    x = torch.randn(2, 192, 384, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = block(x)
        compiled = torch.compile(block, fullgraph=True, dynamic=False)(x)  # the Triton op traced, no break
    assert cosine(compiled.float().cpu(), eager.float().cpu()) > 0.999


@CPU_SCALED_MM
def test_an_fp8_layer_answers_in_its_inputs_dtype_beside_float_layers(monkeypatch):
    # fewer layers in FP8 (gpu_precision.py --fp8-layers): fc2 stays a float32 Linear after an FP8 fc1
    monkeypatch.setattr(float8, "LAYERS", ("attn.qkv", "attn.proj", "mlp.fc1"))
    model = init_random(ViTPose(ViTPoseConfig(dim=384, depth=1, heads=12))).eval()
    x = torch.randn(2, 192, 384)
    with torch.no_grad():
        want = model.backbone.blocks[0](x)
        assert swap_linears(model) == ["backbone.blocks.0.attn.qkv", "backbone.blocks.0.attn.proj",
                                       "backbone.blocks.0.mlp.fc1"]
        got = model.backbone.blocks[0](x)
    assert type(model.backbone.blocks[0].mlp.fc2) is nn.Linear and isinstance(model.backbone.blocks[0].mlp.act, nn.GELU)
    assert got.dtype == torch.float32 and cosine(got, want) > 0.999


def test_fp8_asks_for_no_cublaslt_workspace_unless_the_user_set_one(monkeypatch):
    monkeypatch.delenv(float8.WORKSPACE_VARIABLE, raising=False)
    float8.prefer_memset_free_products()
    assert os.environ[float8.WORKSPACE_VARIABLE] == "0"
    monkeypatch.setenv(float8.WORKSPACE_VARIABLE, "4096")
    float8.prefer_memset_free_products()
    assert os.environ[float8.WORKSPACE_VARIABLE] == "4096"


MEMSETS_A_PRODUCT = """
import torch
from torch.profiler import ProfilerActivity, profile
from rapidpose.model.vitpose import ViTPose, ViTPoseConfig, init_random
from rapidpose.runtime import TorchRuntime
from rapidpose.runtime.float8 import Float8Linear
runtime = TorchRuntime(init_random(ViTPose(ViTPoseConfig(dim=768, depth=1, heads=12))).eval(), device="cuda",
                       precision="fp8", cuda_graphs=False)
fc1 = next(m for m in runtime.model.modules() if isinstance(m, Float8Linear) and m.out_features == 3072)
rows = torch.randn(64 * 192, 768, device="cuda").to(torch.float8_e4m3fn)  # a batch of 64's rows
scales = torch.ones(len(rows), 1, device="cuda")
fc1.quantized(rows, scales)  # warm-up
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(4):
        fc1.quantized(rows, scales)
    torch.cuda.synchronize()
print(sum(e.name == "cudaMemsetAsync" for e in prof.events()) / 4)
"""


def memsets_a_product(workspace: str | None) -> float:
    """cudaMemsetAsync calls a product of fc1's shape in a fresh process (recent torch reads the workspace size
    once, at its first cuBLASLt product), with CUBLASLT_WORKSPACE_SIZE unset or set to `workspace`."""
    env = {k: v for k, v in os.environ.items() if k != float8.WORKSPACE_VARIABLE}
    if workspace is not None:
        env[float8.WORKSPACE_VARIABLE] = workspace
    out = subprocess.run([sys.executable, "-c", MEMSETS_A_PRODUCT], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


@pytest.mark.gpu
@FP8_GPU
def test_fp8_products_clear_no_workspace_unless_the_user_gives_one():
    with_workspace = memsets_a_product("1024")  # torch's default size, given by the user: kept
    if with_workspace == 0:
        pytest.skip("cuBLASLt clears no workspace before this product on this GPU even with one: nothing to remove")
    assert with_workspace == 1.0  # the H200's: one memset a product
    assert memsets_a_product(None) == 0.0  # the runtime's choice: no workspace, no memset
