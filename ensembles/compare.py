"""`ensemble compare`: the members and the ensemble side by side on a held-out labelled split.

This module owns the comparison: loading members' (and optionally the ensemble's) prediction files and
the split's label CSV, aligned by image id and class name; each model's CXR-LT figures
(cxrlt.metrics.evaluate, head/medium/tail from the predictions' schema); the prevalence baseline (a
scorer with no information has AP = prevalence and AUROC 0.5 per class); and the report folder:
metrics.json, per_class.csv, PNG plots and index.html. Every file is written atomically and index.html
last, after removing any previous one, so an interrupted run never leaves a complete-looking page.
Plots shared with `ensemble report` (reliability, weights, precision-recall) live in ensembles/plots.py.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxrlt.atomic import write_bytes_atomic, write_text_atomic
from cxrlt.errors import InputError
from cxrlt.labels import GROUPS, TASK_SCHEMAS, get_schema
from cxrlt.metrics import Evaluation, evaluate
from cxrlt.predictions import Predictions, read_predictions
from cxrlt.tables import read_csv_strings, resolve_id_column, unique_ids
from ensembles.combiners import make_combiner
from ensembles.plots import pr_plot, reliability_plot, save_png, weights_plot
from ensembles.recipe import Recipe
from ensembles.store import load_labels

ENSEMBLE = "ensemble"
BASELINE = "prevalence baseline"
DEFAULT_TITLE = "cxrlt ensemble comparison"
# Summary columns: key in metrics.json -> heading; mECE is the one where lower is better.
COLUMNS = {"mAP": "mAP", "mAUROC": "mAUROC", "mF1": "mF1", "mECE": "mECE"} | {f"{g}_mAP": f"{g} mAP" for g in GROUPS}
LOWER_IS_BETTER = frozenset({"mECE"})


@dataclass(frozen=True)
class Comparison:
    """What `write_comparison` computed and where it wrote it."""

    out_dir: Path
    index: Path
    schema: str
    split: str
    n_images: int
    classes_scored: list[str]
    classes_excluded: dict[str, str]  # class -> why it has no AP
    prevalence: dict[str, float]  # per class, over its known labels (NaN without any)
    models: dict[str, Evaluation]  # members (unique names) in the order given, then "ensemble"
    files: dict[str, Path]  # model name -> prediction file
    figures: dict[str, str]  # title -> file name in out_dir

    @property
    def prevalence_mAP(self) -> float:
        return float(np.mean([self.prevalence[c] for c in self.classes_scored]))

    def baseline(self) -> dict[str, float | None]:
        """The no-information scorer's row: AP = prevalence, AUROC 0.5; F1 and ECE depend on the
        scores such a scorer outputs, so they are left undefined."""
        groups = get_schema(self.schema).groups()
        row: dict[str, float | None] = {"mAP": self.prevalence_mAP, "mAUROC": 0.5, "mF1": None, "mECE": None}
        for g in GROUPS:
            values = [self.prevalence[c] for c in self.classes_scored if groups.get(c) == g]
            row[f"{g}_mAP"] = float(np.mean(values)) if values else None
        return row

    def summary(self) -> dict[str, dict[str, float | None]]:
        """Every model's row of COLUMNS (None where undefined), then the prevalence baseline's."""
        rows = {}
        for name, ev in self.models.items():
            row: dict[str, float | None] = {"mAP": ev.mAP, "mAUROC": ev.mAUROC, "mF1": ev.mF1, "mECE": ev.mECE}
            row |= {f"{g}_mAP": ev.group_mAP.get(g) for g in GROUPS}
            rows[name] = {k: None if v is None or math.isnan(v) else float(v) for k, v in row.items()}
        rows[BASELINE] = self.baseline()
        return rows

    @property
    def best_member(self) -> str:
        members = [n for n in self.models if n != ENSEMBLE]
        return max(members, key=lambda n: self.models[n].mAP)


def _unique_names(loaded: Sequence[Predictions]) -> list[str]:
    """The sidecar's model name; the file stem where two members share one; a counter as a last resort."""
    taken = {ENSEMBLE, BASELINE}
    names = []
    model_counts = pd.Series([p.meta.model for p in loaded]).value_counts()
    for p in loaded:
        if p.path is None:
            raise ValueError(f"predictions of model {p.meta.model!r} carry no source path to name them by")
        name = p.meta.model.strip() or p.path.stem
        if model_counts[p.meta.model] > 1 or name in taken:
            name = p.path.stem
        base, k = name, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def _align(loaded: Sequence[Predictions]) -> list[np.ndarray]:
    """Each file's probabilities in the first file's row (image id) and column (class name) order."""
    first = loaded[0]
    out = []
    for p in loaded:
        if set(p.meta.classes) != set(first.meta.classes):
            missing = [c for c in first.meta.classes if c not in p.meta.classes]
            extra = [c for c in p.meta.classes if c not in first.meta.classes]
            raise InputError(f"{p.path}: classes differ from {first.path}: missing {missing}, extra {extra}")
        if p.meta.schema != first.meta.schema:
            raise InputError(f"{p.path}: schema {p.meta.schema!r}, but {first.path} has {first.meta.schema!r}")
        rows = pd.Index(p.image_ids).get_indexer(first.image_ids)
        if p.image_ids.size != first.image_ids.size or (rows < 0).any():
            missing = first.image_ids[rows < 0]
            raise InputError(
                f"{p.path}: image ids differ from {first.path}: {p.image_ids.size} images here, "
                f"{first.image_ids.size} there, {missing.size} of those missing here (e.g. {list(missing[:3])})"
            )
        columns = [p.meta.classes.index(c) for c in first.meta.classes]
        out.append(p.probs[np.ix_(rows, columns)])
    return out


def _recipe_weights(path: Path) -> tuple[np.ndarray, Recipe]:
    recipe = Recipe.read(path)
    n_members, n_classes = len(recipe.member_names), len(recipe.classes)
    try:
        combiner = make_combiner(recipe.combiner["name"], recipe.combiner["state"])
        weights = combiner.member_weights(n_members, n_classes)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: cannot rebuild the combiner: {e}") from None
    if weights is None or np.shape(weights) != (n_members, n_classes):
        raise InputError(f"{path}: combiner weights are not fitted for {n_members} members x {n_classes} classes")
    return np.asarray(weights, dtype=np.float64), recipe


def _summary_plot(comparison: Comparison, path: Path) -> str:
    rows = comparison.summary()
    names = list(rows)
    colors = ["C3" if n == ENSEMBLE else "0.75" if n == BASELINE else "C0" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names)), 4.5))
    for ax, key in zip(axes, ("mAP", "mAUROC"), strict=True):
        values = [rows[n][key] or 0.0 for n in names]
        bars = ax.bar(range(len(names)), values, color=colors)
        ax.bar_label(bars, [f"{v:.3f}" for v in values], fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(key)
    return save_png(fig, path)


def _ap_vs_prevalence_plot(comparison: Comparison, member_names: list[str], path: Path) -> str:
    scored = sorted(comparison.classes_scored, key=lambda c: -comparison.prevalence[c])
    x = np.arange(len(scored))

    def ap_of(name: str) -> np.ndarray:
        by_class = {m.name: m.ap for m in comparison.models[name].per_class}
        return np.array([by_class[c] for c in scored])

    best = comparison.best_member
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(scored)), 4.5))
    prevalence = [comparison.prevalence[c] for c in scored]
    ax.plot(x, prevalence, color="0.5", marker=".", label="prevalence (no information)")
    ax.scatter(x, ap_of(best), s=18, color="C0", label=f"best member ({best})")
    mean_ap = np.mean([ap_of(n) for n in member_names], axis=0)
    ax.scatter(x, mean_ap, s=18, color="C2", marker="s", label="mean of members")
    if ENSEMBLE in comparison.models:
        ax.scatter(x, ap_of(ENSEMBLE), s=28, color="C3", marker="D", label="ensemble")
    ax.set_xticks(x, scored, rotation=90, fontsize=7)
    ax.set_ylabel("AP")
    ax.set_ylim(0, 1.05)
    ax.set_title("AP per class, classes by falling prevalence")
    ax.legend(fontsize=7)
    return save_png(fig, path)


def _per_class_csv(comparison: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(comparison.models)
    writer.writerow(["class", "group", "n_labelled", "n_positive", "prevalence", *(f"AP {n}" for n in names)])
    per_model = [comparison.models[n].per_class for n in names]
    for j, row in enumerate(per_model[0]):
        scored = row.name in comparison.classes_scored
        aps = [f"{rows[j].ap:.6g}" if scored else "" for rows in per_model]
        prevalence = "" if math.isnan(row.prevalence) else f"{row.prevalence:.6g}"
        writer.writerow([row.name, row.group or "", row.n, row.n_positive, prevalence, *aps])
    return buffer.getvalue()


def _metrics_json(comparison: Comparison) -> str:
    summary = comparison.summary()
    baseline = summary.pop(BASELINE)
    payload = {
        "split": comparison.split,
        "schema": comparison.schema,
        "n_images": comparison.n_images,
        "classes_scored": comparison.classes_scored,
        "classes_excluded": comparison.classes_excluded,
        "prevalence_mAP": comparison.prevalence_mAP,
        "prevalence_group_mAP": {g: baseline[f"{g}_mAP"] for g in GROUPS},
        "best_member": comparison.best_member,
        "models": {n: {**row, "file": str(comparison.files[n])} for n, row in summary.items()},
    }
    return json.dumps(payload, indent=2) + "\n"


def _table_html(comparison: Comparison) -> str:
    rows = comparison.summary()
    # Group columns without a scored class in any model are left out rather than shown empty.
    keys = [k for k in COLUMNS if any(r[k] is not None for r in rows.values())]
    best = {}
    for k in keys:
        values = [v for r in rows.values() if (v := r[k]) is not None]
        best[k] = min(values) if k in LOWER_IS_BETTER else max(values)

    def cell(k: str, value: float | None) -> str:
        if value is None:
            return "<td>&mdash;</td>"
        text = f"{value:.4f}"
        return f"<td><b>{text}</b></td>" if value == best[k] else f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(COLUMNS[k])}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>{''.join(cell(k, row[k]) for k in keys)}</tr>" for name, row in rows.items()
    )
    return f"<table border='1' cellpadding='4'><tr><th>model</th>{head}</tr>{body}</table>"


def _index_html(comparison: Comparison, title: str) -> str:
    excluded = (
        "<p>Classes without an AP (left out of every mean): "
        + "; ".join(f"{html.escape(c)} ({html.escape(why)})" for c, why in comparison.classes_excluded.items())
        + "</p>"
        if comparison.classes_excluded
        else "<p>Every class has positive and negative labels; all are scored.</p>"
    )
    files = "".join(
        f"<li>{html.escape(name)}: {html.escape(str(path))}</li>" for name, path in comparison.files.items()
    )
    figures = "".join(
        f"<h2>{html.escape(t)}</h2><img src='{html.escape(f)}' alt='{html.escape(t)}'>"
        for t, f in comparison.figures.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>split {html.escape(comparison.split)}, {comparison.n_images} images; schema "
        f"{html.escape(comparison.schema)}; {len(comparison.classes_scored)} classes scored. The prevalence "
        "baseline is a scorer with no information (AP = prevalence, AUROC 0.5). Best value per column in bold.</p>"
        f"{_table_html(comparison)}{excluded}"
        "<p><a href='metrics.json'>metrics.json</a> &middot; <a href='per_class.csv'>per_class.csv</a></p>"
        f"<h2>Prediction files</h2><ul>{files}</ul>{figures}</body></html>\n"
    )


def _copy_images(images: Mapping[str, Path], out_dir: Path) -> dict[str, str]:
    copied = {}
    for i, (title, source) in enumerate(images.items()):
        # A fixed prefix keeps copies from overwriting this report's own plots.
        name = f"extra{i}-{re.sub(r'[^A-Za-z0-9_.-]', '_', source.name)}"
        write_bytes_atomic(out_dir / name, source.read_bytes())
        copied[title] = name
    return copied


def write_comparison(
    members: Sequence[str | os.PathLike],
    labels: str | os.PathLike,
    out_dir: str | os.PathLike,
    ensemble: str | os.PathLike | None = None,
    recipe: str | os.PathLike | None = None,
    images: Mapping[str, str | os.PathLike] | None = None,
    title: str = DEFAULT_TITLE,
    task: str | None = None,
) -> Comparison:
    """Score every member (and the ensemble) on the labelled split and write the report into `out_dir`.

    members/ensemble: prediction files (cxrlt.predictions) with the same classes, schema and images.
    labels: label CSV (dicom_id or image_id, subject_id, classes with 1/0/-1/blank) with a row for every
    predicted image. recipe: recipe.json whose combiner weights are drawn as a heat-map. images: title ->
    PNG to copy into the report (e.g. a grid of synthetic samples). task: score only that CXR-LT task's
    classes (t1, t2, t3), on the predicted images the label CSV lists (the files may hold more of both).
    """
    if not members:
        raise InputError("no member prediction files given")
    extra_images = {caption: Path(source) for caption, source in (images or {}).items()}
    for caption, source in extra_images.items():
        if not source.is_file():
            raise InputError(f"image {caption!r}: {source} is not a file")
    weighted = _recipe_weights(Path(recipe)) if recipe is not None else None
    out_dir = Path(out_dir)
    index = out_dir / "index.html"
    # A page left from an earlier run would describe this run's half-written plots; remove it first.
    index.unlink(missing_ok=True)

    paths = [Path(p) for p in members] + ([Path(ensemble)] if ensemble is not None else [])
    loaded = [read_predictions(p) for p in paths]
    names = _unique_names(loaded[: len(members)]) + ([ENSEMBLE] if ensemble is not None else [])
    probs = dict(zip(names, _align(loaded), strict=True))
    first = loaded[0]
    classes, schema, image_ids = list(first.meta.classes), first.meta.schema, first.image_ids
    if task is not None:
        # A task scores its own classes on the images its label file lists (Task 2: a gold subset).
        classes, schema = list(TASK_SCHEMAS[task].classes), TASK_SCHEMAS[task].name
        missing = [c for c in classes if c not in first.meta.classes]
        if missing:
            raise InputError(f"{first.path}: no column for task {task} class(es) {missing}")
        frame = read_csv_strings(labels)
        rows = np.flatnonzero(
            np.isin(image_ids.astype(str), unique_ids(frame, resolve_id_column(None, (frame, labels)), labels))
        )
        if rows.size == 0:
            raise InputError(f"{labels}: none of its ids is among the {image_ids.size} predicted images")
        task_columns = np.array([first.meta.classes.index(c) for c in classes])
        probs = {name: p[np.ix_(rows, task_columns)] for name, p in probs.items()}
        image_ids = image_ids[rows]
    label_table = load_labels(labels, image_ids, classes).labels
    groups = get_schema(schema).groups()
    models = {name: evaluate(label_table, p, classes, groups) for name, p in probs.items()}
    reference = models[names[0]]
    excluded = dict(reference.excluded)
    scored = [c for c in classes if c not in excluded]
    if not scored:
        raise InputError(f"{labels}: no class has both a positive and a negative label; nothing can be scored")

    comparison = Comparison(
        out_dir=out_dir,
        index=index,
        schema=schema,
        split=first.meta.split,
        n_images=int(image_ids.size),
        classes_scored=scored,
        classes_excluded=excluded,
        prevalence={row.name: row.prevalence for row in reference.per_class},
        models=models,
        files=dict(zip(names, paths, strict=True)),
        figures={},
    )
    member_names = names[: len(members)]
    shown = ENSEMBLE if ensemble is not None else comparison.best_member
    columns = [classes.index(c) for c in scored]
    scored_labels = label_table[:, columns]
    figures: dict[str, str] = {}
    figures["mAP and mAUROC: members, ensemble, prevalence"] = _summary_plot(comparison, out_dir / "summary.png")
    figures["AP per class vs prevalence"] = _ap_vs_prevalence_plot(
        comparison, member_names, out_dir / "ap_vs_prevalence.png"
    )
    figures[f"Precision-recall per class ({shown})"] = pr_plot(
        label_table,
        probs[shown],
        classes,
        scored,
        np.array([r.ap for r in models[shown].per_class]),
        out_dir / "pr_curves.png",
        title=shown,
    )
    series = {n: probs[n][:, columns] for n in ([ENSEMBLE] if ensemble is not None else []) + member_names}
    figures["Reliability (pooled over scored classes, 10 bins)"] = reliability_plot(
        scored_labels, series, out_dir / "reliability.png", highlight=ENSEMBLE
    )
    if weighted is not None:
        weights, parsed = weighted
        figures[f"Ensemble weights ({parsed.combiner['name']})"] = weights_plot(
            weights, parsed.member_names, parsed.classes, parsed.combiner["name"], out_dir / "weights.png"
        )
    figures |= _copy_images(extra_images, out_dir)
    comparison = replace(comparison, figures=figures)

    write_text_atomic(out_dir / "metrics.json", _metrics_json(comparison))
    write_text_atomic(out_dir / "per_class.csv", _per_class_csv(comparison))
    write_text_atomic(index, _index_html(comparison, title))
    return comparison
