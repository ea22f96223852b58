"""Person detection for many photos at once, of any sizes: `detector.detect_batch(images)`.

`TorchDetector` (the base of rtmdet_torch.BatchedRTMDet and yolox_torch.BatchedYOLOX) runs a
detector's ONNX graph through PyTorch on a device, a whole batch per call. Each image is letterboxed
there exactly as the ONNX detector letterboxes it on the host: cv2's bilinear resize of uint8 images
(fixed-point weights of 11 bits, the horizontal pass first, then the vertical one with its own
rounding) is reproduced in integer arithmetic, so the network sees the very bytes onnxruntime sees and
the boxes differ only by the float arithmetic of the convolutions. Only the rows the resize reads go
to the device (a 1920x1080 photo letterboxed to 320x180 uploads a third of itself).
The batch is decoded on the device, and only each image's candidates cross to the host for its NMS.

`ParallelDetector` is the CPU's way to do the same: copies of the ONNX detector with a few threads
each run the images in parallel (onnxruntime releases the GIL), as the video path's host stage does.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from rapidpose.detect.base import Detector, check_image, finish, nms, onnx_session
from rapidpose.detect.onnx_graph import OnnxConvNet
from rapidpose.errors import InputError

log = logging.getLogger("rapidpose")

GRAPH_BATCHES = (1, 2, 4, 8, 16, 32)  # CUDA graphs are captured for these batch sizes
PAD_VALUE = 114  # letterbox padding, bottom and right (mmdet's and YOLOX's)
_COEF_BITS = 11  # cv2's INTER_RESIZE_COEF_BITS: bilinear weights are integers out of 2048


def letterbox_size(shape, input_size) -> tuple[float, int, int]:
    """(ratio, new width, new height) of base.letterbox for an image of shape (H, W, ...)."""
    h, w = shape[:2]
    ratio = min(input_size[0] / w, input_size[1] / h)
    return ratio, max(1, round(w * ratio)), max(1, round(h * ratio))


def resize_taps(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2's INTER_LINEAR taps along one axis for uint8 images: source indices (i0, i1) and integer
    weights (w0, w1) out of 2048 for each output pixel, as cv2.resize computes them.

    Output pixel d samples at (d + 0.5) * src / dst - 0.5 (in float32, as cv2 does). Along x cv2 clamps
    a sample that falls before the first or after the last pixel onto that pixel (weights 2048, 0);
    along y (clamp False) it keeps the weights and only clips the rows it reads, which is not the same
    once its vertical pass has rounded each product on its own.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s.astype(np.float32)
    if clamp:
        low, high = s < 0, s >= src - 1
        f[low | high] = 0
        s = np.where(low, 0, np.where(high, src - 1, s))
    one = np.float32(1 << _COEF_BITS)
    w0 = np.rint((np.float32(1) - f) * one).astype(np.int32)  # cvRound: half to even, as np.rint
    w1 = np.rint(f * one).astype(np.int32)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


class _Plan:
    """How an image of one shape becomes its letterbox: the taps of the resize along x (into the
    image's columns) and along y (into the rows it reads, which alone are uploaded when they are
    less than half of the image)."""

    def __init__(self, shape, input_size):
        h, w = shape[:2]
        self.shape = (h, w)
        self.ratio, self.new_w, self.new_h = letterbox_size(shape, input_size)
        self.x = resize_taps(w, self.new_w, clamp=True)
        y0, y1, b0, b1 = resize_taps(h, self.new_h, clamp=False)
        rows = np.union1d(y0, y1)
        self.rows = rows if len(rows) * 2 <= h else None
        if self.rows is not None:
            y0, y1 = np.searchsorted(rows, y0), np.searchsorted(rows, y1)
        self.y = (y0, y1, b0, b1)
        self.read_h = h if self.rows is None else len(self.rows)
        self.read_w = w

    def read(self, image):
        """The rows of the image the resize reads (numpy on the host, or a tensor where it is).
        (Rows, not columns too: a row is one contiguous copy, while gathering columns of 3 bytes costs
        the host more than uploading them; the device's horizontal pass picks its columns itself.)"""
        if self.rows is None:
            return image if torch.is_tensor(image) else np.ascontiguousarray(image)
        if torch.is_tensor(image):
            return image.index_select(0, torch.as_tensor(self.rows, device=image.device))
        return image.take(self.rows, axis=0)


@functools.lru_cache(maxsize=256)
def plan_for(h: int, w: int, input_size: tuple) -> _Plan:
    """The plan of an image size (photos come in a few sizes: planning one costs a fraction of a ms)."""
    return _Plan((h, w), input_size)


def _taps_table(plans, axis: str, length: int) -> np.ndarray:
    """(4, B, length) int64: i0, i1, w0, w1 of every image along one axis, zero past its resized size."""
    table = np.zeros((4, len(plans), length), np.int64)
    for i, plan in enumerate(plans):
        taps = plan.x if axis == "x" else plan.y
        n = len(taps[0])
        for k in range(4):
            table[k, i, :n] = taps[k]
    return table


def resize_letterbox(regions: torch.Tensor, plans, input_size) -> torch.Tensor:
    """(B, H, W, 3) int32 letterboxes (0..255, PAD_VALUE around) from regions (B, h, w, 3) uint8 holding
    the rows each plan reads at their top left: cv2.resize's bytes, in cv2's integer arithmetic.

    Horizontal pass: D = p0 * a0 + p1 * a1 (exact). Vertical pass as cv2's SIMD code rounds it:
    (((D0 >> 4) * b0) >> 16) + (((D1 >> 4) * b1) >> 16), then (+ 2) >> 2.
    """
    width, height = input_size
    b, rh, _, c = regions.shape
    device = regions.device
    x = torch.from_numpy(_taps_table(plans, "x", width)).to(device, non_blocking=True)
    y = torch.from_numpy(_taps_table(plans, "y", height)).to(device, non_blocking=True)
    cols0 = x[0][:, None, :, None].expand(b, rh, width, c)
    cols1 = x[1][:, None, :, None].expand(b, rh, width, c)
    a0, a1 = x[2, :, None, :, None].int(), x[3, :, None, :, None].int()
    d = regions.gather(2, cols0).int() * a0 + regions.gather(2, cols1).int() * a1  # (B, h, W, 3)
    rows0 = y[0][:, :, None, None].expand(b, height, width, c)
    rows1 = y[1][:, :, None, None].expand(b, height, width, c)
    b0, b1 = y[2, :, :, None, None].int(), y[3, :, :, None, None].int()
    out = (((d.gather(1, rows0) >> 4) * b0) >> 16) + (((d.gather(1, rows1) >> 4) * b1) >> 16)
    out = ((out + 2) >> 2).clamp_(0, 255)
    sizes = torch.tensor([(p.new_h, p.new_w) for p in plans], device=device)
    inside = ((torch.arange(height, device=device)[None, :, None] < sizes[:, :1, None])
              & (torch.arange(width, device=device)[None, None, :] < sizes[:, 1:, None]))
    return out.masked_fill_(~inside[..., None], PAD_VALUE)


class TorchDetector:
    """A detector's ONNX graph run by torch on `device` for batches of images.

    `detect_batch(images)`: RGB uint8 (H, W, 3) images of any sizes (numpy, or tensors on the device)
    -> per image (boxes (N, 4), scores (N,)) float32 numpy, as the ONNX detector gives for it alone
    (Detector's contract: image pixels, clipped, above the threshold, best first).
    `detector(frames, threshold)`: frames (B, 3, H, W) float RGB 0..255 already on the device, all of
    one size (the video path), resized there by torch's bilinear interpolation.

    Subclasses say which graph tensors to stop at (`outputs`), how the network takes its input
    (`_network_input`) and how its raw outputs become scores and boxes in letterbox pixels (`_decode`);
    NMS (`iou_threshold`, `max_detections`, `min_score`) runs per image on the host, on the candidates.
    One caller at a time.
    """

    iou_threshold = 0.45
    max_detections: int | None = None
    min_score = 0.0

    def __init__(self, detector: Detector, device, outputs: list[str]):
        self.path, self.threshold, self.input_size = detector.path, detector.threshold, detector.input_size
        self.device = torch.device(device)
        self.net = OnnxConvNet(self.path, outputs).to(self.device).eval()
        self._graphs: dict = {}
        self._pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        self._uploader = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, device='{self.device}', threshold={self.threshold})"

    # --- the two entry points -------------------------------------------------------------------
    @torch.inference_mode()
    def detect_batch(self, images, threshold: float | None = None,
                     batch_size: int = GRAPH_BATCHES[-1]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Boxes and scores of each image (see the class). A bad image (not uint8, not (H, W, 3)) is
        logged and gets no boxes; the others go on. On a GPU the next chunk of `batch_size` images is
        uploaded and run while the host does the NMS of this one."""
        threshold = self.threshold if threshold is None else float(threshold)
        images = list(images)
        results: list = [None] * len(images)
        good = []
        for i, image in enumerate(images):
            try:
                good.append((i, self._check(image)))
            except InputError as exc:
                log.warning("image %d skipped by the detector: %s", i, exc)
                results[i] = _no_boxes()
        pending = None
        for start in range(0, len(good), max(1, int(batch_size))):
            chunk = good[start:start + max(1, int(batch_size))]
            submitted = self._submit([image for _, image in chunk], threshold), [i for i, _ in chunk]
            if pending is not None:
                self._collect(*pending, results)
            pending = submitted
        if pending is not None:
            self._collect(*pending, results)
        return results

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor, threshold: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        threshold = self.threshold if threshold is None else float(threshold)
        b, _, h, w = frames.shape
        if b == 0:
            return []
        x, ratio = self.letterbox(frames)
        scores, boxes = self._decode(self._run(x))
        ratios = torch.full((b,), ratio, dtype=torch.float32, device=frames.device)
        return self._finish(self._candidates(scores, boxes, ratios, threshold), [(h, w)] * b, threshold)

    # --- preparing the input ----------------------------------------------------------------------
    def letterbox(self, frames: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The network input for same-size frames (B, 3, H, W) float 0..255: torch's bilinear resize
        rounded to 0..255 levels (cv2's bytes give or take a level), padded, as `_network_input` wants."""
        _, _, h, w = frames.shape
        width, height = self.input_size
        ratio, new_w, new_h = letterbox_size((h, w), self.input_size)
        resized = F.interpolate(frames.float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
        x = torch.full((len(frames), 3, height, width), float(PAD_VALUE), device=frames.device)
        x[:, :, :new_h, :new_w] = resized.round_().clamp_(0, 255)
        return self._network_input(x), ratio

    def letterbox_images(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Letterboxes (B, 3, H, W) float 0..255 of checked images of any sizes (the bytes base.letterbox
        makes) and their ratios (B,) float32, on the device."""
        plans = [plan_for(int(image.shape[0]), int(image.shape[1]), tuple(self.input_size)) for image in images]
        reads = [plan.read(image) for plan, image in zip(plans, images)]
        on_host = [k for k, r in enumerate(reads) if not torch.is_tensor(r)]
        if on_host:
            if self._uploader is None:
                from rapidpose.topdown.gpu_ops import PinnedUploader

                self._uploader = PinnedUploader(self.device)
            for k, tensor in zip(on_host, self._uploader([reads[k] for k in on_host])):
                reads[k] = tensor
        h, w = max(p.read_h for p in plans), max(p.read_w for p in plans)
        regions = torch.zeros((len(plans), h, w, 3), dtype=torch.uint8, device=self.device)
        for k, (plan, region) in enumerate(zip(plans, reads)):
            regions[k, :plan.read_h, :plan.read_w] = region.to(self.device, non_blocking=True)
        x = resize_letterbox(regions, plans, self.input_size).permute(0, 3, 1, 2).float()
        ratios = torch.tensor([p.ratio for p in plans], dtype=torch.float32).to(self.device, non_blocking=True)
        return x, ratios

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """RGB letterboxes (B, 3, H, W) float 0..255 -> what the graph takes."""
        raise NotImplementedError

    def _check(self, image):
        if not torch.is_tensor(image):
            return check_image(image)
        if image.dtype != torch.uint8:
            raise InputError(f"image tensors must be uint8 RGB (H, W, 3); got dtype {image.dtype}")
        if image.ndim == 2:
            image = image[:, :, None].expand(-1, -1, 3)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise InputError(f"image tensors must be (H, W, 3) RGB; got shape {tuple(image.shape)}")
        return image

    # --- the network ------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        # full float32 convolutions (no TF32): the export's numbers, at a cost these small networks never feel
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
                self._graphs[key] = CudaGraph.capture(self.net, key, torch.float32, self.device, self._pool,
                                                      "the detector")
                if self._graphs[key] is None:
                    self._pool = torch.cuda.graph_pool_handle()
            graph = self._graphs[key]
            out.append([y.clone() for y in graph(part)] if graph is not None else self.net(part))
        return [torch.cat(level) for level in zip(*out)] if len(out) > 1 else out[0]

    def _decode(self, heads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Person scores (B, A) and boxes (B, A, 4) x1, y1, x2, y2 in letterbox pixels."""
        raise NotImplementedError

    # --- to each image's boxes --------------------------------------------------------------------
    def _submit(self, images, threshold: float):
        """Queue a chunk's work on the device; nothing waits for it yet."""
        x, ratios = self.letterbox_images(images)
        scores, boxes = self._decode(self._run(self._network_input(x)))
        return self._candidates(scores, boxes, ratios, threshold), [tuple(i.shape[:2]) for i in images], threshold

    def _collect(self, submitted, indices, results):
        candidates, shapes, threshold = submitted
        for i, found in zip(indices, self._finish(candidates, shapes, threshold)):
            results[i] = found

    def _candidates(self, scores, boxes, ratios, threshold: float):
        """The boxes above the threshold, in image pixels, and how many each image has (device tensors)."""
        keep = scores > max(threshold, self.min_score)
        boxes = boxes / ratios[:, None, None]
        return keep.sum(1), scores[keep], boxes[keep]

    def _finish(self, candidates, shapes, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        counts, scores, boxes = candidates
        counts = counts.tolist()  # the one wait for the device
        scores, boxes = scores.cpu().numpy(), boxes.cpu().numpy()
        results, start = [], 0
        for n, shape in zip(counts, shapes):
            s, bx = scores[start:start + n], boxes[start:start + n]
            start += n
            kept = nms(bx, s, self.iou_threshold)[:self.max_detections]
            results.append(finish(bx[kept], s[kept], shape, threshold))
        return results


class ParallelDetector:
    """`detect_batch(images)` on CPUs: copies of an ONNX detector, a few onnxruntime threads each, run
    the images in parallel (one copy with all cores where there are fewer than 8). The boxes are the
    detector's own, image by image."""

    def __init__(self, detector: Detector, workers: int | None = None, device: str = "cpu"):
        cores = os.cpu_count() or 1
        workers = max(1, int(workers or min(8, cores // 4)))
        self.detector, self.threshold = detector, detector.threshold
        self.copies = [detector]
        if workers > 1 and hasattr(detector, "path"):
            threads = max(1, cores // workers)
            self.copies = []
            for _ in range(workers):  # the same detector (input size, thresholds), a session of its own
                clone = copy.copy(detector)
                clone.session = onnx_session(detector.path, device, threads)
                self.copies.append(clone)
        self._free: queue.SimpleQueue = queue.SimpleQueue()  # each copy serves one thread at a time
        for clone in self.copies:
            self._free.put(clone)
        self.pool = ThreadPoolExecutor(len(self.copies), thread_name_prefix="detect") if len(self.copies) > 1 else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detector!r}, workers={len(self.copies)})"

    def detect_batch(self, images, threshold: float | None = None, batch_size: int | None = None):
        """Boxes and scores of each image, as `detector(image)` gives them; a bad image is logged and
        gets no boxes. (batch_size: ignored, for the same call as TorchDetector's.)"""
        threshold = self.threshold if threshold is None else float(threshold)
        images = list(images)

        def one(k, image):
            try:
                image = check_image(image)
            except InputError as exc:
                log.warning("image %d skipped by the detector: %s", k, exc)
                return _no_boxes()
            detector = self._free.get()
            try:
                boxes, scores = detector._detect(image)  # not __call__: the threshold is this call's
            finally:
                self._free.put(detector)
            return finish(boxes, scores, image.shape, threshold)

        if self.pool is None:
            return [one(k, image) for k, image in enumerate(images)]
        return list(self.pool.map(one, range(len(images)), images))

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _no_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
