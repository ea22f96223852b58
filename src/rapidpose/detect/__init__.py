"""Person detectors behind one protocol: `boxes, scores = detector(rgb_image)`.

`load_detector` takes a hub name (downloaded once into the cache) or a local .onnx file, which is
recognised as RTMDet or YOLOX by its input and output names. `load_batched_detector` gives the same
boxes for many photos at once, `detector.detect_batch(images)`: the ONNX graph run by torch on a GPU
(one batch of mixed sizes per call), copies of the onnxruntime session in parallel on CPUs.
"""
from __future__ import annotations

import copy
import logging
import zipfile
from pathlib import Path

from rapidpose import hub
from rapidpose.errors import CheckpointError, InputError
from rapidpose.detect.base import Detector, onnx_session
from rapidpose.detect.rtmdet import RTMDet
from rapidpose.detect.yolox import YOLOX

__all__ = ["Detector", "load_detector", "load_batched_detector", "RTMDet", "YOLOX", "KNOWN_DETECTORS"]

log = logging.getLogger("rapidpose")
ENGINES = ("auto", "torch", "onnxruntime")

# name -> (url, cached filename)
KNOWN_DETECTORS = {
    "rtmdet-nano": ("https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/onnx_sdk/"
                    "rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.zip",
                    "rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.onnx"),
    "yolox-nano": ("https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx",
                   "yolox_nano.onnx"),
}


# What a download failure says to do instead (one sentence, no closing period).
LOCAL_DETECTOR_HINT = (
    "Pass a local detector file instead: --detector /path/to/rtmdet.onnx (detector='/path/to/rtmdet.onnx' in "
    "Python); it can be an RTMDet ONNX export (mmdeploy's end2end.onnx, outputs dets and labels) or a YOLOX "
    "ONNX export (input images, one output), or use --detector none with --boxes FILE")


def _fetch(name: str) -> Path:
    url, filename = KNOWN_DETECTORS[name]
    target = hub.cache_dir() / filename
    if target.exists():
        return target
    what = f"the {name} detector"
    if not url.endswith(".zip"):
        return hub.download_url(url, filename, what=what, instead=LOCAL_DETECTOR_HINT)
    # mmdeploy SDK zip: a folder with end2end.onnx and its json configs; keep only the model
    archive = hub.download_url(url, Path(url).name, what=what, instead=LOCAL_DETECTOR_HINT)
    try:
        with zipfile.ZipFile(archive) as zf:
            member = next(n for n in zf.namelist() if n.endswith("end2end.onnx"))
            tmp = target.with_suffix(".part")
            tmp.write_bytes(zf.read(member))
            tmp.replace(target)
    except (zipfile.BadZipFile, StopIteration) as exc:
        raise CheckpointError(f"{archive} is not the expected zip holding end2end.onnx ({exc!r}): delete it "
                              f"to download again. {LOCAL_DETECTOR_HINT}.") from None
    archive.unlink(missing_ok=True)
    return target


def load_detector(name_or_path, device: str = "cpu", threshold: float = 0.3, threads: int | None = None) -> Detector:
    """A person detector from a known name ("rtmdet-nano", "yolox-nano") or a path to an .onnx file.

    threads: onnxruntime intra-op threads (default: all cores). Several detectors with a few threads
    each run frames in parallel faster than one with all of them: these small models cannot keep
    many threads busy on one image."""
    if isinstance(name_or_path, str) and name_or_path.lower() in KNOWN_DETECTORS:
        path = _fetch(name_or_path.lower())
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            known = ", ".join(KNOWN_DETECTORS)
            if path.suffix.lower() == ".onnx" or len(path.parts) > 1:
                raise InputError(f"detector file not found: {path}. Pass an existing .onnx file or one of: {known}.")
            raise InputError(f"unknown detector {str(name_or_path)!r}: use one of {known}, or a path to an .onnx file.")

    session = onnx_session(path, device, threads)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    # Tell the two layouts apart by their tensor names (mmdeploy: input -> dets, labels;
    # YOLOX export: images -> output (1, A, 85)); the session built here is then reused.
    if "dets" in outputs and "labels" in outputs:
        return RTMDet(path, threshold=threshold, session=session)
    if inputs == ["images"] and len(outputs) == 1 and len(session.get_outputs()[0].shape) == 3:
        return YOLOX(path, threshold=threshold, session=session)
    raise CheckpointError(f"{path} is neither an RTMDet (input -> dets, labels) nor a YOLOX (images -> output) "
                          f"ONNX detector: its inputs are {inputs}, outputs {outputs}. Pass one of those, "
                          f"or a known name: {', '.join(KNOWN_DETECTORS)}.")


def load_batched_detector(name_or_path, device: str = "cpu", threshold: float | None = None, engine: str = "auto",
                          workers: int | None = None):
    """A detector for many photos at once: `detector.detect_batch(images)` -> per image (boxes, scores),
    the boxes `load_detector(name_or_path)(image)` gives for each (same contract), images RGB uint8 of
    any sizes.

    name_or_path: as load_detector's, or a Detector already loaded (its threshold is kept unless
    threshold is given). engine: 'torch' runs the ONNX graph through PyTorch on `device` in batches
    (batched.TorchDetector: RTMDet and YOLOX); 'onnxruntime' runs copies of the ONNX session in
    parallel (batched.ParallelDetector, `workers` of them: default one per 4 cores, at most 8);
    'auto' (the default): torch on a CUDA device, onnxruntime elsewhere (on CPUs the small detectors
    run faster in onnxruntime). A graph the torch runner cannot run falls back to onnxruntime, logged.
    """
    from rapidpose.errors import check_choice

    check_choice("detector engine", engine, ENGINES)
    device = str(device)
    if isinstance(name_or_path, Detector):
        detector = name_or_path
        if threshold is not None:  # a copy with this threshold (the session is shared)
            detector = copy.copy(detector)
            detector.threshold = float(threshold)
    else:
        detector = load_detector(name_or_path, device="cpu" if engine != "onnxruntime" else device,
                                 threshold=0.3 if threshold is None else threshold)
    if engine == "auto":
        engine = "torch" if device.startswith("cuda") else "onnxruntime"
    if engine == "torch":
        try:
            if isinstance(detector, RTMDet):
                from rapidpose.detect.rtmdet_torch import BatchedRTMDet

                return BatchedRTMDet(detector, device)
            if isinstance(detector, YOLOX):
                from rapidpose.detect.yolox_torch import BatchedYOLOX

                return BatchedYOLOX(detector, device)
            why = f"{type(detector).__name__} has no torch version"
        except CheckpointError as exc:
            why = str(exc)
        log.warning("detector %s runs on onnxruntime image by image, not in torch batches on %s: %s",
                    getattr(detector, "path", detector), device, why)
        if device.startswith("cuda") and hasattr(detector, "path"):  # its session on the GPU where it can be
            detector = copy.copy(detector)
            detector.session = onnx_session(detector.path, device)
    from rapidpose.detect.batched import ParallelDetector

    return ParallelDetector(detector, workers=workers, device=device)
