"""The model zoo as data: each name -> its file on the Hugging Face hub and what it is.

One table (`MODEL_ZOO`) says, per name, the network, what it was trained on, its keypoint set, the
accuracy its authors published and where the file comes from; `load_model` resolves names through
it and `rapidpose models` prints it. Figures are only those published by the ViTPose authors
(github.com/ViTAE-Transformer/ViTPose, README results tables: COCO val2017 with the AP-56 person
detections, flip test); a model without one says "not published".

Three kinds of files:
- Hugging Face conversions of official checkpoints (usyd-community/*): config.json + model.safetensors.
  The ViTPose++ ones keep all 6 experts but only the COCO keypoint head.
- ViTPose++ checkpoints split per dataset by easy_ViTPose (JunkyByte/easy_ViTPose, `model_split.py`,
  easy_ViTPose PR #18): one dataset's expert merged into the MLP, and that dataset's head. The same
  network as ViTPose++ with that dataset index. (Formerly named vitpose-s/l/h and easy-vitpose-*.)
- easy_ViTPose's own 25-keypoint fine-tune (COCO + feet), which has no published benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass

from rapidpose.skeletons import SKELETONS, VITPOSE_PLUS_DATASETS

DEFAULT_MODEL = "vitpose-b"
EASY_VITPOSE_REPO = "JunkyByte/easy_ViTPose"
SIZES = {"s": "small", "b": "base", "l": "large", "h": "huge"}
VITPOSE_PLUS_TRAINING = "COCO+AIC+MPII+AP10K+APT36K+WholeBody"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    network: str  # architecture, e.g. "ViTPose-B, classic head"
    trained_on: str  # the training data
    keypoints: str  # keypoint set (a rapidpose.skeletons name)
    published: str  # the authors' figure, e.g. "COCO AP 75.8", or "not published"
    repo: str  # Hugging Face hub repository
    files: tuple[str, ...]  # files to fetch from it; the last holds the weights
    note: str = ""
    coco_ap: float | None = None  # published COCO val2017 AP (AP-56 detections, flip test)
    experts: int = 1  # ViTPose++ experts the file holds (6: choose one with dataset_index)
    heads: int = 1  # keypoint heads the file holds

    @property
    def num_keypoints(self) -> int:
        return SKELETONS[self.keypoints].num_keypoints

    @property
    def source(self) -> str:
        return f"{self.repo}/{self.files[-1]}" if self.files[-1].endswith(".pth") else self.repo


# Published figures (ViTPose README, multi-task tables) of ViTPose++-S/B/L/H on each dataset's
# benchmark, by dataset index: COCO val AP, AIC test AP, MPII val PCKh, AP-10K test AP, APT-36K val
# AP, COCO-WholeBody AP.
_PLUS_RESULTS = {
    "coco": ("COCO AP", (75.8, 77.0, 78.6, 79.4)),
    "aic": ("AIC test AP", (29.7, 31.8, 34.3, 34.8)),
    "mpii": ("MPII val PCKh", (92.7, 92.8, 94.0, 94.2)),
    "ap10k": ("AP-10K test AP", (71.4, 74.5, 80.4, 82.4)),
    "apt36k": ("APT-36K val AP", (74.2, 75.9, 80.8, 82.3)),
    "wholebody": ("COCO-WholeBody AP", (54.4, 57.4, 60.6, 61.2)),
}
_DATASET_TITLES = {"coco": "COCO", "aic": "AI Challenger", "mpii": "MPII", "ap10k": "AP-10K",
                   "apt36k": "APT-36K", "wholebody": "COCO-WholeBody"}
_HF_FILES = ("config.json", "model.safetensors")


def _table() -> dict[str, ZooEntry]:
    rows = [
        ZooEntry("vitpose-b", "ViTPose-B, classic head", "COCO", "coco", "COCO AP 75.8",
                 "usyd-community/vitpose-base", _HF_FILES, coco_ap=75.8,
                 note="the official single-task ViTPose-B, converted by Hugging Face"),
        ZooEntry("vitpose-b-simple", "ViTPose-B, simple head", "COCO", "coco", "COCO AP 75.5",
                 "usyd-community/vitpose-base-simple", _HF_FILES, coco_ap=75.5,
                 note="the official single-task ViTPose-B with the simple decoder, converted by Hugging Face"),
        ZooEntry("vitpose-b-coco-aic-mpii", "ViTPose-B, classic head", "COCO+AIC+MPII", "coco", "COCO AP 77.1",
                 "usyd-community/vitpose-base-coco-aic-mpii", _HF_FILES, coco_ap=77.1,
                 note="the official multi-task ViTPose-B; the Hugging Face file keeps its COCO head only"),
    ]
    for i, (size, long) in enumerate(SIZES.items()):
        big = size.upper()
        ap = _PLUS_RESULTS["coco"][1][i]
        rows.append(ZooEntry(
            f"vitpose-plus-{size}", f"ViTPose++-{big}, 6 experts, COCO head only", VITPOSE_PLUS_TRAINING,
            "coco", f"COCO AP {ap}", f"usyd-community/vitpose-plus-{long}", _HF_FILES, coco_ap=ap,
            experts=6, heads=1,
            note=(f"Hugging Face's conversion keeps the 6 experts but only the COCO head, so dataset_index "
                  f"must be 0; for another dataset use vitpose-plus-{size}-<dataset>")))
        for dataset in VITPOSE_PLUS_DATASETS:
            metric, figures = _PLUS_RESULTS[dataset]
            rows.append(ZooEntry(
                f"vitpose-plus-{size}-{dataset}", f"ViTPose++-{big}, {_DATASET_TITLES[dataset]} expert + head",
                VITPOSE_PLUS_TRAINING, dataset, f"{metric} {figures[i]}", EASY_VITPOSE_REPO,
                (f"torch/{dataset}/vitpose-{size}-{dataset}.pth",),
                coco_ap=figures[i] if dataset == "coco" else None,
                note=(f"ViTPose++-{big} split by easy_ViTPose: the {_DATASET_TITLES[dataset]} expert merged "
                      f"into the MLP, and the {_DATASET_TITLES[dataset]} head; it computes what ViTPose++-{big} "
                      f"does with dataset_index {VITPOSE_PLUS_DATASETS.index(dataset)}")))
        rows.append(ZooEntry(
            f"easy-vitpose-{size}-coco_25", f"ViTPose-{big} architecture, classic head",
            "COCO + feet (easy_ViTPose's fine-tune)", "coco_25", "not published", EASY_VITPOSE_REPO,
            (f"torch/coco_25/vitpose-{size}-coco_25.pth",),
            note="easy_ViTPose's own fine-tune of a ViTPose COCO model to 25 keypoints (COCO + 6 foot points)"))
    return {row.name: row for row in rows}


MODEL_ZOO: dict[str, ZooEntry] = _table()

# Old names -> current ones. They still load (with a warning) and give the same weights as before:
# vitpose-s/l/h were never the single-task ViTPose-S/L/H their names suggest, but easy_ViTPose's
# COCO split of ViTPose++, and easy-vitpose-* hid that their files are ViTPose++ splits.
ALIASES: dict[str, str] = {f"vitpose-{size}": f"vitpose-plus-{size}-coco" for size in "slh"}
ALIASES.update({f"easy-vitpose-{size}-{dataset}": f"vitpose-plus-{size}-{dataset}"
                for size in SIZES for dataset in VITPOSE_PLUS_DATASETS})


def lookup(name: str) -> tuple[ZooEntry | None, str | None]:
    """(entry, old name it was asked under) for a zoo name or alias; (None, None) for anything else."""
    if name in MODEL_ZOO:
        return MODEL_ZOO[name], None
    if name in ALIASES:
        return MODEL_ZOO[ALIASES[name]], name
    return None, None


def split_for(entry: ZooEntry, dataset_index: int) -> ZooEntry | None:
    """The per-dataset ViTPose++ file of the same size as a vitpose-plus-<size>[-coco] entry, if any."""
    prefix = entry.name.removesuffix("-coco")
    if not prefix.startswith("vitpose-plus-") or not 0 <= dataset_index < len(VITPOSE_PLUS_DATASETS):
        return None
    return MODEL_ZOO.get(f"{prefix}-{VITPOSE_PLUS_DATASETS[dataset_index]}")
