"""RTMDet-nano person detector (the one RTMPose ships), exported to ONNX with its NMS inside."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rapidpose.detect.base import Detector, letterbox, onnx_session

MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB, 0-255 scale
STD = np.array([58.395, 57.12, 57.375], np.float32)


class RTMDet(Detector):
    """RTMDet from an mmdeploy end2end.onnx: input `input` (N, 3, H, W), outputs `dets`, `labels`.

    input_size is (width, height); 320x320 is the size the nano model was trained at.
    """

    def __init__(self, path, device: str = "cpu", threshold: float = 0.3, input_size=(320, 320),
                 session=None):
        self.path = Path(path)
        self.threshold = float(threshold)
        self.input_size = tuple(int(s) for s in input_size)
        self.session = session or onnx_session(self.path, device)  # load_detector passes its own
        self.input_name = self.session.get_inputs()[0].name

    def _detect(self, image):
        # mmdet's test pipeline: resize keeping the ratio, pad with 114 at bottom/right, then normalise
        # the whole padded image (pad pixels included), as the model saw it in training.
        padded, ratio = letterbox(image, self.input_size)
        x = ((padded.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)[None]
        dets, labels = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[:2]
        dets, labels = dets[0], labels[0]
        person = labels == 0  # this export has the person class only, but keep the check for others
        return dets[person, :4] / ratio, dets[person, 4]
