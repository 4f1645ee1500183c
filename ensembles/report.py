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

import matplotlib.pyplot as plt
import numpy as np

from cxrlt.atomic import write_text_atomic
from cxrlt.labels import get_schema
from ensembles.plots import pr_plot, reliability_plot, save_png, weights_plot
from ensembles.recipe import Recipe

MAX_TAIL_CURVES = 8


def _ap_plot(data: dict, path: Path) -> str:
    classes = data["classes"]
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(classes)), 4.5))
    x = np.arange(len(classes))
    for m in range(len(data["members"])):
        ax.scatter(x, data["member_ap"][m], s=10, color="0.6", label="members" if m == 0 else None)
    ax.scatter(x, data["ensemble_ap"], s=28, color="C3", marker="D", label="ensemble (out of fold)")
    ax.set_xticks(x, classes, rotation=90, fontsize=7)
    ax.set_ylabel("AP")
    ax.legend()
    return save_png(fig, path)


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
        "Weights": weights_plot(
            data["weights"], data["members"], data["classes"], data["combiner"], out_dir / "weights.png"
        ),
        "Reliability before/after calibration": reliability_plot(
            data["labels"],
            {"before calibration": data["oof_raw"], "after calibration": data["oof_calibrated"]},
            out_dir / "reliability.png",
        ),
        "Precision-recall, tail classes": pr_plot(
            data["labels"],
            data["oof_calibrated"],
            data["classes"],
            tail[:MAX_TAIL_CURVES],
            data["ensemble_ap"],
            out_dir / "pr_tail.png",
        ),
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
