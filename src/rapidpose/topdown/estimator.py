"""PoseEstimator: detect -> crop -> network batches shared by the people of all images -> decode."""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import numpy as np

from rapidpose.topdown.decode import decode_heatmaps, flip_back
from rapidpose.errors import InputError, RapidPoseError
from rapidpose.topdown.geometry import boxes_to_center_scale, normalize_crops, udp_matrices, usable_boxes, warp_crops
from rapidpose.io import check_color, is_path, to_rgb
from rapidpose.results import Poses
from rapidpose.timing import no_timer

log = logging.getLogger("rapidpose")


def _decode_on_cpu(heatmaps, center, scale):
    """The torch decoder when torch is there (5-10x faster on CPU: it blurs only around each peak),
    else the numpy one; both give the official result (tests/test_gpu_ops.py)."""
    try:
        import torch

        from rapidpose.topdown.gpu_ops import decode_heatmaps_torch
    except ImportError:
        return decode_heatmaps(heatmaps, center, scale)
    return decode_heatmaps_torch(torch.from_numpy(heatmaps), center, scale)


def _is_tensor(image) -> bool:
    return type(image).__module__.startswith("torch")


def _label(image, index: int, names) -> str:
    """How messages name an image: its given name, else its path, else its position."""
    if names is not None:
        return f"'{names[index]}'"
    if is_path(image):
        return f"'{image}'"
    return f"image {index}"


def _crop_chunks(images, per_image_matrices, size: int, total: int):
    """(start, [(image, matrices), ...]) for each run of `size` consecutive people of all images
    (the last one shorter): start is its first person's index over all images. Without any people,
    one empty chunk, so that the network still tells the heatmaps' shape."""
    if total == 0:
        yield 0, []
        return
    parts, filled, start = [], 0, 0
    for image, matrices in zip(images, per_image_matrices):
        at = 0
        while at < len(matrices):
            take = min(size - filled, len(matrices) - at)
            parts.append((image, matrices[at:at + take]))
            filled, at = filled + take, at + take
            if filled == size:
                yield start, parts
                parts, start, filled = [], start + size, 0
    if parts:
        yield start, parts


_NO_BOXES, _NO_SCORES = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)


def _given_boxes(image, given, label: str) -> tuple[np.ndarray, np.ndarray]:
    """An image's (N, 4) float32 xyxy boxes and (N,) scores as given ((N, 4), or (N, 5) with scores; None: the
    whole image); an InputError naming the image for anything that is not boxes."""
    if given is None:
        h, w = image.shape[:2]
        return np.array([[0, 0, w, h]], np.float32), np.ones(1, np.float32)
    try:
        given = np.asarray(given, np.float32)
        given = given.reshape(-1, given.shape[-1] if given.ndim == 2 else 4)
    except (TypeError, ValueError):
        given = None
    if given is None or given.shape[1] < 4:
        raise InputError(f"{label}: its boxes must be an (N, 4) array of x1, y1, x2, y2 (or (N, 5) with scores); "
                         f"got {np.shape(given) if given is not None else 'something else'}")
    scores = given[:, 4].copy() if given.shape[1] > 4 else np.ones(len(given), np.float32)
    return given[:, :4].copy(), scores  # copies: results never share memory with the caller's arrays


def _usable_boxes(images, per_image_boxes, per_image_scores, label) -> tuple[list, list]:
    """Each image's boxes and scores without the empty, non-finite and outside ones (each logged), checked
    for all images at once: a call's 200 people in one pass, not 32 (it is on the GPU path's critical path)."""
    counts = [len(b) for b in per_image_boxes]
    if not sum(counts):
        return per_image_boxes, per_image_scores
    boxes = np.concatenate(per_image_boxes)
    sizes = np.repeat([img.shape[1::-1] if img is not None else (0, 0) for img in images], counts, axis=0)
    ok, keep = usable_boxes(boxes, sizes)
    if keep.all():
        return per_image_boxes, per_image_scores
    starts = np.cumsum([0] + counts[:-1])
    for at in np.flatnonzero(~keep):
        i = int(np.searchsorted(starts, at, side="right") - 1)
        why = "is empty or not finite" if not ok[at] else "lies outside the image"
        log.warning("%s: box %d %s %s: skipped", label(i), at - starts[i], boxes[at].tolist(), why)
    per_image_keep = np.split(keep, starts[1:])
    return ([b[k] for b, k in zip(per_image_boxes, per_image_keep)],
            [np.asarray(s, np.float32)[k] for s, k in zip(per_image_scores, per_image_keep)])


class PoseEstimator:
    """Top-down ViTPose: `est(image)` for one image, `est.predict(images, boxes)` for many.

    An image is a numpy array (H, W, 3), RGB unless color='bgr' says it comes from OpenCV
    (cv2.imread, cv2.VideoCapture); an image file's path (str or Path); or a PIL image. Gray, alpha,
    16-bit and float images are converted.

    model: a hub name ('vitpose-b'), a checkpoint path, an exported .onnx/.xml file, a loaded ViTPose
    module, or a backend made already (rapidpose.runtime). keypoint_set: that of an exported file
    without rapidpose metadata ('coco', 'ap10k', ...).
    detector: None (boxes given, or the whole image), a detector name/path, or a callable
    image -> (boxes, scores); it gets RGB images.
    color: the channel order of numpy (and tensor) images, 'rgb' (the default) or 'bgr'; predict's
    color= overrides it for one call. Paths and PIL images are always decoded as RGB.
    """

    def __init__(self, model="vitpose-b", detector=None, device: str = "cpu", flip_test: bool = False,
                 detector_threshold: float = 0.3, batch_size: int = 64, dataset_index: int = 0,
                 backend: str = "auto", precision: str = "auto", compile: bool = False,
                 keypoint_set: str | None = None, color: str = "rgb"):
        from rapidpose.runtime import make_runtime

        self.color = check_color(color)  # before loading anything: a typo fails at once
        self.runtime = make_runtime(model, backend=backend, device=device, precision=precision,
                                    batch_size=batch_size, dataset_index=dataset_index, compile=compile,
                                    keypoint_set=keypoint_set)
        self.skeleton = self.runtime.skeleton
        self.input_size = self.runtime.input_size
        # crops and heatmaps stay on the GPU when the backend can take tensors there
        self.on_gpu = getattr(self.runtime, "device", "cpu").startswith("cuda") and hasattr(self.runtime, "run")
        self.flip_test = flip_test
        self._flip_index = self.skeleton.flip_index()
        if flip_test and not self.skeleton.flip_pairs:
            log.warning("flip test asked for, but keypoint set '%s' has no left/right pairs: "
                        "only the mirror image is averaged", self.skeleton.name)
        self.detector = self._make_detector(detector, device, detector_threshold)
        self.detector_threshold = detector_threshold
        self.timer = no_timer  # benchmarks attach a timing.StageTimer
        self._uploader = None  # pinned host buffers of the GPU path, made on first use
        self._batched = None  # the detector for many images at once, made on first use
        self._batched_lock = threading.Lock()  # it serves one caller at a time

    @staticmethod
    def _make_detector(detector, device, threshold):
        if detector is None or (isinstance(detector, str) and detector.lower() == "none"):
            return None
        if callable(detector):
            return detector
        from rapidpose.detect import load_detector

        return load_detector(detector, device=device.split(":")[0] if device != "auto" else "cpu",
                             threshold=threshold)

    def detect(self, images: Sequence) -> list[np.ndarray]:
        """Person boxes of many RGB images at once: per image an (N, 5) float32 array, x1, y1, x2, y2,
        score (above the detector's threshold). Where the network runs on a GPU, RTMDet and YOLOX run
        there too, on all the images in batches (detect.load_batched_detector: the ONNX session's boxes
        within a stated tolerance), and the images may be (H, W, 3) uint8 tensors already there; on
        CPUs copies of the ONNX session run the images in parallel. A detector callable of your own
        runs image by image. A bad image is logged and gets no boxes. Safe to call from several
        threads (one at a time)."""
        if self.detector is None:
            raise InputError("this estimator has no detector: give boxes, or make it with detector='rtmdet-nano'")
        with self._batched_lock:
            if self._batched is None:
                self._batched = self._make_batched()
            found = self._batched.detect_batch(list(images))
        return [np.concatenate([b.reshape(-1, 4), s.reshape(-1, 1)], 1).astype(np.float32) for b, s in found]

    def _make_batched(self):
        from rapidpose.detect import Detector, load_batched_detector

        if isinstance(self.detector, Detector):
            device = self.runtime.device if self.on_gpu else "cpu"
            return load_batched_detector(self.detector, device=device, threshold=self.detector_threshold)
        return _OneByOne(self.detector)

    def __call__(self, image, boxes=None, color: str | None = None, name: str | None = None) -> Poses:
        return self.predict([image], None if boxes is None else [boxes], color=color,
                            names=None if name is None else [name])[0]

    def predict(self, images: Sequence, boxes: Sequence | None = None, return_heatmaps: bool = False,
                color: str | None = None, names: Sequence[str] | None = None) -> list[Poses]:
        """Poses for each image. boxes: per image an (N, 4) xyxy array (or (N, 5) with scores).

        images: numpy arrays, image file paths or PIL images (see the class); color: 'rgb' or 'bgr',
        the channel order of the numpy images of this call (default: the estimator's).
        names: one label per image for the messages (such as the file each array was read from);
        without it an image given as a path is named by its path, others as 'image i'.
        Without boxes the detector finds people; with neither, the whole image is one person.
        A bad image or box is reported (logged) and skipped: its Poses is empty, the rest go on.
        People go through the network in batches of batch_size, across images; on the CPU each
        batch is cropped and decoded on its own, so memory is bounded by the batch, not by the number
        of people. return_heatmaps=True keeps every person's heatmaps (K x 64 x 48 float32, 209 KB
        for 17 keypoints): with it, memory does grow with the number of people.
        On a GPU, images may also be (H, W, 3) tensors already there (values 0..255, any dtype).
        """
        color = self.color if color is None else check_color(color)
        if boxes is not None and len(boxes) != len(images):
            raise InputError(f"got {len(images)} images but {len(boxes)} box arrays: give one (N, 4) array per image")
        if names is not None and (isinstance(names, str) or len(names) != len(images)):
            raise InputError(f"got {len(images)} images but {1 if isinstance(names, str) else len(names)} "
                             f"names: give one name per image (or none)")
        rgb = []
        for i, image in enumerate(images):
            try:
                if self.on_gpu and _is_tensor(image):
                    rgb.append(image.flip(-1) if color == "bgr" and image.ndim == 3 else image)
                else:
                    rgb.append(to_rgb(image, _label(image, i, names), color))
            except RapidPoseError as exc:
                log.warning("skipped: %s", exc)
                rgb.append(None)
        if boxes is None and self.detector is not None:  # all images' people found at once
            good = [i for i, img in enumerate(rgb) if img is not None]
            with self.timer("detect"):
                found = dict(zip(good, self.detect([rgb[i] for i in good]))) if good else {}
            boxes = [found.get(i) for i in range(len(rgb))]
        per_image_boxes, per_image_scores = [], []
        for i, img in enumerate(rgb):
            b, s = _NO_BOXES, _NO_SCORES
            if img is not None:
                try:
                    b, s = _given_boxes(img, None if boxes is None else boxes[i], _label(images[i], i, names))
                except RapidPoseError as exc:
                    log.warning("skipped: %s", exc)
                    rgb[i] = None
            per_image_boxes.append(b)
            per_image_scores.append(s)
        per_image_boxes, per_image_scores = _usable_boxes(rgb, per_image_boxes, per_image_scores,
                                                          lambda i: _label(images[i], i, names))

        counts = [len(b) for b in per_image_boxes]
        all_boxes = np.concatenate(per_image_boxes) if per_image_boxes else np.zeros((0, 4), np.float32)
        center, scale = boxes_to_center_scale(all_boxes, self.input_size)
        matrices = udp_matrices(center, scale, self.input_size)
        per_image_matrices = np.split(matrices, np.cumsum(counts)[:-1])
        if self.on_gpu:
            keypoints, scores, heatmaps = self._run_on_gpu(rgb, per_image_matrices, center, scale, return_heatmaps)
        else:
            keypoints, scores, heatmaps = self._run_on_cpu(rgb, per_image_matrices, center, scale, return_heatmaps)

        results, start = [], 0
        for n, b, s in zip(counts, per_image_boxes, per_image_scores):
            stop = start + n
            results.append(Poses(b, s, keypoints[start:stop], scores[start:stop], self.skeleton,
                                 heatmaps=heatmaps[start:stop] if return_heatmaps else None))
            start = stop
        return results

    def track(self, source, tracker: str = "bytetrack", detect_every: int = 1, smooth: bool = False, **options):
        """`for frame_index, poses in est.track(source)`: a video file, a folder or glob of frames, a
        webcam index or a stream URL, frame by frame, with `poses.track_ids`. Options and stages:
        video.track_frames (which also hands out the frames themselves)."""
        from rapidpose.video.pipeline import track_frames

        for frame, poses in track_frames(self, source, tracker, detect_every, smooth, **options):
            yield frame.index, poses

    def _heatmaps(self, x: np.ndarray) -> np.ndarray:
        if not self.flip_test:
            return self.runtime(x)
        both = self.runtime(np.concatenate([x, x[..., ::-1]]))  # originals and mirrors in one batch
        n = len(x)
        return (both[:n] + flip_back(both[n:], self._flip_index)) * 0.5

    def _run_on_cpu(self, images, per_image_matrices, center, scale, keep_heatmaps: bool):
        """Crop, normalise, run and decode one network batch of people at a time. A chunk may take
        the people of several images, and an image's people may fill several chunks; only keypoints
        and scores outlive their chunk, so memory grows with the batch, not with the number of people.
        Kept heatmaps (keep_heatmaps) are the exception: 209 KB a person for 17 keypoints."""
        total = len(center)
        keypoints = scores = heatmaps = None
        for start, parts in _crop_chunks(images, per_image_matrices, self.runtime.batch_size, total):
            with self.timer("crop"):
                crops = [warp_crops(img, m, self.input_size) for img, m in parts]
                if len(crops) != 1:  # several images' people (or none at all)
                    crops = [np.concatenate(crops) if crops
                             else np.zeros((0, self.input_size[1], self.input_size[0], 3), np.uint8)]
                x = normalize_crops(crops.pop())  # pop: the uint8 crops go as soon as x is made
            with self.timer("network"):
                maps = self._heatmaps(x)
                del x
            stop = start + len(maps)
            with self.timer("decode"):
                k, s = _decode_on_cpu(maps, center[start:stop], scale[start:stop])
                if keypoints is None:  # the first chunk tells the keypoint count and the map size
                    keypoints = np.empty((total, *k.shape[1:]), k.dtype)
                    scores = np.empty((total, *s.shape[1:]), s.dtype)
                    if keep_heatmaps:
                        heatmaps = np.empty((total, *maps.shape[1:]), maps.dtype)
                keypoints[start:stop], scores[start:stop] = k, s
                if keep_heatmaps:
                    heatmaps[start:stop] = maps
        return keypoints, scores, heatmaps

    def _run_on_gpu(self, images, per_image_matrices, center, scale, keep_heatmaps: bool):
        """Each image's region that its crops read goes to the GPU once a chunk; crops and heatmaps stay
        there until the keypoints. People go in chunks of exactly one network batch (an image's people may
        fill two: a chunk one crop over the batch would cost a second, nearly empty network run), and
        nothing waits for the GPU until the end, so the host prepares the next chunk while the GPU runs
        this one, and decodes a chunk (BatchDecoder) while the GPU runs the later ones."""
        import torch

        from rapidpose.topdown.gpu_ops import BatchDecoder

        decoder, kept, total = BatchDecoder(center, scale), [], len(center)
        for start, chunk in _crop_chunks(images, per_image_matrices, self.runtime.batch_size, total):
            if not chunk:  # no people: the network still tells the keypoint count and the map size
                maps = self.runtime.run(torch.zeros(0, 3, *self.input_size[::-1]))
            else:
                with self.timer("crop"):
                    x = self._crops_on_gpu(chunk)
                with self.timer("network"):
                    maps = self._network_on_gpu(x)
            with self.timer("decode"):
                decoder.add(start, maps)
            if keep_heatmaps:
                kept.append(maps)
        with self.timer("decode"):
            keypoints, scores = decoder.result()
            heatmaps = torch.cat(kept).cpu().numpy() if keep_heatmaps else None
        return keypoints, scores, heatmaps

    def _crops_on_gpu(self, chunk):
        import torch

        from rapidpose.topdown import crop_kernel
        from rapidpose.topdown.gpu_ops import PinnedUploader, crop_regions, sampling_inverses, warp_crops_with

        dtype = getattr(self.runtime, "input_dtype", torch.float32)
        counts = [len(m) for _, m in chunk]
        matrices = np.concatenate([m for _, m in chunk])
        if self._uploader is None:
            self._uploader = PinnedUploader(self.runtime.device)
        if _is_tensor(chunk[0][0]):  # frames already on the GPU: crops straight from them
            regions = [img for img, _ in chunk]
            sizes = np.repeat(np.array([tuple(r.shape[:2]) for r in regions], np.float64), counts, axis=0)
            (inverse,) = self._uploader([sampling_inverses(matrices, sizes)])
            return warp_crops_with(regions, inverse, counts, self.input_size, dtype=dtype)
        # only the part of each image that its crops read goes to the GPU
        views, matrices = crop_regions([img for img, _ in chunk], matrices, counts, self.input_size)
        if crop_kernel.available(self.runtime.device):  # the regions and the crop table in one upload, one launch
            table_bytes = len(matrices) * crop_kernel.TABLE_COLUMNS * 8
            offsets, _ = PinnedUploader.layout([table_bytes] + [v.nbytes for v in views])
            table = crop_kernel.crop_table(matrices, views, counts, offsets[1:])
            buffer = self._uploader.upload([table] + views)
            return crop_kernel.warp_crops_packed(buffer, buffer[:table_bytes].view(torch.float64).view(table.shape),
                                                 self.input_size, dtype=dtype)
        sizes = np.repeat(np.array([v.shape[:2] for v in views], np.float64), counts, axis=0)
        inverse, *regions = self._uploader([sampling_inverses(matrices, sizes)] + views)
        return warp_crops_with(regions, inverse, counts, self.input_size, dtype=dtype)

    def _network_on_gpu(self, x):
        from rapidpose.topdown.gpu_ops import flip_back_torch

        if not self.flip_test:
            return self.runtime.run(x)
        import torch

        both = self.runtime.run(torch.cat([x, x.flip(-1)]))
        n = len(x)
        return (both[:n] + flip_back_torch(both[n:], self._flip_index)) * 0.5


class _OneByOne:
    """A detector callable of the user's behind the batched detectors' detect_batch."""

    def __init__(self, detector):
        self.detector = detector

    def detect_batch(self, images):
        found = []
        for i, image in enumerate(images):
            if _is_tensor(image):
                image = image.cpu().numpy()
            try:
                boxes, scores = self.detector(image)
            except RapidPoseError as exc:
                log.warning("image %d skipped by the detector: %s", i, exc)
                boxes, scores = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
            found.append((np.asarray(boxes, np.float32), np.asarray(scores, np.float32)))
        return found
