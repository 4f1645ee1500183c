"""Label overlays: values by sample id that fill the unknown targets of training batches.

`LabelOverlay` holds a table (sample id -> values of some target columns); during training every unknown
(-1) target of a batch in those columns is replaced by the table's value for that sample, when the table
has one. Known labels are never overwritten. Two tables use it:

- noisy-student pseudo-labels (`PseudoLabels`): the teacher's probabilities for every training sample,
  scored once per student round and written to `pseudo_labels.npz` (ids, probabilities, classes) beside
  the student's run, soft or 0/1 at a threshold; the teacher fills in what the annotators did not say, as
  the CXR-LT noisy-student teams did for external sources;
- weak labels (`weak_label_overlay`, `data.weak_labels`): classes the shards lack, mined from each
  study's report (cxrlt.data.weak_labels). They are appended after the shards' classes, so the member's
  targets grow from the shards' K columns to K + C, every new column unknown until the table fills it;
  the member then trains those classes like any other (team G's few-shot reading of CXR-LT Task 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cxrlt.atomic import atomic_path
from cxrlt.data.multisource import TrainingCounts
from cxrlt.data.weak_labels import read_weak_labels
from cxrlt.errors import InputError
from cxrlt.labels import SCHEMAS, frequency_groups


class LabelOverlay:
    """Values of target `columns` by sample id; a value < 0 in `table` (unknown there too) fills nothing.
    `width`: the targets' full width, to which narrower targets are padded with unknowns first."""

    def __init__(self, ids: Sequence[str], table: np.ndarray, columns: Sequence[int], width: int):
        if table.shape != (len(ids), len(columns)):
            raise ValueError(f"label table {table.shape} does not match {len(ids)} ids x {len(columns)} columns")
        if any(not 0 <= c < width for c in columns):
            raise ValueError(f"columns {list(columns)} do not fit targets of width {width}")
        self.ids = list(ids)
        # A sample id found twice (an unlabelled set that repeats training images) keeps its last row.
        self.row = {sample_id: i for i, sample_id in enumerate(self.ids)}
        self.table = torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))
        self.columns = list(columns)
        self.width = width
        # Target entries the overlay filled, and all entries of its columns seen, since the last
        # `take_fill_rate`: the evidence that the table changes what the member learns. A tensor sum, so
        # no GPU sync per step.
        self._filled: torch.Tensor | int = 0
        self._entries = 0

    def _overlay(self, ids: Sequence[str], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if targets.shape[1] < self.width:
            targets = torch.cat([targets, targets.new_full((len(targets), self.width - targets.shape[1]), -1.0)], 1)
        rows = [self.row.get(sample_id, -1) for sample_id in ids]
        values = self.table[[max(r, 0) for r in rows]].to(targets.device, targets.dtype)
        in_table = torch.tensor([r >= 0 for r in rows], device=targets.device)
        current = targets[:, self.columns]
        use = (current < 0) & (values >= 0) & in_table[:, None]
        targets = targets.clone()
        targets[:, self.columns] = torch.where(use, values, current)
        return targets, use

    def fill(self, ids: Sequence[str], targets: torch.Tensor) -> torch.Tensor:
        """`targets` (B, K <= width) widened to (B, width), each unknown entry of the overlay's columns
        replaced by the table's value for that sample; counted for `take_fill_rate`."""
        filled, use = self._overlay(ids, targets)
        self._filled = use.sum() + self._filled
        self._entries += use.numel()
        return filled

    def apply(self, ids: Sequence[str], labels: np.ndarray) -> np.ndarray:
        """`fill` for a label matrix that is scored, not trained on (validation), without counting."""
        return self._overlay(ids, torch.from_numpy(labels))[0].numpy()

    def take_fill_rate(self) -> float:
        """The share of target entries filled since the last call (0 before any), and restart counting."""
        rate = float(self._filled) / self._entries if self._entries else 0.0
        self._filled, self._entries = 0, 0
        return rate


class PseudoLabels(LabelOverlay):
    """The teacher's probabilities (N, K) for every class of the member (soft, or 0/1 when `hard`)."""

    def __init__(self, ids: Sequence[str], probs: np.ndarray, classes: Sequence[str], hard: bool, threshold: float):
        if probs.shape != (len(ids), len(classes)):
            raise ValueError(f"pseudo-labels {probs.shape} do not match {len(ids)} ids x {len(classes)} classes")
        self.probs = probs.astype(np.float32)
        self.classes = tuple(classes)
        table = (self.probs >= threshold).astype(np.float32) if hard else self.probs
        super().__init__(ids, table, range(len(classes)), len(classes))

    def save(self, path: Path) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=np.array(self.ids, dtype=str), probs=self.probs, classes=np.array(self.classes, dtype=str))
        return path


def load_pseudo_labels(path: Path, classes: Sequence[str], hard: bool, threshold: float) -> PseudoLabels:
    with np.load(path, allow_pickle=False) as data:
        if tuple(data["classes"].tolist()) != tuple(classes):
            raise InputError(f"{path}: pseudo-labels were written for other classes")
        return PseudoLabels(data["ids"].tolist(), data["probs"], classes, hard, threshold)


class WeakLabels(LabelOverlay):
    """A weak-label table as an overlay on a member's targets: `classes` are appended after the run's
    `shard_classes`. positive_counts / known_counts: per class, the table's positives / known labels in
    the training split, the frequencies the weighted losses and the frequency groups read."""

    def __init__(
        self,
        ids: Sequence[str],
        table: np.ndarray,
        classes: Sequence[str],
        shard_classes: int,
        positive_counts: Sequence[int],
        known_counts: Sequence[int],
    ):
        self.classes = tuple(classes)
        self.positive_counts = list(positive_counts)
        self.known_counts = list(known_counts)
        super().__init__(ids, table, range(shard_classes, shard_classes + len(classes)), shard_classes + len(classes))

    def extend(self, counts: TrainingCounts) -> TrainingCounts:
        """The run's training counts with the weak classes appended. A class's count is its frequency
        among the table's known training labels times `counts.total`, the effective count the run's own
        classes carry (cxrlt.data.multisource.training_counts); None (no frequency) for a class the table
        never labels in the training split."""
        weak = [
            positives / known * counts.total if known else None
            for positives, known in zip(self.positive_counts, self.known_counts)
        ]
        # Groups compare whole-sample counts with the total; rounding moves a share by < 1 / total.
        counted = {c: round(n) for c, n in zip(self.classes, weak) if n is not None}
        groups = frequency_groups(counted, counts.total) if counted else {}
        return replace(counts, positives=[*counts.positives, *weak], groups={**counts.groups, **groups})


def weak_label_overlay(path: Path, shard_classes: Sequence[str], level: str, train_split: str) -> WeakLabels:
    """The weak-label CSV at `path` keyed by the shards' sample ids (dicom_id at image level, study_id
    at study level); InputError naming the file when it cannot extend the shards' classes."""
    table = read_weak_labels(path)
    shared = [c for c in table.classes if c in shard_classes]
    if shared:
        raise InputError(
            f"data.weak_labels = {path}: classes {shared} are already the shards' classes; weak labels add "
            "classes the shards lack"
        )
    ids, splits, labels = table.keyed(level)
    train = np.array([s == train_split for s in splits], dtype=bool)
    if not train.any():
        raise InputError(f"data.weak_labels = {path}: no row of split {train_split!r} (data.train_split)")
    return WeakLabels(
        ids,
        labels,
        table.classes,
        len(shard_classes),
        (labels[train] == 1).sum(axis=0).tolist(),
        (labels[train] >= 0).sum(axis=0).tolist(),
    )


def member_schema(shard_schema: str, classes: Sequence[str]) -> str:
    """The schema name a weak-label member's files record: a known schema with exactly its classes (the
    40 Task 1 findings + the 5 Task 3 ones are cxr-lt-2024-all), else the shards' schema marked "+weak"."""
    return next((s.name for s in SCHEMAS.values() if tuple(s.classes) == tuple(classes)), f"{shard_schema}+weak")
