"""What the ONNX Runtime and OpenVINO backends share: input checks, the keypoint set from the file's
metadata, and the batching loop (with padding for fixed-batch exports). Each backend supplies only
`_infer(batch) -> heatmaps`."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_crops(crops, input_size: tuple[int, int]) -> np.ndarray:
    """Crops as a C-contiguous float32 (N, 3, H, W) array, or an InputError that says what is wrong."""
    crops = np.asarray(crops)
    w, h = input_size
    if crops.ndim != 4 or crops.shape[1:] != (3, h, w):
        raise InputError(f"crops must be normalised images of shape (N, 3, {h}, {w}), got {crops.shape}")
    return np.ascontiguousarray(crops, dtype=np.float32)


def skeleton_from(meta: dict, num_keypoints: int):
    """The keypoint set named in an exported file's metadata, else the usual one of that size."""
    from ..skeletons import SKELETONS, skeleton_for

    name = meta.get("skeleton")
    if name in SKELETONS and SKELETONS[name].num_keypoints == num_keypoints:
        return SKELETONS[name]
    return skeleton_for(num_keypoints)


class ExportedRuntime:
    """Subclasses set _input_size (w, h), _num_keypoints, _heatmap_size (h, w), _fixed_batch,
    batch_size and skeleton, and implement _infer."""

    @property
    def num_keypoints(self) -> int:
        return self._num_keypoints

    @property
    def input_size(self) -> tuple[int, int]:
        """Crop size the network takes, as (width, height)."""
        return self._input_size

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = check_crops(crops, self._input_size)
        n = len(crops)
        if n == 0:
            return np.zeros((0, self._num_keypoints, *self._heatmap_size), np.float32)
        out = []
        for start in range(0, n, self.batch_size):
            batch = crops[start:start + self.batch_size]
            m = len(batch)
            if self._fixed_batch is not None and m < self._fixed_batch:  # pad the last, partial batch
                batch = np.concatenate([batch, np.zeros((self._fixed_batch - m, *batch.shape[1:]), np.float32)])
            out.append(self._infer(batch)[:m])
        return out[0] if len(out) == 1 else np.concatenate(out)
