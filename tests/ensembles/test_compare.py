"""`ensemble compare` on generated prediction files and labels (NIH-14 schema): a perfect member scores
mAP 1, the prevalence baseline is the hand-computed mean prevalence, a class without positives is left
out and named, mismatched inputs are errors naming the file, and the command writes a page whose every
image exists (the recipe's weights among them when one is given)."""

import csv
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cxrlt.errors import InputError
from cxrlt.labels import get_schema
from cxrlt.predictions import PredictionMeta, write_predictions
from ensembles.calibration import Calibrator
from ensembles.combiners import Weighted
from ensembles.compare import write_comparison
from ensembles.recipe import Recipe, apply_recipe
from ensembles.views import ViewAggregator
from tests.cli import cxrlt

SCHEMA = get_schema("nih-14")
CLASSES = SCHEMA.classes
EMPTY = "Hernia"  # no positive in the split: no AP
N = 240


def _member(folder, name, probs, classes=CLASSES, ids=None, model=None):
    ids = ids if ids is not None else [f"img{i:04d}" for i in range(N)]
    meta = PredictionMeta(classes=tuple(classes), schema=SCHEMA.name, split="holdout", model=model or name)
    return write_predictions(folder / f"{name}.csv", ids, [f"s{i // 2:04d}" for i in range(len(ids))], probs, meta)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(3)
    prevalence = np.linspace(0.4, 0.05, len(CLASSES))
    labels = (rng.random((N, len(CLASSES))) < prevalence).astype(np.int8)
    labels[:, CLASSES.index(EMPTY)] = 0
    labels[rng.random(labels.shape) < 0.05] = -1  # unknowns, dropped per class
    ids = [f"img{i:04d}" for i in range(N)]
    table = pd.DataFrame(np.where(labels == -1, np.nan, labels), columns=list(CLASSES)).astype("Int8")
    table.insert(0, "subject_id", [f"p{i // 4:04d}" for i in range(N)])
    table.insert(0, "dicom_id", ids)
    label_path = root / "labels.csv"
    table.to_csv(label_path, index=False)

    perfect = np.where(labels == 1, 0.9, 0.1).astype(np.float32)
    noisy = np.clip(0.4 * perfect + 0.6 * rng.random(perfect.shape), 0, 1).astype(np.float32)
    weak = rng.random(perfect.shape).astype(np.float32)
    members = [_member(root, "perfect", perfect), _member(root, "noisy", noisy), _member(root, "weak", weak)]

    # A recipe as `ensemble build` would write it, with a fitted per-class weighted combiner.
    weights = rng.dirichlet(np.ones(3), size=len(CLASSES)).T
    recipe = Recipe(
        schema=SCHEMA.name,
        classes=list(CLASSES),
        members=[{"model": m} for m in ("perfect", "noisy", "weak")],
        combiner={"name": "weighted", "state": Weighted(scope="per_class", weights=weights).state()},
        views=ViewAggregator(method="none").state(),
        calibration=Calibrator(method="none").fit(perfect, labels).state(),
        objective={},
    )
    recipe_path = recipe.write(root / "recipe.json")
    ensemble = apply_recipe(recipe_path, members, root / "ensemble.csv")
    return {
        "root": root,
        "labels": labels,
        "label_path": label_path,
        "members": members,
        "ensemble": ensemble,
        "recipe": recipe_path,
        "weights": weights,
    }


def test_perfect_member_scores_one_and_the_baseline_is_the_mean_prevalence(data, tmp_path):
    result = write_comparison(data["members"], data["label_path"], tmp_path, ensemble=data["ensemble"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["models"]) == ["perfect", "noisy", "weak", "ensemble"]
    assert metrics["models"]["perfect"]["mAP"] == pytest.approx(1.0)
    assert metrics["models"]["perfect"]["mAUROC"] == pytest.approx(1.0)
    assert metrics["models"]["weak"]["mAP"] < metrics["models"]["noisy"]["mAP"] < 1.0
    assert metrics["best_member"] == "perfect" and metrics["n_images"] == N and metrics["split"] == "holdout"

    labels = data["labels"]
    by_hand = {c: (labels[:, j] == 1).sum() / (labels[:, j] != -1).sum() for j, c in enumerate(CLASSES) if c != EMPTY}
    assert metrics["prevalence_mAP"] == pytest.approx(np.mean(list(by_hand.values())))
    assert result.prevalence_mAP == pytest.approx(metrics["prevalence_mAP"])
    # NIH-14's one tail class is the empty one, so the baseline has head and medium means only.
    head = [c for c in by_hand if SCHEMA.groups()[c] == "head"]
    assert metrics["prevalence_group_mAP"]["head"] == pytest.approx(np.mean([by_hand[c] for c in head]))
    assert metrics["prevalence_group_mAP"]["tail"] is None and metrics["models"]["perfect"]["tail_mAP"] is None

    rows = {r["class"]: r for r in csv.DictReader((tmp_path / "per_class.csv").open())}
    assert set(rows) == set(CLASSES)
    for c, value in by_hand.items():
        assert float(rows[c]["prevalence"]) == pytest.approx(value, abs=1e-6)
        assert float(rows[c]["AP perfect"]) == pytest.approx(1.0)
        assert rows[c]["group"] == SCHEMA.groups()[c]

    page = (tmp_path / "index.html").read_text()
    assert "prevalence baseline" in page and "holdout" in page and f"{N} images" in page
    # The perfect member holds the best mAP: bold in its row.
    perfect_row = re.search(r"<tr><td>perfect</td>(.*?)</tr>", page).group(1)
    assert perfect_row.startswith("<td><b>1.0000</b></td>")
    assert "weights.png" not in page and not (tmp_path / "weights.png").exists()  # no recipe given


def test_a_class_without_positives_is_left_out_and_named(data, tmp_path):
    # Also: a second file of the same model is told apart by its file stem (names must be unique).
    twin = _member(tmp_path, "perfect.again", np.full((N, len(CLASSES)), 0.3, np.float32), model="perfect")
    result = write_comparison([data["members"][0], twin], data["label_path"], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["models"]) == ["perfect", "perfect.again"]
    assert metrics["classes_excluded"] == {EMPTY: "no positive samples"}
    assert EMPTY not in metrics["classes_scored"] and len(metrics["classes_scored"]) == len(CLASSES) - 1
    assert result.classes_excluded == {EMPTY: "no positive samples"}
    rows = {r["class"]: r for r in csv.DictReader((tmp_path / "per_class.csv").open())}
    assert rows[EMPTY]["AP perfect"] == "" and rows[EMPTY]["n_positive"] == "0"
    page = (tmp_path / "index.html").read_text()
    assert f"{EMPTY} (no positive samples)" in page
    # Without an ensemble, the precision-recall curves are the best member's.
    assert "Precision-recall per class (perfect)" in page


def test_an_image_missing_from_the_labels_is_an_error(data, tmp_path):
    table = pd.read_csv(data["label_path"], dtype=str)
    short = tmp_path / "short.csv"
    table[table["dicom_id"] != "img0007"].to_csv(short, index=False)
    with pytest.raises(InputError, match=r"short\.csv: no row for 1 of 240 predicted images: img0007"):
        write_comparison(data["members"], short, tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()


def test_a_member_with_other_classes_is_an_error_naming_it(data, tmp_path):
    other = [c if c != "Edema" else "Oedema" for c in CLASSES]
    odd = _member(tmp_path, "odd", np.full((N, len(CLASSES)), 0.5, np.float32), classes=other)
    with pytest.raises(InputError, match=r"odd\.csv: classes differ .* missing \['Edema'\], extra \['Oedema'\]"):
        write_comparison([data["members"][0], odd], data["label_path"], tmp_path / "out")
    with pytest.raises(InputError, match=r"odd\.csv: classes differ"):
        write_comparison(data["members"][:1], data["label_path"], tmp_path / "out", ensemble=odd)


def test_an_interrupted_rerun_leaves_no_index_page(data, tmp_path, monkeypatch):
    (tmp_path / "index.html").write_text("<html>the previous run's page</html>")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a SIGINT while the plots are drawn

    monkeypatch.setattr("ensembles.compare.pr_plot", killed)
    with pytest.raises(KeyboardInterrupt):
        write_comparison(data["members"][:1], data["label_path"], tmp_path)
    assert not (tmp_path / "index.html").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left either


def test_a_missing_extra_image_is_an_error_before_anything_is_written(data, tmp_path):
    with pytest.raises(InputError, match=r"image 'grid': .*missing\.png is not a file"):
        write_comparison(
            data["members"], data["label_path"], tmp_path / "out", images={"grid": tmp_path / "missing.png"}
        )
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_page_whose_images_all_exist_with_the_recipe_weights(data, tmp_path):
    grid = tmp_path / "grid.png"
    plt.imsave(grid, np.random.default_rng(0).random((16, 16)))
    out = tmp_path / "report"
    run = cxrlt(
        "ensemble",
        "compare",
        "--members",
        *data["members"],
        "--ensemble",
        data["ensemble"],
        "--labels",
        data["label_path"],
        "--recipe",
        data["recipe"],
        "--image",
        f"Synthetic samples={grid}",
        "--title",
        "Held-out <test>",
        "--out",
        out,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "prevalence baseline" in run.stdout and "ensemble" in run.stdout
    assert f"wrote {out / 'index.html'}" in run.stdout
    page = (out / "index.html").read_text()
    assert "<h1>Held-out &lt;test&gt;</h1>" in page
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == 6 and "weights.png" in images
    for name in images:
        assert (out / name).stat().st_size > 100, name
    assert (out / images[-1]).read_bytes() == grid.read_bytes() and "<h2>Synthetic samples</h2>" in page
    assert "Ensemble weights (weighted)" in page

    bad = cxrlt(
        "ensemble",
        "compare",
        "--members",
        data["members"][0],
        "--labels",
        data["label_path"],
        "--image",
        "no-title-here",
        "--out",
        tmp_path / "bad",
    )
    assert bad.returncode == 2 and "expected TITLE=PATH" in bad.stderr
