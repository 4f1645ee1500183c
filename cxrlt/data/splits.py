"""Patient-level train/dev/test assignment for sources that ship without a split.

Each patient lands in a split by a hash of (seed, patient id), not by position in the table: the
assignment is the same whatever the row order, whichever subset of the table is sharded, and a patient
never straddles two splits (images of one patient are correlated; leaking them inflates scores).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cxrlt.data.records import Record
from cxrlt.data.shardset import SPLITS
from cxrlt.errors import InputError

_HASH_SPACE = float(1 << 64)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (train, dev, test) fractions that sum to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise InputError(f"--split {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(parts) != len(SPLITS) or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise InputError(f"--split {text!r}: expected three non-negative fractions summing to 1")
    return parts  # type: ignore[return-value]


def patient_split(patient_id: str, fractions: Sequence[float], seed: int) -> str:
    digest = hashlib.blake2b(f"{seed}:{patient_id}".encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / _HASH_SPACE
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if position < edge:
            return name
    return SPLITS[-1]


def assign_splits(records: list[Record], split_by: str, fractions: Sequence[float], seed: int) -> None:
    """Fill `split` of records that have none: by patient hash, or 'train' for every one when 'none'."""
    if split_by not in ("patient", "none"):
        raise InputError(f"--split-by {split_by!r}: expected 'patient' or 'none'")
    for record in records:
        if record.split is None:
            record.split = "train" if split_by == "none" else patient_split(record.patient_id, fractions, seed)


def check_disjoint(records: list[Record], where: str) -> None:
    """Refuse leakage between splits: an image id, or a patient, with records in two splits (a split a
    source ships, e.g. mimic-cxr-lt's CSVs or a csv-folder `split` column, is taken as given otherwise).
    `where` names the source (its files) in the message."""
    for what, key in (("image id", lambda r: r.image_id), ("patient", lambda r: r.patient_id)):
        first: dict[str, str | None] = {}  # None: a record assign_splits has not seen
        for record in records:
            ident, split = key(record), record.split
            seen = first.setdefault(ident, split)
            if seen != split:
                a, b = sorted((seen, split), key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))
                raise InputError(
                    f"{where}: {what} {ident!r} is in both the {a!r} and the {b!r} split (leakage between "
                    f"splits); every {what} must belong to one split"
                )
