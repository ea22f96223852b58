"""YOLOX-nano (80 COCO classes) with its raw head output decoded here, person class only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rapidpose.detect.base import Detector, letterbox, nms, onnx_session

STRIDES = (8, 16, 32)


def make_grid(input_size, strides=STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets (A, 2) as (x, y) and strides (A, 1) for every anchor point, in the head's order.

    The head concatenates strides 8, 16, 32; within one, cells run row by row (y outer, x inner).
    """
    w, h = input_size
    grids, steps = [], []
    for s in strides:
        ys, xs = np.mgrid[0:h // s, 0:w // s]
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full((xs.size, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)


class YOLOX(Detector):
    """YOLOX from an ONNX export without decoding: input `images` (1, 3, H, W) BGR 0-255,
    output (1, A, 5 + classes) = dx, dy, log w, log h, objectness, class scores (both after sigmoid).
    """

    def __init__(self, path, device: str = "cpu", threshold: float = 0.3, iou_threshold: float = 0.45,
                 session=None):
        self.path = Path(path)
        self.threshold = float(threshold)
        self.iou_threshold = float(iou_threshold)
        self.session = session or onnx_session(self.path, device)  # load_detector passes its own
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        h, w = (int(d) if isinstance(d, int) else 416 for d in inp.shape[2:4])
        self.input_size = (w, h)
        self.grid, self.strides = make_grid(self.input_size)

    def _detect(self, image):
        padded, ratio = letterbox(image, self.input_size)
        # YOLOX >= 0.1.1 takes BGR 0-255 without normalisation
        x = padded[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0][0]
        scores = out[:, 4] * out[:, 5]  # objectness x person (class 0)
        cand = scores > self.threshold  # decode and NMS only the candidates
        out, scores = out[cand], scores[cand]
        xy = (out[:, :2] + self.grid[cand]) * self.strides[cand]
        half_wh = np.exp(out[:, 2:4]) * self.strides[cand] / 2
        boxes = np.concatenate([xy - half_wh, xy + half_wh], axis=1) / ratio
        keep = nms(boxes, scores, self.iou_threshold)
        return boxes[keep], scores[keep]
