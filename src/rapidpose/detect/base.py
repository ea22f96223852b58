"""What every person detector shares: the protocol, the onnxruntime session, letterbox and NMS."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from rapidpose.errors import CheckpointError, InputError
from rapidpose.topdown.geometry import box_iou


class Detector:
    """Image in, person boxes out.

    `detector(image)` takes an RGB uint8 (H, W, 3) image and returns `(boxes, scores)`: boxes (N, 4)
    float32 x1, y1, x2, y2 in image pixels, clipped to the image; scores (N,) float32; person class
    only, scores above `self.threshold`, sorted by score, best first. Subclasses implement `_detect`.
    """

    threshold: float = 0.3

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = check_image(image)
        boxes, scores = self._detect(image)
        return finish(boxes, scores, image.shape, self.threshold)

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw person boxes (any order, maybe outside the image) and their scores."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(getattr(self, 'path', '?'))!r}, threshold={self.threshold})"


def check_image(image) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image; a 2-D grayscale one is repeated into three channels."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"images must be uint8 RGB arrays; got dtype {image.dtype} (convert with .astype(np.uint8))")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"images must be (H, W, 3) RGB arrays; got shape {image.shape}")
    return image


def finish(boxes, scores, image_shape, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep scores above threshold, clip to the image, drop boxes left empty, sort best first."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    h, w = image_shape[:2]
    boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
    keep = (scores > threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return np.ascontiguousarray(boxes[order]), np.ascontiguousarray(scores[order])


def onnx_session(path, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session on CUDA when asked for and available, else on CPU (with `threads`
    intra-op threads; default: onnxruntime's choice, one per core)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = str(device).partition(":")[2] or "0"
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index)}))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # keep onnxruntime's warnings (e.g. unused initialisers) quiet
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        raise CheckpointError(
            f"onnxruntime cannot load {path}: it is corrupt or not an ONNX model "
            f"({type(exc).__name__}: {str(exc).strip()[:200]}). Download it again or pass another file.") from None


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio to fit size (width, height), pad bottom/right with pad_value.

    Returns the padded image and the ratio: input pixels = image pixels * ratio.
    """
    h, w = image.shape[:2]
    ratio = min(size[0] / w, size[1] / h)
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    out = np.full((size[1], size[0], image.shape[2]), pad_value, np.uint8)
    out[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return out, ratio


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best score first.

    Up to _NMS_MATRIX boxes, the IoU of every pair is computed at once and the greedy pass only reads
    it (RTMDet's 30 candidates of a frame: a third of the time of the loop below, which holds the
    GIL throughout). Beyond that, memory stays O(N): each step keeps the best box left and drops, in one
    vector operation, every remaining box that overlaps it by more than iou_threshold (a full N x N
    matrix would be 100 MB for YOLOX's 3549 candidates at threshold 0).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores).reshape(-1), kind="stable")
    if len(order) <= _NMS_MATRIX:
        ranked = boxes[order]
        overlaps = box_iou(ranked, ranked) > iou_threshold  # the same numbers as row by row
        alive = np.ones(len(order), bool)
        keep = []
        for i in range(len(order)):
            if alive[i]:
                keep.append(order[i])
                alive &= ~overlaps[i]
        return np.array(keep, np.int64)
    keep = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[box_iou(boxes[best:best + 1], boxes[order])[0] <= iou_threshold]
    return np.array(keep, np.int64)


_NMS_MATRIX = 1024  # boxes: a 1 MB IoU matrix
