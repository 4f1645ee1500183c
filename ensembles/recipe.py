"""The recipe: a small JSON file that says how to turn members' predictions into the ensemble's, and
`apply_recipe`, which does so on new (test) predictions without refitting anything.

A recipe names its members by model (from their sidecars) and stores the fitted combiner, view
aggregation and calibration state, the classes and schema, the objective and the out-of-fold scores it
was chosen by. Applying it to prediction files that lack a member, add one, or have other classes or
another schema is an error that names the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlt.atomic import write_text_atomic
from cxrlt.errors import InputError
from cxrlt.predictions import PredictionMeta, write_predictions
from ensembles.calibration import Calibrator
from ensembles.combiners import make_combiner
from ensembles.store import MemberStack, load_members, load_views
from ensembles.views import Studies, ViewAggregator

FORMAT = "cxrlt-ensemble-recipe/1"


@dataclass
class Recipe:
    schema: str
    classes: list[str]
    members: list[dict[str, Any]]  # sidecar provenance of each member, in combiner order
    combiner: dict[str, Any]  # {"name": ..., "state": {...}}
    views: dict[str, Any]
    calibration: dict[str, Any]
    objective: dict[str, Any]
    scores: dict[str, float] = field(default_factory=dict)
    config_hash: str | None = None
    mlflow_run_id: str | None = None
    format: str = FORMAT

    @property
    def member_names(self) -> list[str]:
        return [m["model"] for m in self.members]

    def write(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> Recipe:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InputError(f"{path}: not an ensemble recipe (format {FORMAT!r})")
        try:
            return cls(**payload)
        except TypeError as e:
            raise InputError(f"{path}: {e}") from None

    def combine(self, probs: np.ndarray, study_ids: np.ndarray, views: np.ndarray) -> np.ndarray:
        """Members (M, N, C) in `member_names` order -> calibrated ensemble probabilities (N, C)."""
        combiner = make_combiner(self.combiner["name"], self.combiner["state"])
        aggregated = ViewAggregator.from_state(self.views).predict(
            combiner.predict(probs), Studies.of(study_ids), views
        )
        return np.clip(Calibrator.from_state(self.calibration).predict(aggregated), 0.0, 1.0)


# Sidecar fields that identify a member beyond its model name: the files applied must come from the same
# trained model (config, checkpoint) scored the same way (TTA) as the ones the recipe was fitted on. The
# MLflow run id is recorded but not compared: dev and test predictions may come from different runs.
PINNED = ("config_hash", "checkpoint", "tta")


def member_record(meta: PredictionMeta) -> dict[str, Any]:
    return {k: getattr(meta, k) for k in ("model", "config_hash", "checkpoint", "mlflow_run_id", "tta")}


def _same_checkpoint(recorded: str | None, found: str | None) -> bool:
    """Equal paths; a relative path (training's dev predictions) also matches an absolute one (`cxrlt
    predict` resolves it) that ends with it."""
    if recorded is None or found is None:
        return recorded == found
    a, b = Path(recorded), Path(found)
    if a == b:
        return True
    if a.is_absolute() == b.is_absolute():
        return False
    relative, absolute = (a, b) if b.is_absolute() else (b, a)
    return absolute.parts[-len(relative.parts) :] == relative.parts


def check_member(record: dict[str, Any], path: Path, meta: PredictionMeta) -> None:
    """InputError naming the member, the file and the field when `meta` is not the recorded member's.
    A field the record lacks (a recipe written before it was recorded) is not checked."""
    for key in PINNED:
        same = _same_checkpoint if key == "checkpoint" else (lambda a, b: a == b)
        if key in record and not same(record[key], getattr(meta, key)):
            raise InputError(
                f"{path}: member {record['model']!r} has {key} {getattr(meta, key)!r} in its sidecar, but the "
                f"recipe was fitted on {key} {record[key]!r}; these predictions come from another model or TTA"
            )


def stack_for(recipe: Recipe, paths: list[str | os.PathLike]) -> MemberStack:
    """Load `paths` as the recipe's members, in the recipe's member order."""
    stack = load_members(paths, classes=recipe.classes)
    if stack.schema != recipe.schema:
        raise InputError(f"{stack.members[0].path}: schema {stack.schema!r}, the recipe is for {recipe.schema!r}")
    names = stack.names
    missing = [n for n in recipe.member_names if n not in names]
    extra = [str(m.path) for m in stack.members if m.name not in recipe.member_names]
    if missing or extra:
        raise InputError(
            f"prediction files do not match the recipe's members: missing models {missing}, not in the recipe {extra}"
        )
    order = [names.index(n) for n in recipe.member_names]
    for record, i in zip(recipe.members, order):
        check_member(record, stack.members[i].path, stack.members[i].meta)
    return MemberStack(
        members=tuple(stack.members[i] for i in order),
        classes=stack.classes,
        schema=stack.schema,
        split=stack.split,
        image_ids=stack.image_ids,
        study_ids=stack.study_ids,
        probs=stack.probs[order],
    )


def apply_recipe(
    recipe_path: str | os.PathLike,
    paths: list[str | os.PathLike],
    out: str | os.PathLike,
    views_path: str | os.PathLike | None = None,
    view_column: str = "ViewPosition",
) -> Path:
    """Write the ensemble's prediction file (same contract as a member's) for the members' split."""
    recipe = Recipe.read(recipe_path)
    stack = stack_for(recipe, paths)
    if recipe.views["method"] == "frontal" and views_path is None:
        raise InputError(f"{recipe_path}: the recipe weights frontal views; pass the CSV with {view_column}")
    views = (
        load_views(views_path, stack.image_ids, view_column)
        if views_path is not None
        else np.full(stack.image_ids.size, "", dtype=object)
    )
    probs = recipe.combine(stack.probs, stack.study_ids, views)
    meta = PredictionMeta(
        classes=tuple(recipe.classes),
        schema=recipe.schema,
        split=stack.split,
        model=f"ensemble-{recipe.config_hash}",
        config_hash=recipe.config_hash,
        mlflow_run_id=recipe.mlflow_run_id,
        tta="members' own",
        extra={"recipe": str(Path(recipe_path).resolve()), "members": [str(m.path) for m in stack.members]},
    )
    return write_predictions(out, list(stack.image_ids), list(stack.study_ids), probs, meta)
