"""RTMDet on a torch device, many images per call: the GPU's detector for video frames and photos.

The mmdeploy export runs one image per call and keeps its decoding and NMS inside the graph. Here the
graph's convolutions run through PyTorch (onnx_graph.OnnxConvNet, a CUDA graph per batch size on
GPUs) for a whole batch, and the rest of the export is done as it does it: letterbox to the input size
(resize keeping the ratio, pad 114 bottom/right, normalise), sigmoid class scores, boxes = anchor
point -/+ the predicted distances (already times the stride in the graph), then NMS at IoU 0.6
keeping at most 100 boxes. Only the candidates above the score threshold cross to the host, where the
NMS of a few dozen boxes costs microseconds. Batches: `detector(frames)` for same-size frames already
on the device (video), `detector.detect_batch(images)` for photos of any sizes (batched.TorchDetector).
"""
from __future__ import annotations

import torch

from rapidpose.detect.batched import GRAPH_BATCHES, TorchDetector
from rapidpose.detect.rtmdet import MEAN, STD, RTMDet

__all__ = ["BatchedRTMDet", "head_outputs", "GRAPH_BATCHES"]

IOU_THRESHOLD = 0.6  # the export's NonMaxSuppression settings
MAX_DETECTIONS = 100
MIN_SCORE = 0.05


def head_outputs(path) -> list[str]:
    """The raw head tensors of an mmdeploy RTMDet export: the inputs of its NCHW -> NHWC transposes."""
    import onnx

    graph = onnx.load(str(path)).graph
    return [n.input[0] for n in graph.node
            if n.op_type == "Transpose" and list(onnx.helper.get_attribute_value(n.attribute[0])) == [0, 2, 3, 1]]


class BatchedRTMDet(TorchDetector):
    """`detector(frames, threshold)`: frames (B, 3, H, W) float RGB 0..255 on the detector's device, all
    of one size -> per frame (boxes (N, 4), scores (N,)) numpy, as RTMDet gives for each frame alone.
    `detector.detect_batch(images, threshold)`: RGB uint8 images of any sizes, the same per image."""

    iou_threshold = IOU_THRESHOLD
    max_detections = MAX_DETECTIONS
    min_score = MIN_SCORE

    def __init__(self, rtmdet: RTMDet, device="cuda"):
        super().__init__(rtmdet, device, head_outputs(rtmdet.path))
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        self._grids: dict = {}

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean) / self._std  # the padded image as a whole, pad pixels included

    def _decode(self, heads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Person scores (B, A) and boxes (B, A, 4) in letterbox pixels over all levels, finest first."""
        classes = sorted((t for t in heads if t.shape[1] != 4), key=lambda t: -t.shape[2])
        distances = sorted((t for t in heads if t.shape[1] == 4), key=lambda t: -t.shape[2])
        scores, boxes = [], []
        for cls, dist in zip(classes, distances):
            b, _, h, w = cls.shape
            scores.append(torch.sigmoid(cls[:, 0].reshape(b, -1)))  # class 0: person
            points = self._points(h, w, self.input_size[1] // h)
            d = dist.permute(0, 2, 3, 1).reshape(b, -1, 4)
            boxes.append(torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1))
        return torch.cat(scores, 1), torch.cat(boxes, 1)

    def _points(self, h: int, w: int, stride: int) -> torch.Tensor:
        key = (h, w, stride)
        if key not in self._grids:
            ys, xs = torch.meshgrid(torch.arange(h, device=self.device), torch.arange(w, device=self.device),
                                    indexing="ij")
            self._grids[key] = torch.stack([xs, ys], -1).reshape(-1, 2).float() * stride
        return self._grids[key]
