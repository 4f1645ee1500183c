"""Noisy-student pseudo-labels: the teacher's probabilities for every training sample, by sample id.

The teacher scores the real training split and the unlabelled shard set once per student round; the
table is written to `pseudo_labels.npz` (ids, probabilities, classes) beside the student's run, and
during training every unknown (-1) label of a batch is replaced by the teacher's value for that sample
and class (soft, or 0/1 at a threshold). Known labels are never overwritten: the teacher fills in what
the annotators did not say, as the CXR-LT noisy-student teams did for external sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrlt.atomic import atomic_path
from cxrlt.errors import InputError


class PseudoLabels:
    def __init__(self, ids: Sequence[str], probs: np.ndarray, classes: Sequence[str], hard: bool, threshold: float):
        if probs.shape != (len(ids), len(classes)):
            raise ValueError(f"pseudo-labels {probs.shape} do not match {len(ids)} ids x {len(classes)} classes")
        self.ids = list(ids)
        # A sample id found twice (an unlabelled set that repeats training images) keeps its last row.
        self.row = {sample_id: i for i, sample_id in enumerate(self.ids)}
        self.probs = probs.astype(np.float32)
        self.table = torch.from_numpy((self.probs >= threshold).astype(np.float32) if hard else self.probs)
        self.classes = tuple(classes)
        # Target entries the teacher filled, and all entries seen, since the last `take_fill_rate`: the
        # evidence that pseudo-labels change what the student learns. A tensor sum, so no GPU sync per step.
        self._filled: torch.Tensor | int = 0
        self._entries = 0

    def fill(self, ids: Sequence[str], targets: torch.Tensor) -> torch.Tensor:
        """`targets` (B, K) with each unknown entry replaced by the teacher's value for that sample."""
        rows = [self.row.get(sample_id, -1) for sample_id in ids]
        known_rows = torch.tensor([r >= 0 for r in rows], device=targets.device)
        teacher = self.table[[max(r, 0) for r in rows]].to(targets.device, targets.dtype)
        use = (targets < 0) & known_rows[:, None]
        self._filled = use.sum() + self._filled
        self._entries += use.numel()
        return torch.where(use, teacher, targets)

    def take_fill_rate(self) -> float:
        """The share of target entries filled since the last call (0 before any), and restart counting."""
        rate = float(self._filled) / self._entries if self._entries else 0.0
        self._filled, self._entries = 0, 0
        return rate

    def save(self, path: Path) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=np.array(self.ids, dtype=str), probs=self.probs, classes=np.array(self.classes, dtype=str))
        return path


def load_pseudo_labels(path: Path, classes: Sequence[str], hard: bool, threshold: float) -> PseudoLabels:
    with np.load(path, allow_pickle=False) as data:
        if tuple(data["classes"].tolist()) != tuple(classes):
            raise InputError(f"{path}: pseudo-labels were written for other classes")
        return PseudoLabels(data["ids"].tolist(), data["probs"], classes, hard, threshold)
