"""What the ONNX Runtime and OpenVINO backends share: input checks, what the file is (crop size,
keypoint count and keypoint set, from its rapidpose metadata), and the batching loop (with padding
for fixed-batch exports). Each backend supplies only `_infer(batch) -> heatmaps`.

A file without rapidpose metadata is used only where its keypoint set is unambiguous: 17 heatmaps
fit COCO and AP-10K (whose left/right flip pairs differ), so such a file needs `keypoint_set`;
metadata that is there but unusable (unknown set, counts that disagree) is refused. Nothing falls
back to COCO silently.
"""
from __future__ import annotations

import logging

import numpy as np

from rapidpose.errors import CheckpointError, InputError

log = logging.getLogger("rapidpose")

# keys that only a rapidpose export writes: their presence means "this file has rapidpose metadata"
_OUR_KEYS = ("rapidpose_version", "skeleton")


def check_crops(crops, input_size: tuple[int, int]) -> np.ndarray:
    """Crops as a C-contiguous float32 (N, 3, H, W) array, or an InputError that says what is wrong."""
    crops = np.asarray(crops)
    w, h = input_size
    if crops.ndim != 4 or crops.shape[1:] != (3, h, w):
        raise InputError(f"crops must be normalised images of shape (N, 3, {h}, {w}), got {crops.shape}")
    return np.ascontiguousarray(crops, dtype=np.float32)


def has_metadata(meta: dict) -> bool:
    """Whether `meta` (a file's metadata, typed by metadata.parse_metadata) was written by rapidpose."""
    return any(key in meta for key in _OUR_KEYS)


_REDO = "export it again with `rapidpose export`, whose metadata names the keypoint set"


def _sets_of_size(k: int) -> list[str]:
    from rapidpose.skeletons import SKELETONS

    return [name for name, s in SKELETONS.items() if s.num_keypoints == k]


def _named_set(name, num_keypoints: int, path, from_metadata: bool):
    """The keypoint set called `name` (by the file's metadata or by the caller), checked against the
    file's heatmap count."""
    from rapidpose.skeletons import SKELETONS, skeleton_for

    if name == f"custom{num_keypoints}" and not _sets_of_size(num_keypoints):
        return skeleton_for(num_keypoints)  # what the export of a model of an unknown set writes
    skeleton = SKELETONS.get(name)
    if from_metadata:
        if skeleton is None:
            raise CheckpointError(f"'{path}': its metadata names keypoint set '{name}', which this rapidpose "
                                  f"does not know ({', '.join(SKELETONS)}): {_REDO}")
        if skeleton.num_keypoints != num_keypoints:
            raise CheckpointError(f"'{path}' gives {num_keypoints} heatmaps, but its metadata names keypoint "
                                  f"set '{name}' of {skeleton.num_keypoints}: {_REDO}")
        return skeleton
    fits = _sets_of_size(num_keypoints)
    hint = (f"use one of {', '.join(fits)}" if fits
            else f"no known keypoint set has {num_keypoints} points, so leave keypoint_set out")
    if skeleton is None:
        raise InputError(f"unknown keypoint_set '{name}' for '{path}': {hint}")
    if skeleton.num_keypoints != num_keypoints:
        raise InputError(f"keypoint_set '{name}' has {skeleton.num_keypoints} keypoints but '{path}' "
                         f"predicts {num_keypoints}: {hint}")
    return skeleton


def _is_set(keypoint_set, name, num_keypoints: int) -> bool:
    from rapidpose.skeletons import Skeleton

    return (isinstance(keypoint_set, Skeleton) and keypoint_set.name == name
            and keypoint_set.num_keypoints == num_keypoints)


def _carried_set(meta: dict, name: str, num_keypoints: int):
    """The keypoint set a file carries whole (a set of one's own, see metadata.py), when it is the
    one named and has the file's number of keypoints; else None."""
    from rapidpose.skeletons import skeleton_from_meta

    carried = meta.get("keypoint_set")
    if not isinstance(carried, dict) or carried.get("name") != name:
        return None
    try:
        skeleton = skeleton_from_meta(carried)
    except (KeyError, TypeError, ValueError):
        return None
    return skeleton if skeleton.num_keypoints == num_keypoints else None


def skeleton_from(meta: dict, num_keypoints: int, path="the model file", keypoint_set=None):
    """The keypoint set of an exported file: the one its rapidpose metadata names, checked against
    its `num_keypoints` heatmaps; without metadata `keypoint_set`, or the only known set of that size.
    `keypoint_set` is a name, or a Skeleton (the one a module was exported with, taken as it is
    when its name and size are the file's).

    Raises CheckpointError for metadata that is there but unusable, and InputError when the file has
    no metadata and several keypoint sets have `num_keypoints` points (17: COCO and AP-10K, whose
    flip pairs differ) and no `keypoint_set` says which, or when `keypoint_set` contradicts the file.
    """
    from rapidpose.skeletons import skeleton_for

    if has_metadata(meta):
        name = meta.get("skeleton")
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"'{path}' has rapidpose metadata without a keypoint set ('skeleton'): "
                                  f"{_REDO}")
        if _is_set(keypoint_set, name, num_keypoints):  # the object the file was exported with
            return keypoint_set
        carried = _carried_set(meta, name, num_keypoints)
        skeleton = carried if carried is not None else _named_set(name, num_keypoints, path, True)
        keypoint_set = getattr(keypoint_set, "name", keypoint_set)
        if keypoint_set is not None and keypoint_set != skeleton.name:
            raise InputError(f"keypoint_set '{keypoint_set}' contradicts '{path}', whose metadata says "
                             f"'{skeleton.name}': leave keypoint_set out for files from `rapidpose export`")
        return skeleton
    if keypoint_set is not None:
        return _named_set(getattr(keypoint_set, "name", keypoint_set), num_keypoints, path, False)
    candidates = _sets_of_size(num_keypoints)
    if len(candidates) > 1:
        raise InputError(
            f"'{path}' has no rapidpose metadata, and its {num_keypoints} keypoints fit several keypoint "
            f"sets ({', '.join(candidates)}) whose left/right points differ: {_REDO}, or name its "
            f"set (keypoint_set='{candidates[0]}' in Python, --keypoint-set {candidates[0]} on "
            f"`rapidpose predict`)")
    skeleton = skeleton_for(num_keypoints)
    how = (f"the only known set of {num_keypoints} keypoints" if candidates
           else "no known set has that many; keypoints are unnamed and have no left/right pairs")
    log.warning("'%s' has no rapidpose metadata: its %d keypoints are taken as '%s' (%s)",
                path, num_keypoints, skeleton.name, how)
    return skeleton


def describe(meta: dict, path, in_shape, out_shape, keypoint_set=None):
    """(input_size (w, h), num_keypoints, heatmap_size (h, w), skeleton) of an exported file from its
    metadata and its (N, 3, H, W) -> (N, K, h, w) shapes (ints, None where dynamic)."""
    ours = has_metadata(meta)
    size = meta.get("input_size")
    if ours and size is not None and not (isinstance(size, tuple) and len(size) == 2
                                          and all(isinstance(v, int) and v > 0 for v in size)):
        raise CheckpointError(f"'{path}' has unreadable rapidpose metadata: input_size {size!r} is not "
                              f"[width, height]; {_REDO}")
    static = (in_shape[3], in_shape[2]) if None not in (in_shape[2], in_shape[3]) else None
    if size is None or not ours:
        if static is None:
            raise CheckpointError(f"'{path}' has no fixed input size ({list(in_shape)}) and no rapidpose "
                                  f"metadata: {_REDO}")
        size = static
    elif static is not None and tuple(size) != static:
        raise CheckpointError(f"'{path}' takes {static[0]}x{static[1]} crops, but its metadata says "
                              f"{size[0]}x{size[1]}: {_REDO}")
    k = out_shape[1]
    declared = meta.get("num_keypoints") if ours else None
    if ours and declared is not None and not isinstance(declared, int):
        raise CheckpointError(f"'{path}' has unreadable rapidpose metadata: num_keypoints {declared!r} is "
                              f"not a number; {_REDO}")
    if k is None:
        k = declared
    elif declared is not None and declared != k:
        raise CheckpointError(f"'{path}' gives {k} heatmaps, but its metadata says {declared} keypoints: "
                              f"{_REDO}")
    if not isinstance(k, int):
        raise CheckpointError(f"'{path}' does not say how many keypoints it predicts: {_REDO}")
    heatmap = tuple(d if d is not None else s // 4 for d, s in zip(out_shape[2:], (size[1], size[0])))
    return (int(size[0]), int(size[1])), k, heatmap, skeleton_from(meta, k, path, keypoint_set)


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
