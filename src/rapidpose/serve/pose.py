"""What a worker does with a batch of uploads: one PoseEstimator.predict over all of them.

The people of every image in the batch share the network's batches, as in `rapidpose predict`; the
answer for each image is the entry `predict --json` writes for it (photos.records.photo_record).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rapidpose.photos.records import photo_record


@dataclass
class Upload:
    """One request's image (RGB uint8, upright), its name in the answer, and its boxes: (N, 5) x1, y1,
    x2, y2, score, or None for the detector's."""

    image: np.ndarray
    name: str
    boxes: np.ndarray | None = None


def predict_uploads(est, uploads: list[Upload]) -> list[dict]:
    """photo_record of each upload, from one est.predict call. Uploads without boxes get the detector's
    (all found in one est.detect), or the whole image when the estimator has no detector; boxes given
    are used as they are."""
    images = [u.image for u in uploads]
    boxes = [u.boxes for u in uploads]
    missing = [i for i, b in enumerate(boxes) if b is None]
    if len(missing) == len(boxes):
        boxes = None  # predict detects them all itself (or takes the whole images)
    elif missing and est.detector is not None:
        for i, found in zip(missing, est.detect([images[i] for i in missing])):
            boxes[i] = found
    poses = est.predict(images, boxes, names=[u.name for u in uploads])
    return [photo_record(u.name, (u.image.shape[1], u.image.shape[0]), p) for u, p in zip(uploads, poses)]


def header(est, model_name: str) -> dict:
    """The header keys of `predict --json` (model, keypoint set name, keypoint_names, skeleton)."""
    return {"model": str(model_name), **est.skeleton.to_dict()}


def warm_up(est) -> None:
    """One small batch through the detector and the network, so that the first client does not pay for
    the backends' first-call set-up."""
    image = np.zeros((256, 192, 3), np.uint8)
    predict_uploads(est, [Upload(image, "warm-up"), Upload(image, "warm-up", np.array([[8, 8, 184, 248, 1]], np.float32))])
