"""Keypoint sets as data: names, drawing edges, left/right flip pairs, OKS sigmas, colours."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    keypoints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...] | None = None  # COCO OKS sigmas, where the dataset defines them
    edge_colors: tuple[tuple[int, int, int], ...] = field(default=())  # RGB per edge

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    def flip_index(self) -> np.ndarray:
        """Channel order of the mirrored heatmaps: index[i] is the channel that lands on i."""
        index = np.arange(self.num_keypoints)
        for left, right in self.flip_pairs:
            index[left], index[right] = right, left
        return index

    def to_dict(self) -> dict:
        """The JSON header of `predict --json` and `video --json`: {"name", "keypoint_names", "skeleton"};
        each person's "keypoints" then holds one [x, y, score] per keypoint name."""
        return {"name": self.name, "keypoint_names": list(self.keypoints),
                "skeleton": [list(e) for e in self.edges]}


def _side_colors(names: tuple[str, ...], edges) -> tuple[tuple[int, int, int], ...]:
    """Left limbs green, right limbs orange, the rest blue: the convention people read at a glance."""
    colors = []
    for a, b in edges:
        pair = names[a] + names[b]
        if "left" in pair and "right" not in pair:
            colors.append((0, 200, 0))
        elif "right" in pair and "left" not in pair:
            colors.append((255, 128, 0))
        else:
            colors.append((51, 153, 255))
    return tuple(colors)


def _make(name, keypoints, edges, flip_pairs, sigmas=None) -> Skeleton:
    keypoints = tuple(keypoints)
    edges = tuple(tuple(e) for e in edges)
    return Skeleton(name, keypoints, edges, tuple(tuple(p) for p in flip_pairs),
                    None if sigmas is None else tuple(sigmas), _side_colors(keypoints, edges))


COCO = _make(
    "coco",
    ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
     "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
     "right_knee", "left_ankle", "right_ankle"],
    [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
     (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)],
    [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)],
    [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
     0.087, 0.087, 0.089, 0.089],
)

# easy_ViTPose's 25-keypoint body (JunkyByte/easy_ViTPose, vit_utils/visualization.py "coco_25"):
# COCO's 17 with a neck (5) and a mid-hip (14) inserted, then the six COCO-WholeBody foot points.
# No dataset defines OKS sigmas for it.
COCO_25 = _make(
    "coco_25",
    ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "neck", "left_shoulder", "right_shoulder",
     "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "hip",
     "left_knee", "right_knee", "left_ankle", "right_ankle", "left_big_toe", "left_small_toe",
     "left_heel", "right_big_toe", "right_small_toe", "right_heel"],
    [(17, 15), (15, 12), (18, 16), (16, 13), (12, 14), (13, 14), (5, 14), (6, 5), (7, 5), (6, 8),
     (7, 9), (8, 10), (9, 11), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (17, 21), (18, 24), (19, 20),
     (22, 23), (19, 21), (22, 24), (5, 0)],
    [(1, 2), (3, 4), (6, 7), (8, 9), (10, 11), (12, 13), (15, 16), (17, 18), (19, 22), (20, 23),
     (21, 24)],
)

# AI Challenger (14). Sigmas from the AI Challenger 2017 keypoint evaluation (its deltas / 2).
AIC = _make(
    "aic",
    ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
     "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck"],
    [(2, 1), (1, 0), (0, 13), (13, 3), (3, 4), (4, 5), (8, 7), (7, 6), (6, 9), (9, 10), (10, 11),
     (12, 13), (0, 6), (3, 9)],
    [(0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)],
    [0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642, 0.03686941,
     0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173],
)

# MPII (16). MPII is scored by PCKh, so it defines no OKS sigmas.
MPII = _make(
    "mpii",
    ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
     "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder",
     "left_elbow", "left_wrist"],
    [(0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (8, 12), (12, 11),
     (11, 10), (8, 13), (13, 14), (14, 15)],
    [(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)],
)

# AP-10K animals (17); APT-36K uses the same points. The dataset's names (L_Eye, L_F_Paw, Root of
# tail, ...) are spelled out here in the left_/right_ style of the other sets. The AP-10K paper gives
# no sigmas; these are the ones its benchmark is scored with in mmpose: COCO's values (first two 0.025),
# kept in COCO's order even though the points differ.
AP10K = _make(
    "ap10k",
    ["left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
     "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
     "left_back_paw", "right_hip", "right_knee", "right_back_paw"],
    [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (3, 8), (8, 9), (9, 10), (4, 11),
     (11, 12), (12, 13), (4, 14), (14, 15), (15, 16)],
    [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)],
    [0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
     0.087, 0.087, 0.089, 0.089],
)
APT36K = replace(AP10K, name="apt36k")


def _wholebody() -> Skeleton:
    """COCO-WholeBody (133): 17 body, 6 feet, 68 face (the iBUG 300-W layout), 21 + 21 hands."""
    body, feet = COCO.keypoints, COCO_25.keypoints[19:]
    face = [f"face_{i}" for i in range(68)]
    fingers = ["thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger"]
    hand = ["hand_root"] + [f"{f}{j}" for f in fingers for j in range(1, 5)]
    names = (list(body) + list(feet) + face
             + [f"left_{n}" for n in hand] + [f"right_{n}" for n in hand])
    FOOT, FACE, LHAND, RHAND = 17, 23, 91, 112

    edges = list(COCO.edges)
    # each ankle to its big toe, small toe and heel
    edges += [(15, FOOT + i) for i in range(3)] + [(16, FOOT + 3 + i) for i in range(3)]

    def chain(start, stop, closed=False):
        idx = list(range(FACE + start, FACE + stop + 1))
        links = list(zip(idx[:-1], idx[1:]))
        return links + [(idx[-1], idx[0])] if closed else links

    edges += chain(0, 16) + chain(17, 21) + chain(22, 26) + chain(27, 30) + chain(31, 35)
    edges += [(FACE + 30, FACE + 33)]  # nose bridge to nose tip
    edges += chain(36, 41, True) + chain(42, 47, True) + chain(48, 59, True) + chain(60, 67, True)
    for wrist, root in ((9, LHAND), (10, RHAND)):
        edges.append((wrist, root))
        for f in range(5):
            first = root + 1 + 4 * f
            edges += [(root, first), (first, first + 1), (first + 1, first + 2), (first + 2, first + 3)]

    flips = list(COCO.flip_pairs) + [(FOOT + i, FOOT + 3 + i) for i in range(3)]
    # the standard mirror of the 68 face points: jaw, brows, nostrils, eyes, outer and inner lips
    face_pairs = ([(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
                  + [(31, 35), (32, 34)]
                  + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
                  + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]
                  + [(60, 64), (61, 63), (65, 67)])
    flips += [(FACE + a, FACE + b) for a, b in face_pairs]
    flips += [(LHAND + i, RHAND + i) for i in range(21)]

    # the COCO-WholeBody evaluation's sigmas (jin-s13/COCO-WholeBody, evaluation/myeval_wholebody.py)
    foot_sigmas = [0.068, 0.066, 0.066, 0.092, 0.094, 0.094]
    face_sigmas = [
        0.042, 0.043, 0.044, 0.043, 0.040, 0.035, 0.031, 0.025, 0.020, 0.023, 0.029, 0.032, 0.037,
        0.038, 0.043, 0.041, 0.045, 0.013, 0.012, 0.011, 0.011, 0.012, 0.012, 0.011, 0.011, 0.013,
        0.015, 0.009, 0.007, 0.007, 0.007, 0.012, 0.009, 0.008, 0.016, 0.010, 0.017, 0.011, 0.009,
        0.011, 0.009, 0.007, 0.013, 0.008, 0.011, 0.012, 0.010, 0.034, 0.008, 0.008, 0.009, 0.008,
        0.008, 0.007, 0.010, 0.008, 0.009, 0.009, 0.009, 0.007, 0.007, 0.008, 0.011, 0.008, 0.008,
        0.008, 0.010, 0.008]
    hand_sigmas = [0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018, 0.024,
                   0.022, 0.026, 0.017, 0.021, 0.021, 0.032, 0.020, 0.019, 0.022, 0.031]
    sigmas = list(COCO.sigmas) + foot_sigmas + face_sigmas + hand_sigmas + hand_sigmas
    return _make("wholebody", names, edges, flips, sigmas)


WHOLEBODY = _wholebody()

# First registered wins in skeleton_for(k) when no dataset is named: 17 -> coco, not ap10k.
SKELETONS: dict[str, Skeleton] = {
    s.name: s for s in (COCO, COCO_25, AIC, MPII, AP10K, APT36K, WHOLEBODY)
}

# ViTPose++ expert (dataset) index -> keypoint set, in the order the published checkpoints use.
VITPOSE_PLUS_DATASETS = ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody")


def skeleton_to_meta(skeleton: Skeleton) -> dict:
    """Everything a keypoint set is, JSON-ready: what a trained checkpoint carries (skeleton_from_meta)."""
    return {"name": skeleton.name, "keypoints": list(skeleton.keypoints), "edges": [list(e) for e in skeleton.edges],
            "flip_pairs": [list(p) for p in skeleton.flip_pairs],
            "sigmas": None if skeleton.sigmas is None else list(skeleton.sigmas)}


def skeleton_from_meta(meta: dict) -> Skeleton:
    """skeleton_to_meta's dict back: one of rapidpose's own sets where it is one, else a set of its own."""
    known = SKELETONS.get(meta.get("name"))
    if known is not None and list(known.keypoints) == list(meta["keypoints"]):
        return known
    return _make(meta["name"], meta["keypoints"], meta.get("edges", ()), meta.get("flip_pairs", ()), meta.get("sigmas"))


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise KeyError(f"unknown keypoint set '{name}': choose one of {sorted(SKELETONS)}") from None


def skeleton_for(num_keypoints: int, dataset: str | None = None) -> Skeleton:
    """The keypoint set of a model: by dataset name if known, else the usual set of that size."""
    if dataset is not None and dataset in SKELETONS and SKELETONS[dataset].num_keypoints == num_keypoints:
        return SKELETONS[dataset]
    for skeleton in SKELETONS.values():
        if skeleton.num_keypoints == num_keypoints:
            return skeleton
    names = tuple(f"keypoint_{i}" for i in range(num_keypoints))
    return Skeleton(f"custom{num_keypoints}", names, (), ())
