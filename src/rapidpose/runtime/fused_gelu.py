"""The MLP's fc1 and its GELU as one matrix product on GPUs in fp16/bf16: cuBLASLt's GELU epilogue.

In half precision each ViT block's fc1 writes its (M, 4C) product and a separate kernel reads it back for the
GELU and writes it again: on an H200, ViTPose-B's batch of 64 spends 0.66 ms of its 5.0 ms of kernels on those
12 GELUs (benchmarks/fp8_kernels.py --parts profile, docs/benchmarks.md). torch._addmm_activation(bias, x,
weight.t(), use_gelu=True) runs the product with cuBLASLt's GELU epilogue instead, applied as each tile is
written, and torch.compile keeps the call whole (Inductor falls back to the ATen op). That GELU is the tanh
form, within 5e-4 of the exact erf form nn.GELU computes, the size of fp16's own rounding of the values
around it; on CPUs the op computes the exact form. fp32 keeps nn.GELU (the exact reference); fp8 has its
own (float8.py: fc2's row kernel). The swap is the torch GPU runtime's (TorchRuntime), on its own copy of
the model.
"""
from __future__ import annotations

import torch
from torch import nn

from rapidpose.model.vitpose import Mlp


class LinearGELU(nn.Module):
    """GELU(linear(x)) as one torch._addmm_activation, holding the Linear's own parameters (so the same
    state_dict), for inference."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x):
        rows = x.reshape(-1, self.in_features)  # the epilogue needs a 2-D product
        y = torch._addmm_activation(self.bias, rows, self.weight.t(), use_gelu=True)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, GELU (tanh form on GPUs) after"


def fuse_mlp_gelu(model) -> int:
    """Every Mlp whose act is the exact nn.GELU and whose fc1 is a Linear with a bias gets fc1 as a
    LinearGELU and act as an Identity, in place; returns how many. For a runtime's own copy in half
    precision on a GPU (the modules are shared with the copy's, not duplicated)."""
    count = 0
    for mlp in model.modules():
        act = getattr(mlp, "act", None)
        if type(mlp) is not Mlp or type(mlp.fc1) is not nn.Linear or mlp.fc1.bias is None:
            continue
        if not isinstance(act, nn.GELU) or act.approximate != "none":
            continue
        mlp.fc1, mlp.act = LinearGELU(mlp.fc1), nn.Identity()
        count += 1
    return count
