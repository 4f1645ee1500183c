"""PNG plots shared by `ensemble report` (a build's out-of-fold view) and `ensemble compare` (a held-out
split): the atomic PNG save, pooled reliability bins and diagram, the member x class weight heat-map and
precision-recall curves.

Importing this module selects matplotlib's Agg backend: the plots are files only, and cluster nodes and
CI have no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes or CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve

from cxrlt.atomic import atomic_path

N_BINS = 10
# Past this many curves the legend goes beside the axes, where it cannot hide them.
LEGEND_INSIDE_MAX = 10


def save_png(fig: plt.Figure, path: Path) -> str:
    """Save `fig` atomically as `path` and close it; returns the file name (for the HTML page)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def reliability(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled over classes (known labels): mean predicted vs observed rate per equal-width bin."""
    known = labels != -1
    p, y = probs[known], labels[known]
    bins = np.clip((p * N_BINS).astype(int), 0, N_BINS - 1)
    count = np.bincount(bins, minlength=N_BINS)
    with np.errstate(invalid="ignore"):
        return np.bincount(bins, p, N_BINS) / count, np.bincount(bins, y, N_BINS) / count


def reliability_plot(
    labels: np.ndarray, series: Mapping[str, np.ndarray], path: Path, highlight: str | None = None
) -> str:
    """One pooled reliability curve per entry of `series` (legend label -> (N, C) probabilities), with
    the diagonal; the `highlight` entry is drawn thicker."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--")
    for label, probs in series.items():
        mean_p, rate = reliability(labels, probs)
        width = 2.5 if label == highlight else 1.5
        ax.plot(mean_p, rate, marker="o", linewidth=width, markersize=3 * width, label=label)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.legend(fontsize=7)
    return save_png(fig, path)


def weights_plot(weights: np.ndarray, members: Sequence[str], classes: Sequence[str], combiner: str, path: Path) -> str:
    """Heat-map of an (M, C) member x class weight matrix, rows labelled by member name."""
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * weights.shape[1]), max(3, 0.3 * weights.shape[0])))
    image = ax.imshow(weights, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(members)), members, fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_title(f"member weights ({combiner})")
    fig.colorbar(image, ax=ax)
    return save_png(fig, path)


def pr_plot(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    shown: Sequence[str],
    ap: np.ndarray,
    path: Path,
    title: str | None = None,
) -> str:
    """Precision-recall curves of the `shown` classes (columns of `probs` named by `classes`), each
    with its AP (`ap`, per class in `classes` order) in the legend; a class lacking either label is
    skipped, having no curve."""
    fig, ax = plt.subplots(figsize=(6, 5))
    classes = list(classes)
    drawn = 0
    for name in shown:
        c = classes.index(name)
        known = labels[:, c] != -1
        y = labels[known, c]
        if y.size == 0 or y.min() == y.max():
            continue
        precision, recall, _ = precision_recall_curve(y, probs[known, c])
        color = plt.cm.tab20(drawn % 20) if len(shown) > LEGEND_INSIDE_MAX else None
        ax.plot(recall, precision, color=color, label=f"{name} (AP {ap[c]:.3f})")
        drawn += 1
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if title:
        ax.set_title(title)
    if drawn > LEGEND_INSIDE_MAX:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + drawn // 25)
    else:
        ax.legend(fontsize=7)
    return save_png(fig, path)
