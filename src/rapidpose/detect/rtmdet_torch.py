"""RTMDet on a torch device, many frames per call: the video path's detector on GPUs.

The mmdeploy export runs one image per call and keeps its decoding and NMS inside the graph. Here the
graph's convolutions run through PyTorch (onnx_graph.OnnxConvNet, a CUDA graph per batch size on
GPUs) for a whole batch of frames already on the device, and the rest of the export is done as it
does it: letterbox to the input size (resize keeping the ratio, pad 114 bottom/right, normalise),
sigmoid class scores, boxes = anchor point -/+ the predicted distances (already times the stride in
the graph), then NMS at IoU 0.6 keeping at most 100 boxes. Only the candidates above the score
threshold cross to the host, where the NMS of a few dozen boxes costs microseconds.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rapidpose.detect.base import finish, nms
from rapidpose.detect.onnx_graph import OnnxConvNet
from rapidpose.detect.rtmdet import MEAN, STD, RTMDet

IOU_THRESHOLD = 0.6  # the export's NonMaxSuppression settings
MAX_DETECTIONS = 100
MIN_SCORE = 0.05
GRAPH_BATCHES = (1, 2, 4, 8, 16, 32)


def head_outputs(path) -> list[str]:
    """The raw head tensors of an mmdeploy RTMDet export: the inputs of its NCHW -> NHWC transposes."""
    import onnx

    graph = onnx.load(str(path)).graph
    return [n.input[0] for n in graph.node
            if n.op_type == "Transpose" and list(onnx.helper.get_attribute_value(n.attribute[0])) == [0, 2, 3, 1]]


class BatchedRTMDet:
    """`detector(frames, threshold)`: frames (B, 3, H, W) float RGB 0..255 on the detector's device, all
    of one size -> per frame (boxes (N, 4), scores (N,)) numpy, as RTMDet gives for each frame alone."""

    def __init__(self, rtmdet: RTMDet, device="cuda"):
        self.path, self.threshold, self.input_size = rtmdet.path, rtmdet.threshold, rtmdet.input_size
        self.device = torch.device(device)
        self.net = OnnxConvNet(self.path, head_outputs(self.path)).to(self.device).eval()
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        self._graphs: dict = {}
        self._pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        self._grids: dict = {}

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor, threshold: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        threshold = self.threshold if threshold is None else float(threshold)
        b, _, h, w = frames.shape
        if b == 0:
            return []
        x, ratio = self.letterbox(frames)
        scores, boxes = self._decode(self._run(x))
        keep = scores > max(threshold, MIN_SCORE)
        counts = keep.sum(1).tolist()  # the one wait for the GPU
        scores, boxes = scores[keep].cpu().numpy(), (boxes[keep] / ratio).cpu().numpy()
        results, start = [], 0
        for n in counts:
            s, bx = scores[start:start + n], boxes[start:start + n]
            start += n
            kept = nms(bx, s, IOU_THRESHOLD)[:MAX_DETECTIONS]
            results.append(finish(bx[kept], s[kept], (h, w), threshold))
        return results

    def letterbox(self, frames: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The network input of RTMDet._detect (cv2's bilinear resize, rounded to 0..255 levels)."""
        _, _, h, w = frames.shape
        width, height = self.input_size
        ratio = min(width / w, height / h)
        new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
        resized = F.interpolate(frames.float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
        x = torch.full((len(frames), 3, height, width), 114.0, device=frames.device)
        x[:, :, :new_h, :new_w] = resized.round_().clamp_(0, 255)
        return (x - self._mean) / self._std, ratio

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        # full float32 convolutions (no TF32): the export's numbers, at a cost this small network never feels
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
            return self._run_graphs(x)

    def _run_graphs(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self._pool is None:
            return self.net(x)
        from rapidpose.runtime.torch_runtime import CudaGraph

        out = []
        for start in range(0, len(x), GRAPH_BATCHES[-1]):
            part = x[start:start + GRAPH_BATCHES[-1]]
            bucket = next(g for g in GRAPH_BATCHES if g >= len(part))
            key = (bucket, *part.shape[1:])
            if key not in self._graphs:
                self._graphs[key] = CudaGraph(self.net, key, torch.float32, self.device, self._pool)
            out.append([y.clone() for y in self._graphs[key](part)])
        return [torch.cat(level) for level in zip(*out)] if len(out) > 1 else out[0]

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
