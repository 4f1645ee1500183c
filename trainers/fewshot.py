"""`cxrlt zeroshot adapt`: a trained text-query model + a few labelled examples -> an adapted model file.

The examples (cxrlt.data.mining's table: class, label, image_id, ...; mined from reports by keyword
rules, or taken from labels) name images of a shard split. Their backbone features are computed once
with the model frozen, and only the example classes' query embeddings are fitted
(cxrlt.models.fewshot). The result is an ordinary trained-model file whose classes are the scored
names, so `cxrlt predict` uses it as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cxrlt.data.mining import Example
from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.transforms import TransformConfig
from cxrlt.errors import InputError
from cxrlt.models.factory import ImageClassifier
from cxrlt.models.fewshot import FewShotConfig, adapt_class_queries
from cxrlt.models.heads import MLDecoderHead
from cxrlt.models.saved import load_model, save_model
from trainers.zeroshot import scored_classes

_SHOWN = 5


@torch.no_grad()
def example_features(
    model: torch.nn.Module, shards: Path, split: str, transform: TransformConfig, ids: set[str]
) -> dict[str, torch.Tensor]:
    """Image id -> backbone features, for the `ids` found in the split (read on this process alone)."""
    if not isinstance(model, ImageClassifier):
        raise TypeError(f"few-shot features need an image model, got a {type(model).__name__}")
    reader = EvalReader(shards, ReaderConfig(level="image", split=split, batch_size=64, transform=transform), 0, 1)
    found: dict[str, torch.Tensor] = {}
    for batch in make_loader(reader, 0):
        keep = [i for i, sample_id in enumerate(batch["id"]) if sample_id in ids]
        if keep:
            features = model.backbone(batch["image"][keep])
            found.update(zip((batch["id"][i] for i in keep), features))
    return found


def _text_query_head(model: torch.nn.Module) -> MLDecoderHead:
    """The ML-Decoder head of an image model built with text queries (what `adapt` checked the file has)."""
    head = model.head if isinstance(model, ImageClassifier) else None
    if not isinstance(head, MLDecoderHead):
        raise TypeError(
            f"few-shot adaptation needs an image model with an ML-Decoder head, got a {type(model).__name__}"
        )
    return head


def adapt(
    model_path: Path,
    shards: Path,
    split: str,
    examples: Sequence[Example],
    out: Path,
    classes: Sequence[str] = (),
    descriptions: Path | None = None,
    cfg: FewShotConfig | None = None,
) -> Path:
    """Write `out`: the model with the examples' classes' queries adapted; the rest bitwise as saved."""
    saved = load_model(model_path)
    if saved.kind != "image":
        raise InputError(f"{model_path}: few-shot adaptation works on image models, not {saved.kind} models")
    if not saved.model_config.head.text_queries:
        raise InputError(f"{model_path}: few-shot adaptation needs a text-query head (model.head.text_queries = true)")
    # New example classes join the scored names, after the requested (or the model's) ones.
    requested = tuple(classes) or saved.classes
    adapted = list(dict.fromkeys(e.class_name for e in examples))
    scored = scored_classes(saved, requested + tuple(c for c in adapted if c not in requested), descriptions)
    model = saved.build(True, scored.names, scored.descriptions)
    transform = TransformConfig(**{k: saved.transform[k] for k in ("size", "channels", "mean", "std")})
    features = example_features(model, shards, split, transform, {e.image_id for e in examples})
    missing = sorted({e.image_id for e in examples} - features.keys())
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (
            f" ... and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        )
        raise InputError(f"examples: {len(missing)} image id(s) are not in split {split!r} of {shards}: {shown}")
    ids = sorted(features)
    targets = torch.full((len(ids), len(adapted)), -1.0)
    for e in examples:
        targets[ids.index(e.image_id), adapted.index(e.class_name)] = float(e.label)
    rows = [scored.names.index(c) for c in adapted]
    adapt_class_queries(
        _text_query_head(model), torch.stack([features[i] for i in ids]), targets, rows, cfg or FewShotConfig()
    )
    return save_model(
        out,
        model,
        saved.model_config,
        scored.names,
        scored.schema,
        saved.transform,
        metrics={},
        step=saved.step,
        epoch=saved.epoch,
        config_hash=saved.config_hash,
        mlflow_run_id=saved.mlflow_run_id,
    )
