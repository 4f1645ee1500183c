"""Transfer across label schemas: a model trained under one schema starts a model of another.

The pretraining chain of the CXR-LT 2024 teams (ImageNet -> NIH / CheXpert / VinDr / BRAX -> MIMIC) trains
a model on one label set and continues on another. What carries over:
- the image backbone, always: found in any trained-model file (image model `backbone.`, study model
  `encoders.0.`, contrastive model `image_tower.`), EMA weights preferred, loaded through the same path
  as local pretrained weights (so a ViT trained at 512 px starts a 1024 px run, positions resampled);
- optionally the head (`head="shared"`): its class-independent weights (ML-Decoder's projection and
  decoder layers, the text-query projection) and the per-class rows of the classes both schemas share
  BY NAME, names compared through each schema's alias table (NIH "Effusion" is CXR-LT "Pleural
  Effusion"); rows of classes the source never had keep their fresh initialisation.
`cxrlt export-backbone` writes the backbone alone, as a file `model.backbone.checkpoint` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cxrlt.errors import InputError
from cxrlt.labels import SCHEMAS, Schema, harmonisation_index
from cxrlt.models.backbones import Backbone
from cxrlt.models.checkpoints import load_backbone_state
from cxrlt.models.saved import SavedModel

HeadTransfer = Literal["shared", "none"]
# Where each model kind keeps its (first) image backbone's timm module, in a trained-model state dict.
BACKBONE_PREFIXES = (
    "backbone.model.",
    "encoders.0.model.",
    "image_tower.backbone.model.",
    "image_tower.encoders.0.model.",
)


def saved_weights(saved: SavedModel) -> Mapping[str, torch.Tensor]:
    """The file's EMA weights when it has them (what evaluation scored), else the raw weights."""
    return saved.ema_state_dict if saved.ema_state_dict is not None else saved.state_dict


def saved_backbone_state(saved: SavedModel) -> dict[str, torch.Tensor]:
    """The timm state dict of the file's image backbone (the first view encoder of a study model)."""
    weights = saved_weights(saved)
    for prefix in BACKBONE_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        if state:
            return state
    raise InputError(
        f"{saved.path}: no image backbone weights in this {saved.kind} model (looked for {BACKBONE_PREFIXES})"
    )


def load_saved_backbone(backbone: Backbone, saved: SavedModel) -> None:
    """Load the file's backbone into `backbone`; the architectures must be the same registry entry."""
    name = saved.model_config.backbone.name
    if name != backbone.spec.name:
        raise InputError(
            f"{saved.path}: its backbone is {name!r}, the configured model.backbone.name is "
            f"{backbone.spec.name!r}; set model.backbone.name = {name!r} to start from it"
        )
    load_backbone_state(backbone.model, saved_backbone_state(saved), f"{saved.path} (backbone)")


def schema_naming(schema: str, classes: Sequence[str]) -> str:
    """The alias table a schema's names follow: the registered schema of that name (or, failing that,
    of exactly those classes), else the CXR-LT spelling."""
    registered = SCHEMAS.get(schema) or next((s for s in SCHEMAS.values() if s.classes == tuple(classes)), None)
    return registered.naming if registered is not None else "cxr-lt"


def shared_rows(
    source_classes: Sequence[str], source_naming: str, target_classes: Sequence[str], target_naming: str
) -> list[tuple[int, int]]:
    """(target row, source row) of every target class the source has under the same canonical name."""
    source = Schema("source", tuple(source_classes), "transfer source", naming=source_naming)
    target = Schema("target", tuple(target_classes), "transfer target", naming=target_naming)
    return [(t, int(s)) for t, s in enumerate(harmonisation_index(source, target)) if s >= 0]


@dataclass(frozen=True)
class TransferReport:
    """What a transfer copied: the target classes whose head rows came from the source (by name)."""

    shared_classes: tuple[str, ...]
    head: HeadTransfer


def transfer_head(
    head: nn.Module, source: Mapping[str, torch.Tensor], rows: Sequence[tuple[int, int]], where: str
) -> None:
    """Copy a trained head into `head` (same head config, other classes): class-independent tensors
    whole, per-class tensors (`head.per_class_tensors()`, class on axis 0) row by row for `rows`."""
    try:
        per_class = set(getattr(head, "per_class_tensors")())  # noqa: B009 (every cxrlt head has it; nn.Module hides it from mypy)
    except ValueError as e:
        raise InputError(f"{where}: cannot share head rows: {e}") from None
    target_rows = [t for t, _ in rows]
    source_rows = [s for _, s in rows]
    loaded = {}
    for key, value in head.state_dict().items():
        found = source.get(key)
        wanted = value.shape[1:] if key in per_class else value.shape
        if found is None or (found.shape[1:] if key in per_class else found.shape) != wanted:
            shape = None if found is None else tuple(found.shape)
            raise InputError(
                f"{where}: head tensor {key!r} is {shape} in the file, {tuple(value.shape)} here; "
                "the head must be configured as it was trained (model.head.*), or use stage.init_head = 'none'"
            )
        if key in per_class:
            rows_copied = value.clone()
            rows_copied[target_rows] = found[source_rows].to(value.dtype)
            loaded[key] = rows_copied
        else:
            loaded[key] = found
    head.load_state_dict(loaded, strict=True)


def transfer_from_saved(
    model: nn.Module,
    saved: SavedModel,
    classes: Sequence[str],
    schema: str,
    head: HeadTransfer,
) -> TransferReport:
    """Start image model `model` (predicting `classes` of `schema`) from `saved`, trained on other
    classes: the backbone always, the head's shared part and shared-class rows when `head` = "shared"."""
    backbone, classifier = model.backbone, model.head
    if not isinstance(backbone, Backbone) or not isinstance(classifier, nn.Module):
        raise InputError(f"{saved.path}: cross-schema starts are for image models (a backbone and a head)")
    load_saved_backbone(backbone, saved)
    if head == "none":
        return TransferReport((), head)
    rows = shared_rows(
        saved.classes, schema_naming(saved.schema, saved.classes), classes, schema_naming(schema, classes)
    )
    weights = saved_weights(saved)
    head_state = {k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")}
    if not head_state:
        raise InputError(f"{saved.path}: a {saved.kind} model has no classifier head to share rows from")
    transfer_head(classifier, head_state, rows, f"{saved.path}")
    return TransferReport(tuple(classes[t] for t, _ in rows), head)
