"""Label schemas, frequency groups and name harmonisation between sources.

A schema is an ordered list of class names plus what is known about their training frequency. Columns
are always matched by NAME (the CXR-LT files disagree on order), so every consumer asks a schema for an
index rather than assuming a position.

Harmonisation maps a label matrix from one source's classes onto another's. A class the source does not
have is *unknown* (-1), never negative: NIH never annotated "Support Devices", so an NIH image without it
says nothing about support devices. Names are compared through per-source alias tables onto the CXR-LT
2024 spelling.

Counts and totals are training-set figures: CXR-LT 2024 from the challenge overview (258,871 images),
NIH from Data_Entry_2017_v2020.csv (112,120 images), CheXpert from its train.csv (223,414 images,
positives = 1.0 only). tests/test_labels.py recomputes the NIH and CheXpert figures from the real tables.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

UNKNOWN = -1.0
GROUPS = ("head", "medium", "tail")
HEAD_FRACTION = 0.10
TAIL_FRACTION = 0.01


@dataclass(frozen=True)
class Schema:
    """An ordered class list with its training counts and (optionally) a hand-made group split.

    `naming` selects the alias table that maps this schema's spellings onto CXR-LT 2024 names.
    """

    name: str
    classes: tuple[str, ...]
    description: str
    naming: str = "cxr-lt"
    counts: Mapping[str, int] | None = None
    total: int | None = None
    hand_groups: Mapping[str, str] | None = None
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"schema {self.name!r} repeats a class name")
        object.__setattr__(self, "_index", MappingProxyType({c: i for i, c in enumerate(self.classes)}))
        if self.counts is not None and set(self.counts) - set(self.classes):
            raise ValueError(f"schema {self.name!r} has counts for classes it lacks")

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, class_name: str) -> int:
        try:
            return self._index[class_name]
        except KeyError:
            close = difflib.get_close_matches(class_name, self.classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"class {class_name!r} is not in schema {self.name!r}{hint}") from None

    def groups(self) -> dict[str, str]:
        """Class -> head/medium/tail: the hand split when the schema has one, else from counts.

        Classes without a count (zero-shot classes) are left out: they belong to no group.
        """
        if self.hand_groups is not None:
            return dict(self.hand_groups)
        if self.counts is None or self.total is None:
            return {}
        return frequency_groups(self.counts, self.total)

    def subset(self, name: str, classes: Sequence[str], description: str) -> Schema:
        """A schema over some of these classes, keeping their counts and hand groups."""
        missing = [c for c in classes if c not in self._index]
        if missing:
            raise KeyError(f"{missing} not in schema {self.name!r}")
        return Schema(
            name=name,
            classes=tuple(classes),
            description=description,
            naming=self.naming,
            counts=None if self.counts is None else {c: self.counts[c] for c in classes if c in self.counts},
            total=self.total,
            hand_groups=None if self.hand_groups is None else {c: self.hand_groups[c] for c in classes},
        )


def frequency_groups(
    counts: Mapping[str, int], total: int, head: float = HEAD_FRACTION, tail: float = TAIL_FRACTION
) -> dict[str, str]:
    """head: count/total >= `head`; tail: < `tail`; medium in between (the CXR-LT community reading)."""
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    groups = {}
    for name, count in counts.items():
        share = count / total
        groups[name] = "head" if share >= head else "tail" if share < tail else "medium"
    return groups


# --- CXR-LT 2024 ---------------------------------------------------------------------------------

_CXR_LT_2024_TRAIN_COUNTS = {
    "Adenopathy": 3409, "Atelectasis": 65376, "Azygos Lobe": 199, "Calcification of the Aorta": 4239,
    "Cardiomegaly": 74738, "Clavicle Fracture": 168, "Consolidation": 15371, "Edema": 37256,
    "Emphysema": 3661, "Enlarged Cardiomediastinum": 29628, "Fibrosis": 1169, "Fissure": 2803,
    "Fracture": 11568, "Granuloma": 2965, "Hernia": 3986, "Hydropneumothorax": 646, "Infarction": 727,
    "Infiltration": 10087, "Kyphosis": 778, "Lobar Atelectasis": 129, "Lung Lesion": 2338,
    "Lung Opacity": 77482, "Mass": 5288, "Nodule": 7531, "Normal": 34292, "Pleural Effusion": 66401,
    "Pleural Other": 616, "Pleural Thickening": 3272, "Pneumomediastinum": 704, "Pneumonia": 46660,
    "Pneumoperitoneum": 516, "Pneumothorax": 13858, "Pulmonary Embolism": 1631,
    "Pulmonary Hypertension": 903, "Rib Fracture": 8919, "Round(ed) Atelectasis": 172,
    "Subcutaneous Emphysema": 2046, "Support Devices": 86079, "Tortuous Aorta": 3336, "Tuberculosis": 2078,
}  # fmt: skip
_CXR_LT_2024_TRAIN_TOTAL = 258_871

# Task 1 columns are the 2024 training CSV's order, which is alphabetical.
CXR_LT_2024_TASK1 = Schema(
    name="cxr-lt-2024-task1",
    classes=tuple(sorted(_CXR_LT_2024_TRAIN_COUNTS)),
    description="CXR-LT 2024 Task 1: 40 findings, MIMIC-CXR-JPG, training-CSV order",
    counts=_CXR_LT_2024_TRAIN_COUNTS,
    total=_CXR_LT_2024_TRAIN_TOTAL,
)

CXR_LT_2024_TASK2 = CXR_LT_2024_TASK1.subset(
    "cxr-lt-2024-task2",
    (
        "Atelectasis", "Calcification of the Aorta", "Cardiomegaly", "Consolidation", "Edema",
        "Emphysema", "Enlarged Cardiomediastinum", "Fibrosis", "Fracture", "Hernia", "Infiltration",
        "Lung Lesion", "Lung Opacity", "Mass", "Normal", "Nodule", "Pleural Effusion", "Pleural Other",
        "Pleural Thickening", "Pneumomediastinum", "Pneumonia", "Pneumoperitoneum", "Pneumothorax",
        "Subcutaneous Emphysema", "Support Devices", "Tortuous Aorta",
    ),
    "CXR-LT 2024 Task 2: 26 findings on the manually annotated gold set, submission order",
)  # fmt: skip

CXR_LT_2024_TASK3 = Schema(
    name="cxr-lt-2024-task3",
    classes=("Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis"),
    description="CXR-LT 2024 Task 3: 5 zero-shot findings never present in training labels",
)

CXR_LT_2024_ALL = Schema(
    name="cxr-lt-2024-all",
    classes=CXR_LT_2024_TASK1.classes + CXR_LT_2024_TASK3.classes,
    description="CXR-LT 2024 union: the 40 Task 1 findings followed by the 5 zero-shot findings",
    counts=_CXR_LT_2024_TRAIN_COUNTS,
    total=_CXR_LT_2024_TRAIN_TOTAL,
)

# --- CXR-LT 2023 ---------------------------------------------------------------------------------

_CXR_LT_2023_HEAD = (
    "Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity", "No Finding", "Pleural Effusion", "Pneumonia",
    "Support Devices",
)  # fmt: skip
_CXR_LT_2023_TAIL = (
    "Fibrosis", "Lung Lesion", "Pleural Other", "Pleural Thickening", "Pneumomediastinum",
    "Pneumoperitoneum", "Subcutaneous Emphysema", "Tortuous Aorta",
)  # fmt: skip
# The 2023 CSV order is alphabetical; 2024 Task 2 kept it and renamed "No Finding" to "Normal" in place.
_CXR_LT_2023_CLASSES = tuple("No Finding" if c == "Normal" else c for c in CXR_LT_2024_TASK2.classes)

# The 2023 counts were never published per class; the winner's hand split is the accepted grouping.
CXR_LT_2023 = Schema(
    name="cxr-lt-2023",
    classes=_CXR_LT_2023_CLASSES,
    description="CXR-LT 2023: 26 findings ('No Finding' instead of 'Normal'), with the winner's hand split",
    naming="cxr-lt-2023",
    hand_groups={
        c: "head" if c in _CXR_LT_2023_HEAD else "tail" if c in _CXR_LT_2023_TAIL else "medium"
        for c in _CXR_LT_2023_CLASSES
    },
)

# --- NIH ChestX-ray14 and CheXpert ---------------------------------------------------------------

_NIH_TRAIN_COUNTS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894, "Mass": 5782,
    "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667, "Edema": 2303,
    "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
}  # fmt: skip

NIH_14 = Schema(
    name="nih-14",
    classes=tuple(_NIH_TRAIN_COUNTS),
    description="NIH ChestX-ray14: 14 findings in the NIH column order (counts over all 112,120 images)",
    naming="nih",
    counts=_NIH_TRAIN_COUNTS,
    total=112_120,
)

_CHEXPERT_TRAIN_COUNTS = {
    "No Finding": 22381, "Enlarged Cardiomediastinum": 10798, "Cardiomegaly": 27000,
    "Lung Opacity": 105581, "Lung Lesion": 9186, "Edema": 52246, "Consolidation": 14783,
    "Pneumonia": 6039, "Atelectasis": 33376, "Pneumothorax": 19448, "Pleural Effusion": 86187,
    "Pleural Other": 3523, "Fracture": 9040, "Support Devices": 116001,
}  # fmt: skip

CHEXPERT_14 = Schema(
    name="chexpert-14",
    classes=tuple(_CHEXPERT_TRAIN_COUNTS),
    description="CheXpert: 14 observations in its CSV order (positive counts over 223,414 training images)",
    naming="chexpert",
    counts=_CHEXPERT_TRAIN_COUNTS,
    total=223_414,
)

SCHEMAS: Mapping[str, Schema] = MappingProxyType(
    {
        s.name: s
        for s in (
            CXR_LT_2024_TASK1, CXR_LT_2024_TASK2, CXR_LT_2024_TASK3, CXR_LT_2024_ALL, CXR_LT_2023,
            NIH_14, CHEXPERT_14,
        )
    }
)  # fmt: skip

# CodaLab submission tasks of CXR-LT 2024.
TASK_SCHEMAS: Mapping[str, Schema] = MappingProxyType(
    {"t1": CXR_LT_2024_TASK1, "t2": CXR_LT_2024_TASK2, "t3": CXR_LT_2024_TASK3}
)


def get_schema(name: str) -> Schema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMAS)}") from None


# --- harmonisation -------------------------------------------------------------------------------

# Source spelling -> CXR-LT 2024 spelling. "No Finding" -> "Normal" is approximate: CheXpert/NIH "No
# Finding" means none of *their* findings, which is close to but not the MIMIC "Normal" label.
ALIASES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "cxr-lt": MappingProxyType({}),
        "cxr-lt-2023": MappingProxyType({"No Finding": "Normal"}),
        "nih": MappingProxyType(
            {"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Thickening", "No Finding": "Normal"}
        ),
        "chexpert": MappingProxyType({"No Finding": "Normal"}),
    }
)


def canonical_name(class_name: str, naming: str) -> str:
    """The CXR-LT 2024 spelling of a class named under `naming`'s conventions."""
    try:
        aliases = ALIASES[naming]
    except KeyError:
        raise KeyError(f"unknown naming {naming!r}; known: {', '.join(ALIASES)}") from None
    return aliases.get(class_name, class_name)


def harmonisation_index(source: Schema, target: Schema) -> np.ndarray:
    """For each target class, the source column that holds it, or -1 when the source lacks it."""
    by_canonical = {canonical_name(c, source.naming): i for i, c in enumerate(source.classes)}
    return np.array(
        [by_canonical.get(canonical_name(c, target.naming), -1) for c in target.classes], dtype=np.int64
    )


def harmonise_labels(labels: np.ndarray, source: Schema, target: Schema) -> np.ndarray:
    """Map an (N, len(source)) label matrix onto `target`; classes the source lacks become UNKNOWN."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[1] != len(source):
        raise ValueError(f"labels have shape {labels.shape}, expected (N, {len(source)}) for {source.name}")
    index = harmonisation_index(source, target)
    out = np.full((labels.shape[0], len(target)), UNKNOWN, dtype=np.float32)
    present = index >= 0
    out[:, present] = labels[:, index[present]]
    return out
