"""Issue #16: apply checks each member file's sidecar against what the recipe was fitted on."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlt.errors import InputError
from cxrlt.predictions import PredictionMeta, write_predictions
from ensembles.calibration import Calibrator
from ensembles.recipe import Recipe, apply_recipe, member_record
from ensembles.views import ViewAggregator

CLASSES = ("A", "B")
N = 8


def _meta(model: str, checkpoint: str, tta: str = "none", config_hash: str | None = None) -> PredictionMeta:
    return PredictionMeta(
        classes=CLASSES,
        schema="nih-14",
        split="test",
        model=model,
        config_hash=config_hash or f"hash-{checkpoint}",
        checkpoint=checkpoint,
        tta=tta,
    )


def _write(folder, file_name: str, meta: PredictionMeta, seed: int):
    probs = np.random.default_rng(seed).random((N, len(CLASSES))).astype(np.float32)
    ids = [f"img{i}" for i in range(N)]
    return write_predictions(folder / file_name, ids, [f"s{i}" for i in range(N)], probs, meta)


def _recipe(tmp_path, members: list[dict]):
    recipe = Recipe(
        schema="nih-14",
        classes=list(CLASSES),
        members=members,
        combiner={"name": "weighted", "state": _weighted_state()},
        views=ViewAggregator(method="none").state(),
        calibration=Calibrator(method="none").state(),
        objective={},
    )
    return recipe.write(tmp_path / "recipe.json")


def _weighted_state():
    from ensembles.combiners import Weighted

    return Weighted(scope="global", weights=np.array([[0.7, 0.7], [0.3, 0.3]])).state()


@pytest.fixture
def fitted(tmp_path):
    a, b = _meta("convnext", "/ckpt/a.pt"), _meta("efficientnet", "/ckpt/b.pt")
    return tmp_path, _recipe(tmp_path, [member_record(a), member_record(b)]), a, b


def test_files_of_the_recorded_members_apply(fitted):
    root, recipe, a, b = fitted
    files = [_write(root, "a.csv", a, 0), _write(root, "b.csv", b, 1)]
    assert apply_recipe(recipe, files, root / "ens.csv").is_file()


def test_a_file_from_another_checkpoint_under_a_members_name_is_refused(fitted):
    root, recipe, a, b = fitted
    # The convnext member's file actually holds predictions of another checkpoint.
    files = [
        _write(root, "a.csv", _meta("convnext", "/ckpt/other.pt", config_hash=a.config_hash), 0),
        _write(root, "b.csv", b, 1),
    ]
    with pytest.raises(InputError, match=r"a\.csv.*'convnext'.*checkpoint"):
        apply_recipe(recipe, files, root / "ens.csv")


def test_other_tta_or_config_is_refused_naming_the_field(fitted):
    root, recipe, a, b = fitted
    files = [_write(root, "a.csv", a, 0), _write(root, "b.csv", _meta("efficientnet", "/ckpt/b.pt", tta="hflip"), 1)]
    with pytest.raises(InputError, match=r"b\.csv.*'efficientnet'.*tta"):
        apply_recipe(recipe, files, root / "ens.csv")
    files = [_write(root, "a.csv", _meta("convnext", "/ckpt/a.pt", config_hash="zzz"), 0), _write(root, "b.csv", b, 1)]
    with pytest.raises(InputError, match=r"a\.csv.*'convnext'.*config_hash"):
        apply_recipe(recipe, files, root / "ens.csv")


def test_a_recipe_without_recorded_provenance_still_applies(tmp_path):
    recipe = _recipe(tmp_path, [{"model": "convnext"}, {"model": "efficientnet"}])
    files = [
        _write(tmp_path, "a.csv", _meta("convnext", "/x.pt"), 0),
        _write(tmp_path, "b.csv", _meta("efficientnet", "/y.pt"), 1),
    ]
    assert apply_recipe(recipe, files, tmp_path / "ens.csv").is_file()


def test_a_relative_checkpoint_matches_the_same_file_resolved(tmp_path):
    """Training writes dev predictions with run_dir/best.pt, `cxrlt predict` with the resolved path."""
    a = _meta("convnext", "runs/a/best.pt", config_hash="h1")
    b = _meta("efficientnet", "runs/b/best.pt", config_hash="h2")
    recipe = _recipe(tmp_path, [member_record(a), member_record(b)])
    files = [
        _write(tmp_path, "a.csv", _meta("convnext", "/work/runs/a/best.pt", config_hash="h1"), 0),
        _write(tmp_path, "b.csv", _meta("efficientnet", "/work/runs/b/best.pt", config_hash="h2"), 1),
    ]
    assert apply_recipe(recipe, files, tmp_path / "ens.csv").is_file()
    swapped = [_write(tmp_path, "a.csv", _meta("convnext", "/work/runs/b/best.pt", config_hash="h1"), 0), files[1]]
    with pytest.raises(InputError, match="checkpoint"):
        apply_recipe(recipe, swapped, tmp_path / "ens.csv")
