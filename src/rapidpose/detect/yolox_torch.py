"""YOLOX on a torch device, many images per call (batched.TorchDetector): `detect_batch(images)`.

The export's layers run through PyTorch up to the head's three per-level outputs (B, 5 + classes,
h, w), before the reshape that fixes its batch at one; the grid decoding of yolox.YOLOX then runs on
the device for the whole batch, and each image's candidates get their NMS (IoU 0.45) on the host.
"""
from __future__ import annotations

import torch

from rapidpose.detect.batched import TorchDetector
from rapidpose.detect.yolox import YOLOX, make_grid
from rapidpose.errors import CheckpointError

__all__ = ["BatchedYOLOX", "head_outputs"]


def head_outputs(path) -> list[str]:
    """The per-level head tensors of a YOLOX export: what its last Concat joins, before each Reshape."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type in ("Transpose", "Identity"):
        node = producer.get(node.input[0])
    levels = [producer.get(name) for name in node.input] if node is not None and node.op_type == "Concat" else []
    if not levels or any(n is None or n.op_type not in ("Reshape", "Flatten") for n in levels):
        raise CheckpointError(f"{path}: not the YOLOX layout this runner knows (output = Transpose(Concat("
                              f"Reshape(level) ...))); run it with onnxruntime instead")
    return [n.input[0] for n in levels]


class BatchedYOLOX(TorchDetector):
    """YOLOX's graph on a device: BGR 0..255 letterboxes (pad 114) in, person boxes per image out,
    as yolox.YOLOX gives for each image alone."""

    def __init__(self, yolox: YOLOX, device="cuda"):
        self.iou_threshold = yolox.iou_threshold
        super().__init__(yolox, device, head_outputs(yolox.path))
        grid, strides = make_grid(self.input_size)
        self._grid = torch.from_numpy(grid).to(self.device)
        self._strides = torch.from_numpy(strides).to(self.device)

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)  # YOLOX >= 0.1.1 takes BGR 0..255, without normalisation

    def _decode(self, heads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        levels = sorted(heads, key=lambda t: -t.shape[2])  # stride 8 first, as make_grid orders cells
        out = torch.cat([t.flatten(2) for t in levels], 2).transpose(1, 2)  # (B, A, 5 + classes)
        scores = out[..., 4] * out[..., 5]  # objectness x person (class 0), both after sigmoid
        xy = (out[..., :2] + self._grid) * self._strides
        half_wh = torch.exp(out[..., 2:4]) * self._strides / 2
        return scores, torch.cat([xy - half_wh, xy + half_wh], dim=-1)
