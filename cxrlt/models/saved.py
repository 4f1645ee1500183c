"""Trained-model files: the self-contained weights + description that predict, synth and zero-shot load.

The trainer writes one beside every training checkpoint it keeps (`best.pt`, `last.pt`); nothing else
is needed to use the model on another machine: the file holds

    {format, kind, classes, schema, model_config, transform, state_dict, ema_state_dict | absent,
     metrics, step, epoch, config_hash, mlflow_run_id}

as plain containers and tensors only, so it loads with `torch.load(weights_only=True)` (no pickled
code runs). `transform` holds the evaluation-time image settings (size, channels, mean, std).
A text-query model can be built for any class names (`SavedModel.build(classes=..., descriptions=...)`):
the zero-shot path of `cxrlt predict --classes`.
DeepSpeed's own training checkpoints (optimizer partitions, scheduler) stay with the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrlt.atomic import atomic_path
from cxrlt.config import from_dict, to_dict
from cxrlt.errors import InputError
from cxrlt.models.factory import ModelConfig, build_model

FORMAT = "cxrlt-model/1"
_REQUIRED = ("format", "classes", "schema", "model_config", "transform", "state_dict")


@dataclass(frozen=True)
class SavedModel:
    """A loaded trained-model file. `transform`: {size, channels, mean, std} of evaluation images."""

    classes: tuple[str, ...]
    schema: str
    model_config: ModelConfig
    transform: Mapping[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    ema_state_dict: Mapping[str, torch.Tensor] | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    config_hash: str | None = None
    mlflow_run_id: str | None = None
    path: Path | None = None

    @property
    def kind(self) -> str:
        return self.model_config.kind

    def build(
        self, use_ema: bool = True, classes: Sequence[str] | None = None, descriptions: Mapping[str, str] | None = None
    ) -> nn.Module:
        """The model in eval mode with the saved weights (the EMA's when present and `use_ema`).

        `classes`: the saved classes (default), or other names for a text-query head (zero-shot scoring
        of classes never trained on): every trained weight loads; a name the file already has keeps its
        saved query embedding (trained, or adapted few-shot), a new name's comes from its text, i.e. its
        name and its description in `descriptions` (added to the model's `class_descriptions`).
        """
        weights = self.ema_state_dict if use_ema and self.ema_state_dict is not None else self.state_dict
        # The init checkpoint was consumed in training and its weights are in `weights`.
        cfg = replace(self.model_config, backbone=replace(self.model_config.backbone, checkpoint=None))
        names = tuple(classes) if classes is not None else self.classes
        model = build_model(cfg, names, descriptions)
        # A contrastive model holds no per-class weights (its prompts are embedded when it scores).
        if names == self.classes or cfg.kind == "contrastive":
            model.load_state_dict(weights, strict=True)
            return model.eval()
        if not cfg.head.text_queries:
            raise InputError(
                f"{self.path}: scoring classes other than the trained ones needs a text-query head "
                "(model.head.text_queries = true) or a contrastive model"
            )
        # In text-query mode the class list lives only in the head's text-embedding buffer.
        key = next(k for k in weights if k.endswith("head.class_embeddings"))
        queries = model.state_dict()[key].clone()
        for row, name in enumerate(names):
            if name in self.classes:
                queries[row] = weights[key][self.classes.index(name)]
        model.load_state_dict({**weights, key: queries}, strict=True)
        return model.eval()


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: ModelConfig,
    classes: Sequence[str],
    schema: str,
    transform: Mapping[str, Any],
    ema_model: nn.Module | None = None,
    metrics: Mapping[str, float] | None = None,
    step: int = 0,
    epoch: int = 0,
    config_hash: str | None = None,
    mlflow_run_id: str | None = None,
) -> Path:
    """Write a trained-model file atomically (tensors moved to CPU)."""

    def cpu(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    payload: dict[str, Any] = {
        "format": FORMAT,
        "kind": model_config.kind,
        "classes": list(classes),
        "schema": schema,
        "model_config": to_dict(model_config),
        "transform": dict(transform),
        "state_dict": cpu(model),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "step": int(step),
        "epoch": int(epoch),
    }
    if ema_model is not None:
        payload["ema_state_dict"] = cpu(ema_model)
    if config_hash is not None:
        payload["config_hash"] = config_hash
    if mlflow_run_id is not None:
        payload["mlflow_run_id"] = mlflow_run_id
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_weights_file(path: str | os.PathLike, file_format: str, hint: str = "") -> dict[str, Any]:
    """The payload of a torch-saved file of `file_format` (its "format" key), read with weights_only=True;
    a missing, damaged or foreign file is an InputError naming the path (and `hint` on what to give)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{file_format} file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged or foreign files
        raise InputError(f"{path}: cannot be read as a {file_format} file: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{path}: not a {file_format} file (format {found!r}){hint}")
    return payload


def load_model(path: str | os.PathLike) -> SavedModel:
    """Read a trained-model file with weights_only=True; a wrong or damaged file is an InputError."""
    path = Path(path)
    payload = read_weights_file(path, FORMAT, " (a DeepSpeed training checkpoint? use the run's best.pt or last.pt)")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    return SavedModel(
        classes=tuple(payload["classes"]),
        schema=payload["schema"],
        model_config=from_dict(ModelConfig, payload["model_config"], lambda key: f"{path} (model_config)"),
        transform=payload["transform"],
        state_dict=payload["state_dict"],
        ema_state_dict=payload.get("ema_state_dict"),
        metrics=payload.get("metrics", {}),
        step=payload.get("step", 0),
        epoch=payload.get("epoch", 0),
        config_hash=payload.get("config_hash"),
        mlflow_run_id=payload.get("mlflow_run_id"),
        path=path,
    )
