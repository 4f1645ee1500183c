"""Generated ensemble members with known structure, for tests, the benchmark and dry runs.

Patients have 1-3 studies, studies 1-3 images (views PA/AP/LATERAL); labels are study-level, drawn
from a latent severity per (study, class) with long-tailed prevalences. Member m's logit for an image is

    quality[m, c] * latent + shared_noise * shared noise (common to all members) + own noise + view noise

so members are correlated (they share a noise component, as models trained on the same data do), each
is better at some classes than others, and lateral views are noisier than frontal ones. quality[m, c]
is uniform in `quality_range` times a member factor uniform in 1 +- `member_spread`. With `confounded` the
shared noise is multiplied by quality[m, c] too, a confounder members pick up with the signal: no
weighting of members can then subtract it, as none can for real members (without it, stacking learns
negative weights that cancel the shared noise and scores implausibly high). The true quality matrix is
returned, so a test can check that a search prefers the members that are better.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from cxrlt.predictions import PredictionMeta, write_predictions


@dataclass(frozen=True)
class Simulation:
    classes: tuple[str, ...]
    image_ids: np.ndarray
    study_ids: np.ndarray
    patient_ids: np.ndarray
    views: np.ndarray
    labels: np.ndarray  # (N, C) in {1, 0, -1}
    probs: np.ndarray  # (M, N, C) float32
    quality: np.ndarray  # (M, C)

    def rows(self, keep: np.ndarray) -> Simulation:
        """The simulation restricted to rows `keep` (e.g. one split)."""
        return Simulation(
            self.classes,
            self.image_ids[keep],
            self.study_ids[keep],
            self.patient_ids[keep],
            self.views[keep],
            self.labels[keep],
            self.probs[:, keep],
            self.quality,
        )


def simulate(
    n_images: int,
    n_members: int,
    classes: tuple[str, ...],
    prevalence: np.ndarray | None = None,
    shared_noise: float = 0.8,
    quality_range: tuple[float, float] = (0.6, 2.2),
    member_spread: float = 0.3,
    confounded: bool = False,
    unknown_fraction: float = 0.05,
    seed: int = 0,
) -> Simulation:
    rng = np.random.default_rng(seed)
    n_classes = len(classes)
    if prevalence is None:
        prevalence = np.geomspace(0.3, 0.005, n_classes)
    views_per_study = rng.choice([1, 2, 3], size=n_images, p=[0.45, 0.45, 0.10])
    study_of_image = np.repeat(np.arange(n_images), views_per_study)[:n_images]
    n_studies = study_of_image[-1] + 1
    patient_of_study = np.repeat(np.arange(n_studies), rng.choice([1, 2, 3], size=n_studies))[:n_studies]
    latent = rng.standard_normal((n_studies, n_classes))
    labels = (latent > norm.ppf(1 - prevalence)).astype(np.float32)[study_of_image]
    labels[rng.random(labels.shape) < unknown_fraction] = -1
    views = rng.choice(np.array(["PA", "AP", "LATERAL"]), size=n_images, p=[0.35, 0.35, 0.30])
    lateral = (views == "LATERAL")[:, None]
    quality = rng.uniform(*quality_range, (n_members, n_classes))
    quality *= rng.uniform(1 - member_spread, 1 + member_spread, (n_members, 1))
    shared = rng.standard_normal((n_images, n_classes), dtype=np.float32)
    signal = latent[study_of_image].astype(np.float32)
    offset = norm.ppf(1 - prevalence).astype(np.float32) * 2.0
    probs = np.empty((n_members, n_images, n_classes), dtype=np.float32)
    for m in range(n_members):
        noise = rng.standard_normal((n_images, n_classes), dtype=np.float32) * np.where(lateral, 1.6, 1.0)
        loading = quality[m].astype(np.float32) if confounded else np.float32(1.0)
        logits = quality[m].astype(np.float32) * signal + shared_noise * loading * shared + noise
        probs[m] = expit(1.5 * logits - offset)
    return Simulation(
        classes=tuple(classes),
        image_ids=np.array([f"img{i:07d}" for i in range(n_images)], dtype=object),
        study_ids=np.array([f"s{s:07d}" for s in study_of_image], dtype=object),
        patient_ids=np.array([f"p{patient_of_study[s]:07d}" for s in study_of_image], dtype=object),
        views=views,
        labels=labels,
        probs=probs,
        quality=quality,
    )


def write_simulation(
    sim: Simulation, folder: str | os.PathLike, split: str, schema: str, suffix: str = ".csv"
) -> tuple[list[Path], Path]:
    """Prediction files (one per member) and a label CSV in the CXR-LT shape
    (dicom_id, subject_id, study_id, ViewPosition, classes with blank = unknown)."""
    folder = Path(folder)
    paths = []
    for m in range(sim.probs.shape[0]):
        meta = PredictionMeta(classes=sim.classes, schema=schema, split=split, model=f"member{m:02d}", tta="none")
        paths.append(
            write_predictions(
                folder / f"member{m:02d}.{split}{suffix}", list(sim.image_ids), list(sim.study_ids), sim.probs[m], meta
            )
        )
    table = pd.DataFrame(np.where(sim.labels == -1, np.nan, sim.labels), columns=list(sim.classes)).astype("Int8")
    table.insert(0, "ViewPosition", sim.views)
    table.insert(0, "study_id", sim.study_ids)
    table.insert(0, "subject_id", sim.patient_ids)
    table.insert(0, "dicom_id", sim.image_ids)
    labels_path = folder / f"labels.{split}.csv"
    table.to_csv(labels_path, index=False)
    return paths, labels_path
