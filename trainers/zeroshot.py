"""Which classes a trained model is asked to score, for `cxrlt predict --classes` and few-shot adapt.

A model scores its own classes by default, or any of them (a fixed-class head scores all its classes and
the requested columns are kept: e.g. the Task 3 rows a weak-label member trained). A text-query model
(model.head.text_queries) or a contrastive model (model.kind = "contrastive", scored by its prompts) can
be asked for any names instead: a name it has keeps its saved query, a new one is scored from its text
alone (name + description from --descriptions or the model's `class_descriptions`). The prediction
file's schema is the model's when the names are its classes, a known schema whose classes they are (e.g.
cxr-lt-2024-task3), and "zero-shot" otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrlt.errors import InputError
from cxrlt.labels import SCHEMAS
from cxrlt.models.descriptions import load_descriptions
from cxrlt.models.saved import SavedModel

ZERO_SHOT_SCHEMA = "zero-shot"


@dataclass(frozen=True)
class ScoredClasses:
    names: tuple[str, ...]
    schema: str
    descriptions: dict[str, str]
    built: tuple[str, ...] = ()  # the classes to build the model with (default `names`); names are columns of it

    @property
    def columns(self) -> list[int]:
        """Each name's output column in a model built with `built` classes."""
        built = self.built or self.names
        return [built.index(name) for name in self.names]


def scored_classes(saved: SavedModel, requested: Sequence[str] = (), descriptions: Path | None = None) -> ScoredClasses:
    """The names to score, their schema and extra descriptions; InputError naming the option when unusable."""
    names = tuple(requested) or saved.classes
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"--classes names {duplicated} more than once")
    fixed = not saved.model_config.open_vocabulary
    new = [n for n in names if n not in saved.classes]
    if new and fixed:
        raise InputError(
            f"--classes: {saved.path} has a fixed-class head without {new}; scoring other names needs a "
            "text-query model (model.head.text_queries = true) or a contrastive one"
        )
    if descriptions is not None and not saved.model_config.open_vocabulary:
        raise InputError(f"--descriptions {descriptions}: {saved.path} has no text-query head to use them")
    if names == saved.classes:
        schema = saved.schema
    else:
        schema = next((s.name for s in SCHEMAS.values() if tuple(s.classes) == names), ZERO_SHOT_SCHEMA)
    texts = load_descriptions(descriptions) if descriptions is not None else {}
    return ScoredClasses(names, schema, texts, saved.classes if fixed else names)
