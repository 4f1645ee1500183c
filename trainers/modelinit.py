"""The member's model: built from config, started from a trained-model file when asked, backbone frozen
when asked (no gradients, and eval mode through every later `.train()`, so its BatchNorm running
statistics stay those it was trained with).

Starting points (stage.init_from, a `best.pt` / `last.pt` of an earlier run):
- image and student stages load the whole model, so the file's classes must be the shards' classes
  (stage.init_head = "all"); with init_head = "shared" or "none" the file may come from another schema
  (the pretraining chain NIH / CheXpert / VinDr -> MIMIC): its backbone, and with "shared" the head's
  class-independent weights and the rows of the classes both schemas share by name
  (cxrlt.models.crossschema);
- the study stage loads the file's image backbone into every view encoder (CheXFusion's recipe: train
  the image model first, then the fusion on top); the classes may differ, the backbone must match.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence

from torch import nn

from cxrlt.errors import InputError
from cxrlt.models.backbones import Backbone, image_backbones
from cxrlt.models.crossschema import HeadTransfer, load_saved_backbone, transfer_from_saved
from cxrlt.models.saved import SavedModel, load_model
from trainers.config import TrainConfig

LOG = logging.getLogger("cxrlt.train")


def _stay_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze(module: nn.Module) -> None:
    """No gradients and eval mode for `module`, kept when a parent's `.train()` reaches it.

    requires_grad alone is not frozen: in train mode BatchNorm still updates its running statistics
    from every batch (and dropout / drop-path stay on). The loop calls `engine.train()` each epoch and
    inference restores train mode, so `train` itself is pinned to eval on this instance (a bound
    method, which deepcopy, as EMA uses, rebinds to the copy).
    """
    module.requires_grad_(False)
    module.train = types.MethodType(_stay_eval, module)  # type: ignore[method-assign]
    module.eval()


def _load_backbone(model: nn.Module, saved: SavedModel, backbone_name: str) -> None:
    if saved.kind != "image" or saved.model_config.backbone.name != backbone_name:
        raise InputError(
            f"stage.init_from {saved.path}: a study model starts from an image model with backbone "
            f"{backbone_name!r}; this file holds a {saved.kind} model with {saved.model_config.backbone.name!r}"
        )
    for encoder in image_backbones(model):
        load_saved_backbone(encoder, saved)


def _load_other_schema(model: nn.Module, saved: SavedModel, classes: Sequence[str], head: HeadTransfer) -> None:
    if not isinstance(getattr(model, "backbone", None), Backbone) or not hasattr(model, "head"):
        raise InputError(f"stage.init_head = {head!r} starts an image model; model.kind is another kind")
    report = transfer_from_saved(model, saved, classes, "", head)
    LOG.info(
        "stage.init_from %s (%s): backbone loaded; head %s (%d shared classes: %s)",
        saved.path,
        saved.schema,
        head,
        len(report.shared_classes),
        ", ".join(report.shared_classes),
    )


def _load_whole(model: nn.Module, saved: SavedModel, classes: Sequence[str]) -> None:
    if tuple(classes) != saved.classes:
        raise InputError(
            f"stage.init_from {saved.path}: trained on {len(saved.classes)} classes of schema {saved.schema!r}, "
            f"but the shards have {len(classes)} other classes; use a file trained on the same schema, or set "
            "stage.init_head = 'shared' (backbone + rows of the classes both share) or 'none' (backbone only)"
        )
    weights = saved.ema_state_dict if saved.ema_state_dict is not None else saved.state_dict
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(
            f"stage.init_from {saved.path}: does not fit the configured model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); build the same model.* config"
        )


def build_member_model(cfg: TrainConfig, classes: Sequence[str]) -> nn.Module:
    from cxrlt.models.factory import build_model

    model = build_model(cfg.model, classes)
    if cfg.stage.init_from is not None:
        saved = load_model(cfg.stage.init_from)
        if cfg.stage.name == "study":
            _load_backbone(model, saved, cfg.model.backbone.name)
        elif cfg.stage.init_head in ("shared", "none"):
            _load_other_schema(model, saved, classes, "shared" if cfg.stage.init_head == "shared" else "none")
        else:
            _load_whole(model, saved, classes)
    if cfg.stage.freeze_backbone:
        for encoder in image_backbones(model):
            freeze(encoder)
    return model
