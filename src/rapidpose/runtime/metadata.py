"""What an exported .onnx / OpenVINO .xml file is: the metadata rapidpose writes into it, read back typed.

Metadata (strings in the file; read_metadata gives them back typed):

=====================  ===========================================================
``rapidpose_version``  the rapidpose that wrote the file
``model``              always ``vitpose``
``variant``            ``s``, ``b``, ``l``, ``h`` or ``custom`` (from the backbone size)
``head``               ``classic`` or ``simple``
``num_experts``        1, or 6 for ViTPose++
``dataset_index``      the ViTPose++ expert baked in (0 for plain ViTPose)
``skeleton``           keypoint set name (``coco``, ``coco_25``, ``wholebody``, ...)
``keypoint_set``       a set rapidpose does not list (a model trained on one's own keypoints): the
                       whole set as JSON (names, edges, flip pairs, sigmas; skeletons.skeleton_to_meta)
``num_keypoints``      K, the heatmap channels
``input_size``         ``[width, height]`` of a crop, e.g. ``[192, 256]``
``source``             where the weights came from, when known
=====================  ===========================================================

ONNX keeps them in the model's ``metadata_props``. OpenVINO keeps them in the IR's ``rt_info``
under a ``rapidpose`` section (inside the .xml, so no sidecar file can get lost); the .xml is plain
XML, so read_metadata reads it without openvino installed.
"""
from __future__ import annotations

import json
from pathlib import Path

from rapidpose.errors import CheckpointError, InputError

METADATA_SECTION = "rapidpose"  # OpenVINO rt_info section
_INT_KEYS = ("num_keypoints", "dataset_index", "num_experts")


def encode_metadata(meta: dict) -> dict[str, str]:
    """Metadata values as the strings a file keeps (lists as JSON)."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v) for k, v in meta.items()}


def parse_metadata(raw: dict[str, str]) -> dict:
    """Metadata strings as written in a file -> typed values (ints, input_size as (w, h))."""
    meta = {}
    for key, value in raw.items():
        if key in _INT_KEYS:
            try:
                value = int(value)
            except ValueError:
                pass
        elif key == "keypoint_set":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif key in ("input_size", "heatmap_size"):
            try:
                value = tuple(int(v) for v in json.loads(value))
            except (ValueError, TypeError):
                pass
        meta[key] = value
    return meta


def read_metadata(path) -> dict:
    """The rapidpose metadata of an exported .onnx or OpenVINO .xml file ({} if it has none).

    Integers come back as int and ``input_size`` as a (width, height) tuple. Reading an .xml
    needs no openvino; reading an .onnx uses ``onnx`` if installed, else onnxruntime.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model file '{path}' does not exist (or is not a file)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return parse_metadata(_onnx_metadata(path))
    if suffix == ".xml":
        return parse_metadata(_openvino_metadata(path))
    raise InputError(f"cannot read metadata of '{path}': expected an .onnx or OpenVINO .xml file")


def _onnx_metadata(path: Path) -> dict[str, str]:
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            proto = onnx.load(str(path), load_external_data=False)
            return {p.key: p.value for p in proto.metadata_props}
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    except Exception as exc:
        raise CheckpointError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); export it again with rapidpose export") from None


def _openvino_metadata(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise CheckpointError(f"'{path}' is not a readable OpenVINO IR .xml ({exc}); export it again "
                              f"with rapidpose export --format openvino") from None
    if root.tag != "net":
        raise CheckpointError(f"'{path}' is XML but not an OpenVINO IR (its root is <{root.tag}>, not <net>)")
    section = root.find(f"rt_info/{METADATA_SECTION}")
    if section is None:
        return {}
    return {child.tag: child.get("value", "") for child in section}
