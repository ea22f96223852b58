"""Training data: any COCO-format keypoint annotation file -> one sample per annotated person, with the
keypoint set (names, edges, flip pairs, OKS sigmas) read from the file's category.

    from rapidpose.train.data import load_keypoint_set
    data = load_keypoint_set("person_keypoints_train2017.json", "train2017/")
    print(data.summary())   # 149813 people in 56599 images, 17 keypoints (coco), skipped: ...

People are kept and boxes cleaned as the official ViTPose training reads COCO (its vendored mmpose
0.24, TopDownCocoDataset._load_coco_keypoint_annotation_kernel): no crowds, the box clipped to the
image with rapidpose.evaluate.coco.clean_gt_box, at least one labelled keypoint. An annotation that
cannot be used is skipped and counted by reason in `skipped`; only problems with the file as a whole
raise an InputError. Images are not read here (except a header when an image entry has no size).
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rapidpose.errors import InputError
from rapidpose.evaluate.coco import _read_json, clean_gt_box
from rapidpose.skeletons import SKELETONS, Skeleton, _make

log = logging.getLogger("rapidpose")

UNIFORM_SIGMA = 0.05

# Half-body split of the official configs (ViTPose configs/_base_/datasets/*.py, keypoint_info type
# 'upper'); apt36k uses ap10k.py. AP10K's right front paw (10) is 'lower' there, unlike the left (7):
# kept, as the official recipe trains with it.
_OFFICIAL_UPPER_BODY = {
    "coco": tuple(range(11)),
    "wholebody": tuple(range(11)),
    "aic": (0, 1, 2, 3, 4, 5, 12, 13),
    "mpii": (7, 8, 9, 10, 11, 12, 13, 14, 15),
    "ap10k": (0, 1, 2, 3, 5, 6, 7, 8, 9),
    "apt36k": (0, 1, 2, 3, 5, 6, 7, 8, 9),
}
# Words that put a keypoint of any other set in the upper body; 'front' for four-legged animals.
# Whole words, so that 'rear' is not an ear.
_UPPER_WORDS = frozenset(
    "head face eye eyebrow brow ear nose mouth lip chin jaw cheek neck thorax chest shoulder arm forearm "
    "elbow wrist hand palm thumb finger forefinger front".split())

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")  # snake_case, camelCase, 'Head top', 'L_F_Paw'


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def _normal(name: str) -> str:
    """'Right Shoulder', 'rightShoulder' and 'right_shoulder' spell the same keypoint."""
    return "_".join(_words(name)) or name.strip().lower()


def _known_sets() -> dict[tuple[str, ...], list[Skeleton]]:
    """rapidpose's keypoint sets by their normalised names (ap10k and apt36k share theirs)."""
    known: dict[tuple[str, ...], list[Skeleton]] = {}
    for skeleton in SKELETONS.values():
        known.setdefault(tuple(_normal(n) for n in skeleton.keypoints), []).append(skeleton)
    return known


_KNOWN = _known_sets()


# --- the keypoint set of a category --------------------------------------------------------------------

def _flip_pairs(names) -> tuple[tuple[int, int], ...]:
    """Left/right pairs found from the names: 'left'/'right' as any word ('left_eye', 'eye_left',
    'leftEye', 'Left Eye', 'medial_left_knee'), or 'l'/'r' as the first or last word ('l_eye', 'eye_r',
    'L_F_Paw'). Two names pair when they are the same once the side word is set aside."""
    sides: dict[str, dict[tuple, list[int]]] = {"l": {}, "r": {}}
    for i, name in enumerate(names):
        words = _words(name)
        at = next((j for j, w in enumerate(words) if w in ("left", "right")), None)
        if at is None and words and words[0] in ("l", "r"):
            at = 0
        elif at is None and words and words[-1] in ("l", "r"):
            at = len(words) - 1
        if at is not None:
            key = tuple(words[:at] + ["*"] + words[at + 1:])
            sides[words[at][0]].setdefault(key, []).append(i)
    pairs = [tuple(sorted(p)) for key, lefts in sides["l"].items() for p in zip(lefts, sides["r"].get(key, []))]
    return tuple(sorted(pairs))


def _edges(skeleton, count: int, category: str) -> list[tuple[int, int]]:
    """A category's 'skeleton' as 0-based pairs. COCO numbers keypoints from 1, so 1-based is assumed
    unless an index is 0 (then the file counts from 0); a skeleton that fits neither, or is not a list
    of index pairs, is left out with a warning (edges only matter for drawing)."""
    if not skeleton:
        return []
    try:
        pairs = [(int(a), int(b)) for a, b in skeleton]
    except (TypeError, ValueError):
        pairs = None
    indices = [i for pair in pairs or [] for i in pair]
    if pairs and min(indices) >= 1 and max(indices) <= count:
        return [(a - 1, b - 1) for a, b in pairs]
    if pairs and min(indices) == 0 and max(indices) < count:
        log.info("category '%s': its skeleton counts keypoints from 0 (COCO counts from 1)", category)
        return pairs
    log.warning("category '%s': 'skeleton' is not a list of keypoint index pairs between 1 and %d, so it "
                "is left out (it only matters for drawing)", category, count)
    return []


def _sigmas(category: dict, count: int, label: str) -> tuple[float, ...] | None:
    if "sigmas" not in category:
        return None
    sigmas = category["sigmas"]
    try:
        values = tuple(float(s) for s in sigmas)
    except (TypeError, ValueError):
        values = ()
    if len(values) != count or not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"category '{label}': 'sigmas' must be {count} positive numbers, one per keypoint "
                         f"(got {sigmas!r}): fix them or leave 'sigmas' out")
    return values


def skeleton_from_category(category: dict, name: str | None = None) -> Skeleton:
    """The keypoint set of a COCO category: names from 'keypoints', edges from 'skeleton' (1-based, as
    COCO; 0-based when an index is 0), flip pairs from the names' left/right words, OKS sigmas from
    'sigmas' (else COCO's for COCO's points, else 0.05 each).

    A category with the points of one of rapidpose's sets (same names in the same order, spelled in any
    case or with spaces: AI Challenger's 'Right Shoulder' is aic's 'right_shoulder') gives that Skeleton
    itself, so COCO's is `rapidpose.skeletons.COCO`; if the file's sigmas differ from the set's, a copy
    with the file's. `name`: the name of a new set (default: the category's name), and the preferred
    one among known sets of the same points (ap10k or apt36k). Raises InputError for unusable names or
    sigmas.
    """
    label = str(category.get("name", category.get("id", "?")))
    names = category.get("keypoints")
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)):
        raise InputError(f"category '{label}' has no keypoint names: its 'keypoints' must be a list of names")
    normal = [_normal(n) for n in names]
    if len(set(normal)) != len(normal):
        twice = sorted({n for n in names if normal.count(_normal(n)) > 1})
        raise InputError(f"category '{label}' names a keypoint more than once ({', '.join(twice)}): "
                         f"give each keypoint its own name")
    sigmas = _sigmas(category, len(names), label)

    known = _KNOWN.get(tuple(normal), [])
    if known:
        skeleton = next((s for s in known if s.name == name), known[0])
        if sigmas is None or (skeleton.sigmas is not None and np.allclose(sigmas, skeleton.sigmas)):
            return skeleton
        log.info("category '%s' has the points of '%s' but its own sigmas: using the file's", label, skeleton.name)
        return replace(skeleton, sigmas=sigmas)
    if sigmas is None:
        log.info("category '%s' gives no OKS sigmas: keypoint AP will use %g for every keypoint",
                 label, UNIFORM_SIGMA)
        sigmas = (UNIFORM_SIGMA,) * len(names)
    return _make(name or str(category.get("name") or "custom"), names,
                 _edges(category.get("skeleton"), len(names), label), _flip_pairs(names), sigmas)


def upper_body_ids(skeleton: Skeleton) -> list[int] | None:
    """The keypoints the half-body augmentation counts as upper body: the official split for the sets
    the official configs define, else the points named like a head, face, neck, arm or hand (or a front
    leg); None when no name says so."""
    official = SKELETONS.get(skeleton.name)
    if official is not None and official.keypoints == skeleton.keypoints and skeleton.name in _OFFICIAL_UPPER_BODY:
        return list(_OFFICIAL_UPPER_BODY[skeleton.name])
    upper = [i for i, n in enumerate(skeleton.keypoints) if _UPPER_WORDS.intersection(_words(n))]
    return upper or None


# --- samples -----------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One annotated person."""

    image: Path
    image_id: int
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2, cleaned as the official code
    keypoints: np.ndarray  # (K, 2) float32 image pixels
    visible: np.ndarray  # (K,) float32 COCO visibility: 0 not labelled, 1 hidden, 2 visible
    area: float  # the annotation's 'area' (segment area, for OKS), else the box's


@dataclass
class KeypointSet:
    """What a training or validation run reads: the keypoint set, the people, every image entry of the
    file (image_id -> entry with file_name, width, height) and why annotations were skipped."""

    skeleton: Skeleton
    samples: list[Sample]
    images: dict[int, dict]
    annotations: Path
    image_dir: Path
    skipped: dict[str, int]

    def summary(self) -> str:
        images = len({s.image_id for s in self.samples})
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return (f"{len(self.samples)} people in {images} images, {self.skeleton.num_keypoints} keypoints "
                f"({self.skeleton.name}), skipped: {skipped or 'none'}")

    @property
    def upper_body(self) -> list[int] | None:
        return upper_body_ids(self.skeleton)


def _numbers(values) -> bool:
    """Whether all values are finite numbers (not None, text or booleans)."""
    try:
        array = np.asarray(values)
    except ValueError:  # ragged nesting
        return False
    return array.dtype.kind in "iuf" and bool(np.isfinite(array).all())


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as rapidpose.io.read_image would give the image (EXIF-turned), from the header
    when Pillow can read it, else by decoding; None when the file is no readable image."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap the sides
        return (height, width) if turned else (width, height)
    except Exception:  # Pillow missing or unable to read this file: let OpenCV decide
        pass
    from rapidpose.io import read_image

    try:
        height, width = read_image(path).shape[:2]
    except InputError:
        return None
    return width, height


def _pick_category(doc: dict, path: Path, category_id: int | None) -> dict:
    categories = [c for c in doc["categories"] if isinstance(c, dict)]
    with_keypoints = [c for c in categories if c.get("keypoints")]
    listed = ", ".join(f"{c.get('id')} '{c.get('name')}' ({len(c['keypoints'])} keypoints)" for c in with_keypoints)
    if category_id is not None:
        chosen = next((c for c in categories if c.get("id") == category_id), None)
        if chosen is None or not chosen.get("keypoints"):
            what = "is not a category" if chosen is None else "has no keypoints"
            raise InputError(f"category_id {category_id} {what} of '{path}': pick one of the keypoint categories "
                             f"{listed or '(there are none)'}")
        return chosen
    if not with_keypoints:
        named = ", ".join(f"'{c.get('name')}'" for c in categories) or "none"
        raise InputError(f"'{path}' has no category with keypoint names (categories: {named}): pass a COCO "
                         f"keypoint annotation file, whose category lists its keypoints under 'keypoints'")
    if len(with_keypoints) > 1:
        raise InputError(f"'{path}' has {len(with_keypoints)} keypoint categories: {listed}; pass category_id "
                         f"to pick one")
    return with_keypoints[0]


def load_keypoint_set(annotations, image_dir, category_id: int | None = None,
                      min_keypoints: int = 1) -> KeypointSet:
    """The people of one keypoint category of a COCO-format annotation file whose images are in
    `image_dir`, each with at least `min_keypoints` labelled keypoints (0 keeps unlabelled people too).

    category_id: which category, needed only when the file has several with keypoints.
    """
    path, folder = Path(annotations), Path(image_dir)
    if not path.is_file():
        raise InputError(f"annotation file '{path}' does not exist: pass a COCO-format keypoint annotation file "
                         f"(e.g. person_keypoints_train2017.json)")
    if not folder.is_dir():
        raise InputError(f"image folder '{folder}' does not exist or is not a folder: pass the folder that holds "
                         f"the images of '{path}'")
    if isinstance(min_keypoints, bool) or not isinstance(min_keypoints, int) or min_keypoints < 0:
        raise InputError(f"min_keypoints must be a whole number, 0 or more, got {min_keypoints!r}")
    doc = _read_json(path, "annotation file")
    missing = [k for k in ("images", "annotations", "categories")
               if not (isinstance(doc, dict) and isinstance(doc.get(k), list))]
    if missing:
        raise InputError(f"'{path}' is not a COCO annotation file: it has no {', '.join(repr(k) for k in missing)} "
                         f"list; pass one in COCO's keypoint format (images, annotations, categories)")
    category = _pick_category(doc, path, category_id)
    try:
        skeleton = skeleton_from_category(category)
    except InputError as exc:
        raise InputError(f"'{path}': {exc}") from None
    count = skeleton.num_keypoints

    images = {im["id"]: dict(im) for im in doc["images"] if isinstance(im, dict) and "id" in im}
    files: dict = {}  # image_id -> its file, or None where it does not exist: looked for once
    sizes: dict = {}  # image_id -> (width, height) or None, read once

    def size(image_id, image) -> tuple | None:
        if image_id not in sizes:
            given = (image.get("width"), image.get("height"))
            sizes[image_id] = given if _numbers(given) and min(given) > 0 else _image_size(files[image_id])
            if sizes[image_id] is not None:
                image["width"], image["height"] = sizes[image_id]
        return sizes[image_id]

    def sample(obj) -> Sample | str:
        """The annotation as a sample, or why it cannot be one (checked in this order)."""
        if not isinstance(obj, dict):
            return "not an annotation"
        if obj.get("category_id", category.get("id")) != category.get("id"):  # none given: this category's
            return "other category"
        image_id = obj.get("image_id")
        image = None if isinstance(image_id, (list, dict)) else images.get(image_id)
        if image is None:
            return "image entry missing"
        if obj.get("iscrowd", 0):
            return "crowd"
        keypoints, box = obj.get("keypoints", [0] * (3 * count)), obj.get("bbox")
        if not isinstance(keypoints, list) or len(keypoints) != 3 * count:
            return "keypoint count differs from the category"
        if not isinstance(box, list) or len(box) != 4:
            return "no box"
        if not _numbers([*keypoints, *box, obj.get("area", 0)]):
            return "non-finite numbers"
        points = np.asarray(keypoints, np.float32).reshape(count, 3)
        labelled = 0 if obj.get("num_keypoints") == 0 else int((points[:, 2] > 0).sum())  # official: 0 means none
        if labelled < min_keypoints:
            return "no labelled keypoints" if labelled == 0 else f"fewer than {min_keypoints} labelled keypoints"
        if "file_name" not in image:
            return "image entry has no file_name"
        if image_id not in files:
            file = folder / image["file_name"]
            files[image_id] = file if file.is_file() else None
        if files[image_id] is None:
            return "image file missing"
        if size(image_id, image) is None:
            return "image unreadable"
        clean = clean_gt_box(obj, *sizes[image_id])
        if clean is None:
            return "zero area" if obj.get("area", 1) <= 0 else "box empty after clipping"
        x, y, w, h = clean
        return Sample(files[image_id], image_id, np.array([x, y, x + w, y + h], np.float32),
                      np.ascontiguousarray(points[:, :2]), np.ascontiguousarray(points[:, 2]),
                      float(obj.get("area", w * h)))

    samples, skipped = [], Counter()
    for obj in doc["annotations"]:
        found = sample(obj)
        if isinstance(found, Sample):
            samples.append(found)
        else:
            skipped[found] += 1

    if not samples:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.most_common()) or "the file lists none"
        hints = {  # the likeliest cause first: a wrong folder
            "image file missing": f"pass the folder that holds the annotated images, not '{folder}'",
            "no box": "each annotation needs a 'bbox' [x, y, width, height]",
            "keypoint count differs from the category": f"each annotation's 'keypoints' must hold x, y, v for "
                                                        f"the category's {count} keypoints",
        }
        hint = next((h for why, h in hints.items() if why in skipped),
                    "check that its annotations are of this category and have labelled keypoints")
        raise InputError(f"'{path}' has no usable annotation of category '{category.get('name')}' "
                         f"({reasons}): {hint}")
    return KeypointSet(skeleton, samples, images, path, folder, dict(skipped))
