"""A convolutional ONNX graph run by PyTorch: the part of an exported detector that the GPU should run.

Detectors come as ONNX files (mmdeploy's RTMDet, with its NMS inside and a batch of one; YOLOX, its
head output reshaped for a batch of one). On a GPU machine without onnxruntime-gpu, and for batches of
frames or photos, `OnnxConvNet` runs the graph's layers from the input up to chosen tensors (a
detector's raw head outputs) with torch functions and the file's own weights, so decoding and NMS can
be done batched outside. Only the operators such networks use are
implemented; anything else is a clear error naming the operator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rapidpose.errors import CheckpointError


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x, w, b=None, *, pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), group=1, **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
    return F.conv2d(x, w, b, tuple(strides), (top, left), tuple(dilations), group)


def _max_pool(x, *, kernel_shape, pads=(0, 0, 0, 0), strides=(1, 1), ceil_mode=0, **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise CheckpointError(f"MaxPool with uneven padding {pads} is not supported")
    return F.max_pool2d(x, tuple(kernel_shape), tuple(strides), (top, left), ceil_mode=bool(ceil_mode))


def _resize(x, *, factors, **_):
    return F.interpolate(x, scale_factor=factors, mode="nearest")  # torch's nearest is floor(asymmetric)


def _static_resize(node, attrs, constant) -> tuple[list[str], dict]:
    """Resize by constant scales, read once here (reading a device tensor inside a CUDA graph cannot be)."""
    mode = attrs.get("mode", b"nearest"), attrs.get("coordinate_transformation_mode", b"half_pixel"), \
        attrs.get("nearest_mode", b"round_prefer_floor")
    scales = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if mode != (b"nearest", b"asymmetric", b"floor") or scales is None or scales.size != 4:
        raise CheckpointError(f"Resize {'/'.join(m.decode() for m in mode)} by {node.input[2:]} is not supported "
                              f"(only nearest/asymmetric/floor by constant scales)")
    return node.input[:1], {"factors": [float(v) for v in scales[2:]]}


def _slice(x, *, index, **_):
    return x[index]


def _static_slice(node, constant) -> tuple[list[str], dict]:
    """Slice by constant starts/ends/axes/steps (YOLOX's space-to-depth "Focus" stem), read once here."""
    try:
        args = [None if not name else constant(name) for name in node.input[1:]]
    except KeyError:
        raise CheckpointError(f"Slice {node.name} by computed bounds is not supported (only constant ones)") from None
    starts, ends, axes, steps = (args + [None] * 4)[:4]
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if min(axes) < 0:
        raise CheckpointError(f"Slice {node.name} on negative axes {axes} is not supported")
    index = [slice(None)] * (max(axes) + 1)
    big = 2 ** 62  # ONNX writes "to the end" as INT64_MAX; a Python slice takes any large bound
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(int(np.clip(start, -big, big)), int(np.clip(end, -big, big)), int(step))
    return node.input[:1], {"index": tuple(index)}


_OPS = {
    "Conv": _conv,
    "Add": lambda a, b, **_: a + b,
    "Mul": lambda a, b, **_: a * b,
    "Sigmoid": lambda x, **_: torch.sigmoid(x),
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5, **_: (x * alpha + beta).clamp_(0, 1),
    "Relu": lambda x, **_: F.relu(x),
    "Concat": lambda *xs, axis, **_: torch.cat(xs, dim=axis),
    "GlobalAveragePool": lambda x, **_: x.mean(dim=(2, 3), keepdim=True),
    "MaxPool": _max_pool,
    "Resize": _resize,
    "Identity": lambda x, **_: x,
    "Slice": _slice,
}


class OnnxConvNet(torch.nn.Module):
    """`net(x)` -> the tensors named `outputs`, computed from the graph's single input `x`.

    Only the nodes those outputs depend on are kept (in the file's order, which ONNX requires to be
    topological); weights become buffers, so `.to(device)` moves them.
    """

    def __init__(self, path, outputs: list[str]):
        super().__init__()
        import onnx

        graph = onnx.load(str(path)).graph
        produced_by = {out: node for node in graph.node for out in node.output}
        needed, stack = set(), list(outputs)
        while stack:
            name = stack.pop()
            node = produced_by.get(name)
            if node is not None and id(node) not in needed:
                needed.add(id(node))
                stack.extend(node.input)
        self.input_name = graph.input[0].name
        self.outputs = list(outputs)
        weights = {i.name: i for i in graph.initializer}
        self._steps, constants = [], {}

        def constant(name):
            return constants[name] if name in constants else onnx.numpy_helper.to_array(weights[name])

        for node in graph.node:
            if id(node) not in needed:
                continue
            attrs, inputs = _attrs(node), list(node.input)
            if node.op_type == "Constant":
                constants[node.output[0]] = onnx.numpy_helper.to_array(attrs["value"])
                continue
            if node.op_type not in _OPS:
                raise CheckpointError(f"{Path(path).name}: operator {node.op_type} ({node.name}) is not supported "
                                      f"by the PyTorch runner; run this model with onnxruntime instead")
            if node.op_type == "Resize":
                inputs, attrs = _static_resize(node, attrs, constant)
            elif node.op_type == "Slice":
                inputs, attrs = _static_slice(node, constant)
            self._steps.append((_OPS[node.op_type], inputs, list(node.output), attrs))
        used = {name for _, inputs, _, _ in self._steps for name in inputs}
        self._buffers_by_name = {}
        for init in graph.initializer:
            if init.name in used:
                self._register(init.name, onnx.numpy_helper.to_array(init))
        for name, value in constants.items():
            if name in used:
                self._register(name, value)

    def _register(self, name: str, value: np.ndarray):
        key = f"w{len(self._buffers_by_name)}"
        self.register_buffer(key, torch.from_numpy(np.array(value)), persistent=False)
        self._buffers_by_name[name] = key

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        values = {self.input_name: x}
        for name, key in self._buffers_by_name.items():
            values[name] = getattr(self, key)
        for op, inputs, outputs, attrs in self._steps:
            values[outputs[0]] = op(*(values[i] if i else None for i in inputs), **attrs)
        return [values[name] for name in self.outputs]
