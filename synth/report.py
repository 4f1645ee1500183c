"""`cxrlt synth report`: what a synthetic set adds and how real it looks.

- per-class train positives before (real) and after (real + kept synthetic), as a table and a bar chart;
- per target class: candidates generated, kept, pass rate, mean filter score, and a grid PNG (kept
  candidates first, then rejected ones, up to `grid_max`);
- fidelity: the cross-validated AUC of a logistic regression telling real train images from kept
  synthetic ones on downsampled pixels. 0.5 means the classifier cannot tell them apart; near 1 means
  the synthetic images are trivially recognisable (at least at this resolution).
Outputs: report.html, report.json, counts.png, samples.png (a named row per class), grid-<class>.png.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlt.atomic import atomic_path, write_text_atomic
from cxrlt.config import load_config
from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.shardset import read_index, sample_key
from cxrlt.data.transforms import TransformConfig
from synth.config import ReportConfig, SynthConfig
from synth.generate import Candidate, image_path, read_manifest
from synth.grid import save_grid
from synth.labelsets import SPLIT
from synth.sample import CONFIG


def pixel_features(shards: Path, pixels: int, limit: int) -> np.ndarray:
    """Up to `limit` train images of a shard set as (n, pixels * pixels) intensities in [0, 1]."""
    transform = TransformConfig(size=pixels, mean=0.0, std=1.0)
    reader = EvalReader(shards, ReaderConfig(split=SPLIT, batch_size=256, transform=transform))
    rows: list[np.ndarray] = []
    for batch in make_loader(reader):
        rows.append(batch["image"].flatten(1).numpy())
        if sum(len(r) for r in rows) >= limit:
            break
    return np.concatenate(rows)[:limit]


def discriminator_auc(real: np.ndarray, synthetic: np.ndarray, folds: int, seed: int) -> float:
    """Out-of-fold ROC AUC of real (0) vs synthetic (1); NaN when either side has fewer than 2 images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, len(real), len(synthetic))
    if folds < 2:
        return math.nan
    x = np.concatenate([real, synthetic])
    y = np.concatenate([np.zeros(len(real)), np.ones(len(synthetic))])
    # Balanced weights: the real side is usually far larger, and AUC should not reward that.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def pass_rates(candidates: list[Candidate]) -> dict[str, dict[str, Any]]:
    rates: dict[str, dict[str, Any]] = {}
    for target in dict.fromkeys(c.target for c in candidates):
        group = [c for c in candidates if c.target == target]
        scores = [c.filter_score for c in group if c.filter_score is not None]
        kept = sum(c.kept for c in group)
        rates[target] = {
            "generated": len(group),
            "kept": kept,
            "pass_rate": kept / len(group),
            "mean_score": float(np.mean(scores)) if scores else None,
        }
    return rates


def _load(synthetic: Path, shown: list[Candidate]) -> torch.Tensor:
    from PIL import Image

    return torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(image_path(synthetic, c)).convert("L"), dtype=np.float32) / 255.0)[
                None
            ]
            for c in shown
        ]
    )


def class_grids(candidates: list[Candidate], synthetic: Path, out: Path, cfg: ReportConfig) -> dict[str, str]:
    grids = {}
    for target in dict.fromkeys(c.target for c in candidates):
        shown = sorted((c for c in candidates if c.target == target), key=lambda c: not c.kept)[: cfg.grid_max]
        name = f"grid-{sample_key(target)}.png"
        save_grid(_load(synthetic, shown), out / name)
        grids[target] = name
    return grids


def samples_figure(candidates: list[Candidate], synthetic: Path, path: Path, per_class: int = 8) -> None:
    """One row per target class, named with its kept/generated count: kept samples first, then the
    best-scored rejected ones, so the figure shows what the filter did at a glance."""
    from synth.grid import image_grid

    plt = _pyplot()
    targets = list(dict.fromkeys(c.target for c in candidates))
    fig, axes = plt.subplots(
        max(1, len(targets)), 1, figsize=(1.2 * per_class, 1.3 * max(1, len(targets))), squeeze=False
    )
    for ax, target in zip(axes[:, 0], targets):
        group = [c for c in candidates if c.target == target]
        shown = sorted(group, key=lambda c: (not c.kept, -(c.filter_score or 0.0)))[:per_class]
        ax.imshow(image_grid(_load(synthetic, shown), per_class), cmap="gray", vmin=0, vmax=255)
        ax.set_ylabel(
            f"{target}\nkept {sum(c.kept for c in group)}/{len(group)}", rotation=0, ha="right", va="center", fontsize=8
        )
    for ax in axes[:, 0]:
        ax.set_xticks([])
        ax.set_yticks([])
    if not targets:
        axes[0, 0].text(0.5, 0.5, "no candidates generated", ha="center", va="center")
    fig.tight_layout()
    _savefig(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def counts_chart(counts: dict[str, dict[str, int]], path: Path) -> None:
    classes = list(counts)
    x = np.arange(len(classes))
    fig, ax = _pyplot().subplots(figsize=(max(6.0, 0.35 * len(classes)), 4.0))
    ax.bar(x - 0.2, [counts[c]["before"] for c in classes], 0.4, label="real")
    ax.bar(x + 0.2, [counts[c]["after"] for c in classes], 0.4, label="real + synthetic")
    ax.set_xticks(x, classes, rotation=75, ha="right", fontsize=7)
    ax.set_yscale("symlog")
    ax.set_ylabel("train positives")
    ax.legend()
    fig.tight_layout()
    _savefig(fig, path)


def _html(summary: dict[str, Any]) -> str:
    def row(cells: list[Any], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    counts = "".join(row([c, v["before"], v["added"], v["after"]]) for c, v in summary["counts"].items())
    rates = "".join(
        row(
            [
                t,
                r["generated"],
                r["kept"],
                f"{r['pass_rate']:.2f}",
                "-" if r["mean_score"] is None else f"{r['mean_score']:.3f}",
            ]
        )
        for t, r in summary["pass_rates"].items()
    )
    grids = "".join(f"<h3>{html.escape(t)}</h3><img src='{html.escape(n)}'>" for t, n in summary["grids"].items())
    auc = summary["discriminator"]["auc"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cxrlt synth report</title></head><body>"
        f"<h1>Synthetic tail-class set</h1>"
        f"<p>{html.escape(summary['synthetic'])} for {html.escape(summary['shards'])}; "
        f"filter: {html.escape(str(summary['filter']))}</p>"
        f"<h2>Fidelity</h2><p>real-vs-synthetic discriminator AUC: <b>{'n/a' if math.isnan(auc) else f'{auc:.3f}'}</b> "
        f"({html.escape(summary['discriminator']['method'])}; 0.5 = indistinguishable)</p>"
        "<h2>Filter pass rates</h2><table border=1>"
        + row(["class", "generated", "kept", "pass rate", "mean score"], "th")
        + rates
        + "</table>"
        "<h2>Samples per class</h2><img src='samples.png'>"
        "<h2>Train positives</h2><img src='counts.png'><table border=1>"
        + row(["class", "real", "added", "after"], "th")
        + counts
        + "</table>"
        f"<h2>Candidates (kept first)</h2>{grids}</body></html>"
    )


def _filter_settings(synthetic: Path) -> dict[str, Any]:
    """The filter the sample run used, from the config it wrote beside its output."""
    used = load_config(SynthConfig, synthetic / CONFIG).filter
    if used.classifier is None:
        return {"classifier": None, "note": "unfiltered: every candidate kept"}
    return {"classifier": str(used.classifier), "threshold": used.threshold}


def write_report(cfg: SynthConfig) -> Path:
    """Report on the synthetic set of `cfg` (sample.out) against data.shards into report.out."""
    shards, synthetic, out = cfg.shards, cfg.synthetic_dir, cfg.report_dir
    real, added = read_index(shards), read_index(synthetic)
    candidates = read_manifest(synthetic)
    out.mkdir(parents=True, exist_ok=True)
    before = real.split_class_counts.get(SPLIT, {})
    extra = added.split_class_counts.get(SPLIT, {})
    counts = {
        c: {"before": before.get(c, 0), "added": extra.get(c, 0), "after": before.get(c, 0) + extra.get(c, 0)}
        for c in real.classes
    }
    r = cfg.report
    real_x = pixel_features(shards, r.pixels, r.max_real)
    synthetic_x = pixel_features(synthetic, r.pixels, added.num_samples)
    summary = {
        "shards": str(shards),
        "synthetic": str(synthetic),
        "filter": _filter_settings(synthetic),
        "counts": counts,
        "pass_rates": pass_rates(candidates),
        "discriminator": {
            "auc": discriminator_auc(real_x, synthetic_x, r.folds, r.seed),
            "real": len(real_x),
            "synthetic": len(synthetic_x),
            "method": f"logistic regression on {r.pixels}x{r.pixels} pixels, {r.folds}-fold out-of-fold AUC",
        },
        "grids": class_grids(candidates, synthetic, out, r),
    }
    counts_chart(counts, out / "counts.png")
    samples_figure(candidates, synthetic, out / "samples.png")
    write_text_atomic(out / "report.json", json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return write_text_atomic(out / "report.html", _html(summary))
