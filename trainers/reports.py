"""What a training run leaves for people to look at: the per-class dev table and the training curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from cxrlt.atomic import atomic_path
from cxrlt.metrics import Evaluation


def write_per_class(evaluation: Evaluation, path: Path) -> Path:
    frame = pd.DataFrame([vars(c) for c in evaluation.per_class])
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.5g")
    return path


def plot_history(history: Sequence[dict[str, float]], path: Path) -> Path | None:
    """Dev loss and dev mAP / mAUROC per epoch, one PNG."""
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="dev loss (BCE)", title="dev loss")
    for key in ("mAP", "mAUROC"):
        right.plot(epochs, [h[key] if math.isfinite(h[key]) else float("nan") for h in history], marker="o", label=key)
    right.set(xlabel="epoch", title="dev metrics")
    right.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
