"""`ensemble report`: an HTML page with PNG plots of a build, from its build.npz and recipe.json.

Plots: member vs ensemble AP per class (the ensemble's is out of fold), the member x class weight
heat-map, reliability diagrams of the out-of-fold predictions before/after calibration, and
precision-recall curves of the tail classes (sklearn's precision_recall_curve).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes or CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve

from cxrlt.atomic import atomic_path, write_text_atomic
from cxrlt.labels import get_schema
from ensembles.recipe import Recipe

N_BINS = 10
MAX_TAIL_CURVES = 8


def _save(fig: plt.Figure, path: Path) -> str:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _ap_plot(data: dict, path: Path) -> str:
    classes = data["classes"]
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(classes)), 4.5))
    x = np.arange(len(classes))
    for m, name in enumerate(data["members"]):
        ax.scatter(x, data["member_ap"][m], s=10, color="0.6", label="members" if m == 0 else None)
    ax.scatter(x, data["ensemble_ap"], s=28, color="C3", marker="D", label="ensemble (out of fold)")
    ax.set_xticks(x, classes, rotation=90, fontsize=7)
    ax.set_ylabel("AP")
    ax.legend()
    return _save(fig, path)


def _weights_plot(data: dict, path: Path) -> str:
    weights = data["weights"]
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * weights.shape[1]), max(3, 0.3 * weights.shape[0])))
    image = ax.imshow(weights, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(data["members"])), data["members"], fontsize=7)
    ax.set_xticks(range(len(data["classes"])), data["classes"], rotation=90, fontsize=7)
    ax.set_title(f"member weights ({data['combiner']})")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def _reliability(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled over classes (known labels): mean predicted vs observed rate per equal-width bin."""
    known = labels != -1
    p, y = probs[known], labels[known]
    bins = np.clip((p * N_BINS).astype(int), 0, N_BINS - 1)
    count = np.bincount(bins, minlength=N_BINS)
    with np.errstate(invalid="ignore"):
        return np.bincount(bins, p, N_BINS) / count, np.bincount(bins, y, N_BINS) / count


def _reliability_plot(data: dict, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--")
    for key, label in (("oof_raw", "before calibration"), ("oof_calibrated", "after calibration")):
        mean_p, rate = _reliability(data["labels"], data[key])
        ax.plot(mean_p, rate, marker="o", label=label)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.legend()
    return _save(fig, path)


def _tail_pr_plot(data: dict, tail: list[str], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 5))
    classes = list(data["classes"])
    for name in tail[:MAX_TAIL_CURVES]:
        c = classes.index(name)
        known = data["labels"][:, c] != -1
        y = data["labels"][known, c]
        if y.min() == y.max():
            continue
        precision, recall, _ = precision_recall_curve(y, data["oof_calibrated"][known, c])
        ax.plot(recall, precision, label=f"{name} (AP {data['ensemble_ap'][c]:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_report(build_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write report.html and its PNGs into `out_dir` (default: BUILD/report); returns the HTML path."""
    build_dir = Path(build_dir)
    out_dir = Path(out_dir) if out_dir is not None else build_dir / "report"
    recipe = Recipe.read(build_dir / "recipe.json")
    with np.load(build_dir / "build.npz", allow_pickle=False) as archive:
        data = {k: archive[k] for k in archive.files}
    data["classes"] = [str(c) for c in data["classes"]]
    data["members"] = [str(m) for m in data["members"]]
    data["combiner"] = str(data["combiner"])
    groups = get_schema(recipe.schema).groups()
    tail = [c for c in data["classes"] if groups.get(c) == "tail"] or data["classes"]
    images = {
        "Member vs ensemble AP per class": _ap_plot(data, out_dir / "ap_per_class.png"),
        "Weights": _weights_plot(data, out_dir / "weights.png"),
        "Reliability before/after calibration": _reliability_plot(data, out_dir / "reliability.png"),
        "Precision-recall, tail classes": _tail_pr_plot(data, tail, out_dir / "pr_tail.png"),
    }
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in recipe.scores.items())
    figures = "".join(
        f"<h2>{html.escape(title)}</h2><img src='{html.escape(name)}' alt='{html.escape(title)}'>"
        for title, name in images.items()
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>cxrlt ensemble report</title></head><body>"
        f"<h1>Ensemble {html.escape(str(recipe.config_hash))}</h1>"
        f"<p>schema {html.escape(recipe.schema)}; combiner {html.escape(recipe.combiner['name'])}; views "
        f"{html.escape(recipe.views['method'])}; calibration {html.escape(recipe.calibration['method'])}; "
        f"members: {html.escape(', '.join(recipe.member_names))}</p>"
        f"<table border='1'><tr><th>score</th><th>value</th></tr>{rows}</table>"
        f"<h2>Combiner</h2><pre>{html.escape(json.dumps(recipe.combiner['name']))}</pre>{figures}</body></html>\n"
    )
    return write_text_atomic(out_dir / "report.html", page)
