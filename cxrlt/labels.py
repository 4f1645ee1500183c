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
    "Adenopathy": 3409,
    "Atelectasis": 65376,
    "Azygos Lobe": 199,
    "Calcification of the Aorta": 4239,
    "Cardiomegaly": 74738,
    "Clavicle Fracture": 168,
    "Consolidation": 15371,
    "Edema": 37256,
    "Emphysema": 3661,
    "Enlarged Cardiomediastinum": 29628,
    "Fibrosis": 1169,
    "Fissure": 2803,
    "Fracture": 11568,
    "Granuloma": 2965,
    "Hernia": 3986,
    "Hydropneumothorax": 646,
    "Infarction": 727,
    "Infiltration": 10087,
    "Kyphosis": 778,
    "Lobar Atelectasis": 129,
    "Lung Lesion": 2338,
    "Lung Opacity": 77482,
    "Mass": 5288,
    "Nodule": 7531,
    "Normal": 34292,
    "Pleural Effusion": 66401,
    "Pleural Other": 616,
    "Pleural Thickening": 3272,
    "Pneumomediastinum": 704,
    "Pneumonia": 46660,
    "Pneumoperitoneum": 516,
    "Pneumothorax": 13858,
    "Pulmonary Embolism": 1631,
    "Pulmonary Hypertension": 903,
    "Rib Fracture": 8919,
    "Round(ed) Atelectasis": 172,
    "Subcutaneous Emphysema": 2046,
    "Support Devices": 86079,
    "Tortuous Aorta": 3336,
    "Tuberculosis": 2078,
}
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
        "Atelectasis",
        "Calcification of the Aorta",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Enlarged Cardiomediastinum",
        "Fibrosis",
        "Fracture",
        "Hernia",
        "Infiltration",
        "Lung Lesion",
        "Lung Opacity",
        "Mass",
        "Normal",
        "Nodule",
        "Pleural Effusion",
        "Pleural Other",
        "Pleural Thickening",
        "Pneumomediastinum",
        "Pneumonia",
        "Pneumoperitoneum",
        "Pneumothorax",
        "Subcutaneous Emphysema",
        "Support Devices",
        "Tortuous Aorta",
    ),
    "CXR-LT 2024 Task 2: 26 findings on the manually annotated gold set, submission order",
)

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
    "Atelectasis",
    "Cardiomegaly",
    "Edema",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pneumonia",
    "Support Devices",
)
_CXR_LT_2023_TAIL = (
    "Fibrosis",
    "Lung Lesion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumoperitoneum",
    "Subcutaneous Emphysema",
    "Tortuous Aorta",
)
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
    "Atelectasis": 11559,
    "Cardiomegaly": 2776,
    "Effusion": 13317,
    "Infiltration": 19894,
    "Mass": 5782,
    "Nodule": 6331,
    "Pneumonia": 1431,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Edema": 2303,
    "Emphysema": 2516,
    "Fibrosis": 1686,
    "Pleural_Thickening": 3385,
    "Hernia": 227,
}

NIH_14 = Schema(
    name="nih-14",
    classes=tuple(_NIH_TRAIN_COUNTS),
    description="NIH ChestX-ray14: 14 findings in the NIH column order (counts over all 112,120 images)",
    naming="nih",
    counts=_NIH_TRAIN_COUNTS,
    total=112_120,
)

_CHEXPERT_TRAIN_COUNTS = {
    "No Finding": 22381,
    "Enlarged Cardiomediastinum": 10798,
    "Cardiomegaly": 27000,
    "Lung Opacity": 105581,
    "Lung Lesion": 9186,
    "Edema": 52246,
    "Consolidation": 14783,
    "Pneumonia": 6039,
    "Atelectasis": 33376,
    "Pneumothorax": 19448,
    "Pleural Effusion": 86187,
    "Pleural Other": 3523,
    "Fracture": 9040,
    "Support Devices": 116001,
}

CHEXPERT_14 = Schema(
    name="chexpert-14",
    classes=tuple(_CHEXPERT_TRAIN_COUNTS),
    description="CheXpert: 14 observations in its CSV order (positive counts over 223,414 training images)",
    naming="chexpert",
    counts=_CHEXPERT_TRAIN_COUNTS,
    total=223_414,
)

# --- PadChest ------------------------------------------------------------------------------------

# Images per report-derived label in PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (160,861 rows;
# the 103 rows without a label list count as unlabelled). Names are PadChest's own lowercase English.
_PADCHEST_COUNTS = {
    "COPD signs": 23280,
    "Chilaiditi sign": 22,
    "NSG tube": 5390,
    "abnormal foreign body": 68,
    "abscess": 16,
    "adenopathy": 562,
    "air bronchogram": 197,
    "air fluid level": 197,
    "air trapping": 6147,
    "alveolar pattern": 5738,
    "aortic aneurysm": 49,
    "aortic atheromatosis": 2546,
    "aortic button enlargement": 492,
    "aortic elongation": 10824,
    "aortic endoprosthesis": 43,
    "apical pleural thickening": 3625,
    "artificial aortic heart valve": 326,
    "artificial heart valve": 720,
    "artificial mitral heart valve": 450,
    "asbestosis signs": 70,
    "ascendent aortic elongation": 212,
    "atelectasis": 2905,
    "atelectasis basal": 40,
    "atypical pneumonia": 244,
    "axial hyperostosis": 370,
    "azygoesophageal recess shift": 58,
    "azygos lobe": 483,
    "blastic bone lesion": 65,
    "bone cement": 13,
    "bone metastasis": 195,
    "breast mass": 1,
    "bronchiectasis": 2698,
    "bronchovascular markings": 1398,
    "bullas": 650,
    "calcified adenopathy": 647,
    "calcified densities": 1221,
    "calcified fibroadenoma": 66,
    "calcified granuloma": 3194,
    "calcified mediastinal adenopathy": 11,
    "calcified pleural plaques": 247,
    "calcified pleural thickening": 644,
    "callus rib fracture": 2967,
    "cardiomegaly": 15022,
    "catheter": 74,
    "cavitation": 618,
    "central vascular redistribution": 219,
    "central venous catheter": 445,
    "central venous catheter via jugular vein": 3204,
    "central venous catheter via subclavian vein": 1654,
    "central venous catheter via umbilical vein": 170,
    "cervical rib": 121,
    "chest drain tube": 621,
    "chronic changes": 7337,
    "clavicle fracture": 338,
    "consolidation": 2497,
    "costochondral junction hypertrophy": 155,
    "costophrenic angle blunting": 6784,
    "cyst": 8,
    "dai": 275,
    "descendent aortic elongation": 1238,
    "dextrocardia": 21,
    "diaphragmatic eventration": 1191,
    "double J stent": 14,
    "dual chamber device": 1352,
    "electrical device": 43,
    "emphysema": 1538,
    "empyema": 5,
    "end on vessel": 235,
    "endoprosthesis": 33,
    "endotracheal tube": 2429,
    "esophagic dilatation": 3,
    "exclude": 1312,
    "external foreign body": 46,
    "fibrotic band": 3713,
    "fissure thickening": 253,
    "flattened diaphragm": 990,
    "fracture": 16,
    "gastrostomy tube": 10,
    "goiter": 947,
    "granuloma": 732,
    "ground glass pattern": 275,
    "gynecomastia": 688,
    "heart insufficiency": 2461,
    "heart valve calcified": 163,
    "hemidiaphragm elevation": 2466,
    "hiatal hernia": 2363,
    "hilar congestion": 1133,
    "hilar enlargement": 1541,
    "humeral fracture": 308,
    "humeral prosthesis": 133,
    "hydropneumothorax": 48,
    "hyperinflated lung": 689,
    "hypoexpansion": 1297,
    "hypoexpansion basal": 119,
    "increased density": 2497,
    "infiltrates": 7089,
    "interstitial pattern": 7799,
    "kerley lines": 107,
    "kyphosis": 5215,
    "laminar atelectasis": 5190,
    "lepidic adenocarcinoma": 15,
    "lipomatosis": 1,
    "lobar atelectasis": 860,
    "loculated fissural effusion": 137,
    "loculated pleural effusion": 306,
    "lung metastasis": 358,
    "lung vascular paucity": 192,
    "lymphangitis carcinomatosa": 52,
    "lytic bone lesion": 85,
    "major fissure thickening": 56,
    "mammary prosthesis": 599,
    "mass": 56,
    "mastectomy": 763,
    "mediastinal enlargement": 347,
    "mediastinal mass": 328,
    "mediastinal shift": 57,
    "mediastinic lipomatosis": 427,
    "metal": 1634,
    "miliary opacities": 211,
    "minor fissure thickening": 508,
    "multiple nodules": 358,
    "nephrostomy tube": 3,
    "nipple shadow": 1247,
    "nodule": 3748,
    "non axial articular degenerative changes": 281,
    "normal": 50616,
    "obesity": 48,
    "osteopenia": 704,
    "osteoporosis": 321,
    "osteosynthesis material": 691,
    "pacemaker": 3508,
    "pectum carinatum": 59,
    "pectum excavatum": 357,
    "pericardial effusion": 79,
    "pleural effusion": 9853,
    "pleural mass": 3,
    "pleural plaques": 26,
    "pleural thickening": 1055,
    "pneumomediastinum": 28,
    "pneumonia": 7953,
    "pneumoperitoneo": 70,
    "pneumothorax": 533,
    "post radiotherapy changes": 344,
    "prosthesis": 25,
    "pseudonodule": 2241,
    "pulmonary artery enlargement": 256,
    "pulmonary artery hypertension": 43,
    "pulmonary edema": 1456,
    "pulmonary fibrosis": 1228,
    "pulmonary hypertension": 175,
    "pulmonary mass": 1039,
    "pulmonary venous hypertension": 12,
    "reservoir central venous catheter": 549,
    "respiratory distress": 52,
    "reticular interstitial pattern": 710,
    "reticulonodular interstitial pattern": 286,
    "rib fracture": 848,
    "right sided aortic arch": 26,
    "round atelectasis": 6,
    "sclerotic bone lesion": 602,
    "scoliosis": 8333,
    "segmental atelectasis": 174,
    "single chamber device": 689,
    "soft tissue mass": 141,
    "sternoclavicular junction hypertrophy": 7,
    "sternotomy": 2849,
    "subacromial space narrowing": 45,
    "subcutaneous emphysema": 213,
    "suboptimal study": 1839,
    "superior mediastinal enlargement": 790,
    "supra aortic elongation": 1599,
    "surgery": 227,
    "surgery breast": 470,
    "surgery heart": 21,
    "surgery humeral": 17,
    "surgery lung": 351,
    "surgery neck": 463,
    "suture material": 2202,
    "thoracic cage deformation": 253,
    "total atelectasis": 28,
    "tracheal shift": 798,
    "tracheostomy tube": 1825,
    "tuberculosis": 308,
    "tuberculosis sequelae": 1070,
    "unchanged": 14334,
    "vascular hilar enlargement": 4517,
    "vascular redistribution": 475,
    "ventriculoperitoneal drain tube": 35,
    "vertebral anterior compression": 2132,
    "vertebral compression": 463,
    "vertebral degenerative changes": 4878,
    "vertebral fracture": 369,
    "volume loss": 2757,
}

PADCHEST = Schema(
    name="padchest",
    classes=tuple(sorted(_PADCHEST_COUNTS)),
    description="PadChest: 193 report-derived labels by name (counts over all 160,861 images)",
    naming="padchest",
    counts=_PADCHEST_COUNTS,
    total=160_861,
)

# --- VinDr-CXR -----------------------------------------------------------------------------------

# The 22 local findings then the 6 global labels, in the column order of image_labels_train.csv /
# image_labels_test.csv (PhysioNet vindr-cxr 1.0.0); training images read by 3 radiologists each, test
# images by a 5-radiologist consensus. Counts were not published per label, so groups come from shards.
VINDR_CXR = Schema(
    name="vindr-cxr",
    classes=(
        "Aortic enlargement",
        "Atelectasis",
        "Calcification",
        "Cardiomegaly",
        "Clavicle fracture",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Enlarged PA",
        "ILD",
        "Infiltration",
        "Lung Opacity",
        "Lung cavity",
        "Lung cyst",
        "Mediastinal shift",
        "Nodule/Mass",
        "Pleural effusion",
        "Pleural thickening",
        "Pneumothorax",
        "Pulmonary fibrosis",
        "Rib fracture",
        "Other lesion",
        "COPD",
        "Lung tumor",
        "Pneumonia",
        "Tuberculosis",
        "Other diseases",
        "No finding",
    ),
    description="VinDr-CXR: 22 local findings + 6 diagnoses in its CSV order (radiologist labels, PA views)",
    naming="vindr",
)

SCHEMAS: Mapping[str, Schema] = MappingProxyType(
    {
        s.name: s
        for s in (
            CXR_LT_2024_TASK1,
            CXR_LT_2024_TASK2,
            CXR_LT_2024_TASK3,
            CXR_LT_2024_ALL,
            CXR_LT_2023,
            NIH_14,
            CHEXPERT_14,
            PADCHEST,
            VINDR_CXR,
        )
    }
)

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
        # VinDr names with a CXR-LT 2024 class of the same meaning; the rest stay VinDr's own (and so
        # unknown under CXR-LT schemas): "Nodule/Mass" is neither Nodule nor Mass alone, "Calcification"
        # is any calcification (not only the aorta's), "Aortic enlargement" is not "Tortuous Aorta".
        "vindr": MappingProxyType(
            {
                "Clavicle fracture": "Clavicle Fracture",
                "Pleural effusion": "Pleural Effusion",
                "Pleural thickening": "Pleural Thickening",
                "Pulmonary fibrosis": "Fibrosis",
                "Rib fracture": "Rib Fracture",
                "No finding": "Normal",
            }
        ),
        # One PadChest name per CXR-LT class (harmonisation needs a one-to-one map); the closest PadChest
        # term where the wording differs ("aortic elongation" is the report term for a tortuous aorta).
        "padchest": MappingProxyType(
            {
                "normal": "Normal",
                "adenopathy": "Adenopathy",
                "atelectasis": "Atelectasis",
                "azygos lobe": "Azygos Lobe",
                "aortic atheromatosis": "Calcification of the Aorta",
                "cardiomegaly": "Cardiomegaly",
                "clavicle fracture": "Clavicle Fracture",
                "consolidation": "Consolidation",
                "pulmonary edema": "Edema",
                "emphysema": "Emphysema",
                "pulmonary fibrosis": "Fibrosis",
                "fissure thickening": "Fissure",
                "fracture": "Fracture",
                "granuloma": "Granuloma",
                "hiatal hernia": "Hernia",
                "hydropneumothorax": "Hydropneumothorax",
                "infiltrates": "Infiltration",
                "kyphosis": "Kyphosis",
                "lobar atelectasis": "Lobar Atelectasis",
                "pulmonary mass": "Mass",
                "nodule": "Nodule",
                "pleural effusion": "Pleural Effusion",
                "pleural thickening": "Pleural Thickening",
                "pneumomediastinum": "Pneumomediastinum",
                "pneumonia": "Pneumonia",
                "pneumoperitoneo": "Pneumoperitoneum",
                "pneumothorax": "Pneumothorax",
                "pulmonary hypertension": "Pulmonary Hypertension",
                "rib fracture": "Rib Fracture",
                "round atelectasis": "Round(ed) Atelectasis",
                "subcutaneous emphysema": "Subcutaneous Emphysema",
                "aortic elongation": "Tortuous Aorta",
                "tuberculosis": "Tuberculosis",
                "bullas": "Bulla",
                "osteopenia": "Osteopenia",
                "scoliosis": "Scoliosis",
            }
        ),
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
    return np.array([by_canonical.get(canonical_name(c, target.naming), -1) for c in target.classes], dtype=np.int64)


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
