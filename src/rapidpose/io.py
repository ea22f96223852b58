"""Sources and sinks: reading images (any depth, channels or format) and writing results."""
from __future__ import annotations

import glob
import json
import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from rapidpose.errors import InputError, RapidPoseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm"}


COLORS = ("rgb", "bgr")


def check_color(color) -> str:
    """'rgb' or 'bgr' (any case); anything else is an InputError saying what to pass."""
    if isinstance(color, str) and color.lower() in COLORS:
        return color.lower()
    raise InputError(f"color={color!r} is not a channel order: pass color='rgb' (the default) or "
                     f"color='bgr' (arrays from OpenCV: cv2.imread, cv2.VideoCapture)")


def as_rgb(image, name: str = "image", color: str = "rgb") -> np.ndarray:
    """Any image array -> RGB uint8 (H, W, 3): gray, alpha, 16-bit and float images are converted.

    color: the channel order of a colour `image`, 'rgb' or 'bgr' (OpenCV's; BGRA too)."""
    color = check_color(color)
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name} is a {type(image).__name__}, not an image: pass a numpy array (H, W, 3), "
                         f"an image file's path or a PIL image")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or image.size == 0:
        raise InputError(f"{name} has shape {image.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.clip(np.nan_to_num(image) * (255.0 if image.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"{name} has dtype {image.dtype}: expected uint8, uint16 or float")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if color == "bgr" and image.ndim == 3:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def is_path(image) -> bool:
    return isinstance(image, (str, os.PathLike))


def _is_pil(image) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "mode") and hasattr(image, "convert")


def pil_to_rgb(image, name: str = "image") -> np.ndarray:
    """A PIL image of any mode -> RGB uint8 (H, W, 3). 16-bit and float modes keep their range (as
    as_rgb converts them); palette, alpha, CMYK, YCbCr, ... go through PIL's own RGB conversion."""
    mode = image.mode
    try:
        if mode in ("RGB", "L") or mode.startswith("I;16") or mode == "F":
            array = np.asarray(image)
            if array.dtype.kind == "u" and array.dtype != np.uint8:  # I;16B and friends
                array = array.astype(np.uint16)
        elif mode == "I":  # 32-bit integers: 16-bit PNGs open so in older Pillow
            array = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        else:
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:  # a lazily loaded file that turns out corrupt
        raise InputError(f"{name} (a PIL image, mode {mode}) could not be read: {exc}") from None
    return as_rgb(array, name)


def to_rgb(image, name: str = "image", color: str = "rgb") -> np.ndarray:
    """Whatever the API takes as an image -> RGB uint8 (H, W, 3): a numpy array in the channel order
    `color` says, an image file's path (str or Path, decoded as RGB), or a PIL image (any mode)."""
    color = check_color(color)
    if is_path(image):
        return read_image(image)
    if _is_pil(image):
        return pil_to_rgb(image, name)
    return as_rgb(image, name, color)


def _jpeg_truncated(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"


def read_image(path) -> np.ndarray:
    """An RGB uint8 image from a file, whatever its depth and channels, turned upright as its EXIF
    orientation says (as photo viewers show it)."""
    path = Path(path)
    return decode_image(image_bytes(path), path)


def image_bytes(path) -> bytes:
    """An image file's bytes, undecoded; an InputError naming the file when there are none to read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"'{path}' does not exist")
    if path.is_dir():
        raise InputError(f"'{path}' is a folder, not an image")
    try:
        return path.read_bytes()
    except OSError as exc:  # unreadable: permissions, a broken network share, a file gone meanwhile
        raise InputError(f"'{path}' could not be read: {exc.strerror or exc}") from None


def decode_image(data: bytes, name="image") -> np.ndarray:
    """An image file's bytes -> RGB uint8 (H, W, 3), exactly as read_image reads that file (`name` is
    what error messages call it).

    OpenCV decodes with IMREAD_UNCHANGED (any depth, any channels; as_rgb converts), which ignores EXIF
    orientation; the orientation is then applied here for JPEG, PNG and WebP, as viewers and
    PIL.ImageOps.exif_transpose do. OpenCV's TIFF decoder turns TIFFs itself, whatever the flags."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None and _jpeg_truncated(data):
        raise InputError(f"'{name}' is a truncated JPEG (the file ends early) and could not be decoded: "
                         f"copy or export it again")
    if image is None:
        raise InputError(f"'{name}' could not be decoded as an image (empty, corrupt or not an image file)")
    if image.ndim == 3:  # OpenCV decodes BGR(A); convert once here
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    image = as_rgb(image, f"'{name}'")
    if data[:4] in _TIFF_SIGNATURES:  # TIFF: already turned by OpenCV's decoder
        return image
    return upright(image, exif_orientation(data))


# (rows, columns) flips after an optional transpose that show a stored image as the EXIF orientation
# tag (1-8, TIFF's Orientation) asks: 2 mirrored, 3 turned 180 degrees, 4 flipped, 5 transposed,
# 6 turned 90 degrees clockwise, 7 transversed, 8 turned 90 degrees anticlockwise
_ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
                 5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """`image` as stored -> as shown, for an EXIF orientation tag (1-8; anything else leaves it)."""
    transpose, flip_rows, flip_columns = _ORIENTATIONS.get(orientation, (False, False, False))
    if transpose:
        image = image.swapaxes(0, 1)
    if flip_rows:
        image = image[::-1]
    if flip_columns:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def exif_orientation(data) -> int:
    """The EXIF orientation tag (1-8) of an image file's bytes: JPEG (APP1 'Exif'), PNG (eXIf), WebP
    (EXIF chunk) or TIFF (its first directory); 1 when there is none or it cannot be parsed."""
    view = memoryview(data).cast("B")
    head = bytes(view[:12])
    try:
        if head[:2] == b"\xff\xd8":
            return _jpeg_orientation(view)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return _png_orientation(view)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_orientation(view)
        if head[:4] in _TIFF_SIGNATURES:
            return _tiff_orientation(view)
    except (struct.error, IndexError, ValueError):
        pass
    return 1


_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")


def _jpeg_orientation(data: memoryview) -> int:
    """The first APP1 'Exif' segment before the image data (as libjpeg-based readers and PIL take it)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 1  # not a marker: corrupt, or a layout this does not follow
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no EXIF came before
            return 1
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker == 0xE1 and bytes(data[pos + 4: pos + 10]) == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 10: pos + 2 + length])
        pos += 2 + length
    return 1


def _png_orientation(data: memoryview) -> int:
    """The eXIf chunk, wherever it is (PIL reads one after the image data too)."""
    pos = 8
    while pos + 8 <= len(data):  # chunks: length (big-endian), type, data, CRC
        (size,) = struct.unpack_from(">I", data, pos)
        kind = bytes(data[pos + 4: pos + 8])
        if kind == b"eXIf":
            return _tiff_orientation(_without_exif_header(data[pos + 8: pos + 8 + size]))
        if kind == b"IEND":
            return 1
        pos += 12 + size
    return 1


def _webp_orientation(data: memoryview) -> int:
    pos = 12
    while pos + 8 <= len(data):  # RIFF chunks: type, length (little-endian), data padded to even
        kind = bytes(data[pos: pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if kind == b"EXIF":
            return _tiff_orientation(_without_exif_header(data[pos + 8: pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return 1


def _without_exif_header(block: memoryview) -> memoryview:
    return block[6:] if bytes(block[:6]) == b"Exif\x00\x00" else block  # some writers keep JPEG's header


def _tiff_orientation(tiff: memoryview) -> int:
    """Tag 0x0112 of a TIFF structure's first directory (EXIF's IFD0)."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None or len(tiff) < 8:
        return 1
    (directory,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, directory)
    for entry in range(directory + 2, min(directory + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag == 0x0112:
            value = {3: "H", 4: "I", 1: "B", 7: "B"}.get(kind)  # SHORT as written; LONG, BYTE seen too
            orientation = struct.unpack_from(order + value, tiff, entry + 8)[0] if value else 1
            return orientation if 1 <= orientation <= 8 else 1
    return 1


def expand_paths(paths) -> list[Path]:
    """Files as given (whatever their type), the images matching a glob ('frames/*.jpg'), and the
    images inside folders and their subfolders, sorted.

    A folder or glob holding no image is an error (a wrong path would otherwise give an empty run)."""
    out = []
    for p in map(Path, paths):
        if glob.has_magic(str(p)):
            found = sorted(f for f in map(Path, glob.glob(str(p), recursive=True))
                           if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise InputError(f"no image matches '{p}'")
            out.extend(found)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise InputError(f"folder '{p}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                                 f"pass a folder of images, image files, or a glob")
            out.extend(found)
        else:
            out.append(p)  # a missing or non-image file is reported when it is read
    return out


def coco_image_id(path, fallback: int) -> int:
    """COCO file names are their ids (000000000785.jpg -> 785); other names get their position."""
    digits = re.fullmatch(r"\d+", Path(path).stem)
    return int(digits.group()) if digits else fallback


class BoxTable(dict):
    """Boxes per key (an image's path, file name or COCO id as a string): (N, 5) x1, y1, x2, y2, score.

    `entries` lists the file's entries (images) as tuples of the keys each one answers to, the one
    to show people first; `source` is the file they came from.
    """

    def __init__(self, boxes=(), entries=(), source=""):
        super().__init__(boxes)
        self.entries: list[tuple[str, ...]] = list(entries)
        self.source = str(source)


def load_boxes(path) -> BoxTable:
    """Boxes per image from our JSON output shape or a COCO detections / annotations file.

    Keys are image paths or names (and COCO image ids as strings); values (N, 5): x1, y1, x2, y2, score.
    Every image the file lists is an entry, with no boxes if it has no person in it.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"boxes file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"boxes file '{path}' is not valid JSON: {exc}") from None
    boxes: dict[str, list] = {}
    entries: dict[tuple[str, ...], None] = {}  # ordered set

    def entry(*keys) -> list:
        keys = tuple(dict.fromkeys(str(k) for k in keys if k is not None))
        entries.setdefault(keys)
        rows = boxes.setdefault(keys[0], [])
        for key in keys[1:]:
            boxes.setdefault(key, rows)
        return rows

    try:
        if isinstance(doc, dict) and "annotations" in doc:  # COCO annotations: ground-truth boxes
            names = {str(im["id"]): im.get("file_name") for im in doc.get("images", [])}
            for image_id, name in names.items():
                entry(name, image_id)
            for ann in doc["annotations"]:
                rows = entry(names.get(str(ann["image_id"])), ann["image_id"])
                if ann.get("category_id", 1) != 1 or ann.get("iscrowd", 0):
                    continue
                x, y, w, h = ann["bbox"]
                rows.append([x, y, x + w, y + h, 1.0])
        elif isinstance(doc, list) and (not doc or "image_id" in doc[0]):  # COCO detections
            for det in doc:
                rows = entry(det["image_id"])
                if det.get("category_id", 1) != 1:
                    continue
                x, y, w, h = det["bbox"]
                rows.append([x, y, x + w, y + h, det.get("score", 1.0)])
        else:  # our own output: {"images": [{"image": ..., "people": [{"box": ..., "box_score": ...}]}]}
            for item in (doc.get("images", []) if isinstance(doc, dict) else doc):
                rows = entry(item["image"], Path(item["image"]).name)
                rows.extend(list(p["box"]) + [p.get("box_score", 1.0)] for p in item.get("people", []))
    except (KeyError, TypeError, AttributeError, ValueError):
        raise InputError(f"boxes file '{path}' is neither rapidpose JSON ({{'images': [{{'image', "
                         f"'people': [{{'box'}}]}}]}}), COCO detections ([{{'image_id', 'bbox'}}]) nor "
                         f"COCO annotations ({{'images', 'annotations'}})") from None
    table = {k: np.asarray(v, np.float32).reshape(-1, 5) for k, v in boxes.items()}
    return BoxTable(table, entries, path)


MATCHING = ("entries are matched to input files by full path, by file name, or by COCO image id: the "
            "number a file's name is (000000000785.jpg is image id 785), or else the file's position "
            "among the inputs (0, 1, 2, ...)")


def _key_for(table, path: Path, image_id: int):
    return next((key for key in (str(path), path.name, str(image_id)) if key in table), None)


def boxes_for(table: dict[str, np.ndarray], path: Path, image_id: int) -> np.ndarray:
    key = _key_for(table, path, image_id)
    return table[key] if key is not None else np.zeros((0, 5), np.float32)


def match_boxes(table: BoxTable, paths) -> tuple[list[Path], list[str]]:
    """Which input images no entry of `table` matches, and which entries match no input image (by
    their shown name). Image i's COCO id is coco_image_id(path, i), as `rapidpose predict` uses it.

    An InputError when no entry matches any image: the run would find nobody, and the cause is
    nearly always a naming mismatch (the message says how entries and files are matched)."""
    used, unmatched_images = set(), []
    for index, path in enumerate(map(Path, paths)):
        key = _key_for(table, path, coco_image_id(path, index))
        if key is None:
            unmatched_images.append(path)
        else:
            used.add(key)
    entries = getattr(table, "entries", None) or [(key,) for key in table]
    unmatched = [keys[0] for keys in entries if not used.intersection(keys)]
    source = getattr(table, "source", "") or "the boxes file"
    if not entries:
        raise InputError(f"boxes file '{source}' lists no images: give the boxes of the images to process")
    if paths and len(unmatched) == len(entries):
        raise InputError(f"no entry of boxes file '{source}' ({len(entries)} entries, such as "
                         f"{name_a_few(unmatched)}) matches any of the {len(paths)} input images (such as "
                         f"{name_a_few([p.name for p in map(Path, paths)])}): {MATCHING}. Rename the files "
                         f"or write the boxes file with matching names or ids")
    return unmatched_images, unmatched


def name_a_few(names, n: int = 3) -> str:
    """'a', 'b', 'c' and 4 more."""
    shown = ", ".join(f"'{name}'" for name in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def chunked(items, size: int):
    """Consecutive lists of `size` items from any iterable (the last one may be shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_ahead(paths, workers: int = 4, window: int = 32):
    """(path, image or error) in order, images decoded on threads while the network runs."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def read(path):
        try:
            return read_image(path)
        except RapidPoseError as exc:
            return exc

    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        it = iter(paths)
        for path in it:
            pending.append((path, pool.submit(read, path)))
            if len(pending) >= window:
                break
        while pending:
            path, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield path, future.result()
