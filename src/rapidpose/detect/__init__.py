"""Person detectors behind one protocol: `boxes, scores = detector(rgb_image)`.

`load_detector` takes a hub name (downloaded once into the cache) or a local .onnx file, which is
recognised as RTMDet or YOLOX by its input and output names.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from rapidpose import hub
from rapidpose.errors import CheckpointError, InputError
from rapidpose.detect.base import Detector, onnx_session
from rapidpose.detect.rtmdet import RTMDet
from rapidpose.detect.yolox import YOLOX

__all__ = ["Detector", "load_detector", "RTMDet", "YOLOX", "KNOWN_DETECTORS"]

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
