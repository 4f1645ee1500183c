"""The member's model: built from config, started from a trained-model file when asked, backbone frozen
when asked (no gradients, and eval mode through every later `.train()`, so its BatchNorm running
statistics stay those it was trained with).

Starting points (stage.init_from, a `best.pt` / `last.pt` of an earlier run):
- image and student stages load the whole model, so the file's classes must be the shards' classes;
- the study stage loads the file's image backbone into every view encoder (CheXFusion's recipe: train
  the image model first, then the fusion on top); the classes may differ, the backbone must match.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

from torch import nn

from cxrlt.errors import InputError
from cxrlt.models.saved import SavedModel, load_model
from trainers.config import TrainConfig

_BACKBONE_PREFIX = "backbone.model."


def backbones(model: nn.Module) -> list[nn.Module]:
    """The image encoder(s): one for an image model, one per view encoder for a study model."""
    return list(model.encoders) if hasattr(model, "encoders") else [model.backbone]


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
    weights = saved.ema_state_dict if saved.ema_state_dict is not None else saved.state_dict
    encoder_state = {k.removeprefix(_BACKBONE_PREFIX): v for k, v in weights.items() if k.startswith(_BACKBONE_PREFIX)}
    for encoder in backbones(model):
        encoder.model.load_state_dict(encoder_state, strict=True)


def _load_whole(model: nn.Module, saved: SavedModel, classes: Sequence[str]) -> None:
    if tuple(classes) != saved.classes:
        raise InputError(
            f"stage.init_from {saved.path}: trained on {len(saved.classes)} classes of schema {saved.schema!r}, "
            f"but the shards have {len(classes)} other classes; use a file trained on the same schema"
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
        else:
            _load_whole(model, saved, classes)
    if cfg.stage.freeze_backbone:
        for encoder in backbones(model):
            freeze(encoder)
    return model
