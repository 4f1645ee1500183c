"""A shard split's ground truth as a label CSV: what `cxrlt ensemble build`, `cxrlt evaluate` and
`cxrlt submit write --ids` read, for shard sets whose source has no such table of its own (the embedded
sample, NIH, PadChest) or after a patient split made at sharding time.

Columns: dicom_id (the CXR-LT name of the image id), study_id, subject_id (the patient), ViewPosition,
then one column per class in schema order holding 1 / 0, blank for unknown. Rows in split order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.data.partition import slot_for
from cxrlt.data.readers import ShardSplit


def split_labels(shards: str | os.PathLike, split: str) -> tuple[list[dict], np.ndarray, list[str]]:
    """The json metadata and label row of every sample of `split`, in split order, and the classes."""
    data = ShardSplit(Path(shards), split)
    everything = slot_for(len(data.entries), 0, 1, 0, 1)
    metas, rows = [], []
    for s in range(len(data.entries)):
        for _, meta, labels in data.read(s, everything):
            metas.append(meta)
            rows.append(labels)
    return metas, np.stack(rows), list(data.index.classes)


def label_frame(shards: str | os.PathLike, split: str) -> pd.DataFrame:
    metas, labels, classes = split_labels(shards, split)
    frame = pd.DataFrame(
        {
            "dicom_id": [m["image_id"] for m in metas],
            "study_id": [m["study_id"] for m in metas],
            "subject_id": [m["patient_id"] for m in metas],
            "ViewPosition": [m.get("view") or "" for m in metas],
        }
    )
    cells = np.where(labels < 0, "", labels.astype(int).astype(str))
    return pd.concat([frame, pd.DataFrame(cells, columns=classes)], axis=1)
