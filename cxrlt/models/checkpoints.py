"""Loading local weights into a timm backbone: unwrap, remap, adapt the stem, drop the classifier.

Accepted sources (`BackboneConfig.checkpoint`):
- a file: a plain state dict or a timm / training checkpoint that nests it under `state_dict`, `model`
  or (preferred when `use_ema`) `state_dict_ema` / `model_ema`, saved with torch.save (.pth, .pt, .bin;
  read with weights_only=True, so no pickled code runs) or as .safetensors; a DistributedDataParallel
  `module.` prefix is removed;
- a Hugging Face model folder: timm's hub layout (config.json + model.safetensors or pytorch_model.bin,
  e.g. timm/vit_large_patch14_dinov2.lvd142m), open_clip's (open_clip_model.safetensors /
  open_clip_pytorch_model.bin, whose image tower timm unwraps), or a transformers DINOv2 folder
  (config.json model_type "dinov2", e.g. a CXR-pretrained DINOv2 such as RAD-DINO), whose keys are
  renamed to timm's ViT layout here.
timm's own per-architecture filter (`checkpoint_filter_fn`) then maps original-author layouts onto timm's
(DINOv2's torch-hub files, OpenAI / open_clip CLIP) and resizes ViT position embeddings and MaxViT
relative-position tables to the configured image size. Classifier weights and pooling heads the backbone
does not have (SigLIP's attention pool, a ViT's fc_norm) are dropped: cxrlt's heads replace them. A
3-channel stem loaded into a 1-channel model is summed over its input channels, which gives exactly the
3-channel model's output on a grey image repeated three times. Anything that still does not fit is an
InputError listing the keys.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from timm.models import adapt_input_conv, load_state_dict
from torch import nn

from cxrlt.errors import InputError

_LISTED_KEYS = 20
# Weight files of a Hugging Face model folder, in the order they are looked for.
FOLDER_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
# Pooling heads some checkpoints carry and cxrlt's backbones do not build (global_pool=""): their
# weights are dropped when the model has no such keys.
_POOL_PREFIXES = ("attn_pool.", "fc_norm.", "head.", "head_drop.")
_TRANSFORMERS_DINOV2_STEM = "embeddings.patch_embeddings.projection.weight"

State = dict[str, torch.Tensor]


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = True) -> None:
    """Load the weights at `path` (file or model folder) into timm `model` (built with num_classes=0)
    strictly, in place."""
    path = Path(path)
    state, architecture = read_weights(path, use_ema)
    note = f" (its config.json names architecture {architecture!r})" if architecture else ""
    load_backbone_state(model, state, f"{path}{note}")


def load_backbone_state(model: nn.Module, state: State, source: str) -> None:
    """Load a timm-layout state dict into timm `model` strictly, in place, after timm's filter (position
    embeddings resampled to the model's size), the classifier and pooling heads dropped and the stem
    adapted to the model's channels; `source` names where the weights came from in errors."""
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    expected = model.state_dict()
    state = _drop_heads(state, _pretrained_cfg(model).get("classifier"), expected)
    state = _adapt_stem(state, model, source)
    _check_fit(state, expected, source)
    model.load_state_dict(state, strict=True)


def read_weights(path: Path, use_ema: bool = True) -> tuple[State, str | None]:
    """The state dict at `path` in timm's key layout, and the architecture its folder's config.json names."""
    if path.is_dir():
        return _read_folder(path, use_ema)
    if not path.is_file():
        raise InputError(f"backbone checkpoint not found: {path}")
    state = _read_file(path, use_ema)
    if _TRANSFORMERS_DINOV2_STEM in state or f"dinov2.{_TRANSFORMERS_DINOV2_STEM}" in state:
        state = transformers_dinov2_to_timm(state, path)
    return state, None


def _read_file(path: Path, use_ema: bool) -> State:
    try:
        state = load_state_dict(str(path), use_ema=use_ema, weights_only=True)
    except Exception as e:  # torch and safetensors raise several types for damaged or foreign files
        raise InputError(f"{path}: cannot be read as a weights file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: holds no state dict of tensors")
    return state


def _read_folder(folder: Path, use_ema: bool) -> tuple[State, str | None]:
    config_file = folder / "config.json"
    config: dict[str, Any] = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{config_file}: not valid JSON ({e})") from None
    weights = next((folder / name for name in FOLDER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise InputError(f"{folder}: a model folder needs one of {', '.join(FOLDER_WEIGHTS)}; none is there")
    state = _read_file(weights, use_ema)
    model_type = config.get("model_type")
    if model_type == "dinov2":
        return transformers_dinov2_to_timm(state, weights), None
    if model_type is not None:
        # A transformers folder of another model type: its keys follow that library's layout.
        raise InputError(
            f"{config_file}: a transformers {model_type!r} model; cxrlt reads timm's hub layout "
            "(config.json with 'architecture'), open_clip folders and transformers DINOv2 folders"
        )
    return state, config.get("architecture")


_DINOV2_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_DINOV2_BLOCK_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def transformers_dinov2_to_timm(state: State, path: Path) -> State:
    """A transformers `Dinov2Model` state dict in timm's ViT layout (query/key/value joined into qkv).

    The mask token (masked-image pretraining only) is dropped; timm's filter resamples the position
    embeddings afterwards, as for any ViT checkpoint.
    """
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    out: State = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        block = _DINOV2_BLOCK.match(key)
        if block is None:
            top = {
                "embeddings.cls_token": "cls_token",
                "embeddings.position_embeddings": "pos_embed",
                "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                "layernorm.weight": "norm.weight",
                "layernorm.bias": "norm.bias",
            }
            if key in top:
                out[top[key]] = value
            elif key != "embeddings.mask_token" and not key.startswith(("classifier.", "pooler.")):
                raise InputError(f"{path}: unexpected key {key!r} for a transformers DINOv2 model")
            continue
        index, rest = block.groups()
        name, _, kind = rest.rpartition(".")
        if name.startswith("attention.attention."):
            qkv.setdefault((index, kind), {})[name.rsplit(".", 1)[1]] = value
        elif name in ("layer_scale1", "layer_scale2") and kind == "lambda1":
            out[f"blocks.{index}.ls{name[-1]}.gamma"] = value
        elif name in _DINOV2_BLOCK_NAMES:
            out[f"blocks.{index}.{_DINOV2_BLOCK_NAMES[name]}.{kind}"] = value
        else:
            raise InputError(
                f"{path}: unexpected key {key!r} for a transformers DINOv2 model (SwiGLU MLPs unsupported)"
            )
    for (index, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise InputError(f"{path}: layer {index} lacks one of its attention query/key/value {kind}s")
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _drop_heads(state: State, classifier: str | tuple[str, ...] | None, expected: State) -> State:
    """Without the classifier's weights, and without pooling-head weights the model has no keys for."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    classifier_prefixes = tuple(f"{c}." for c in names)
    return {
        k: v
        for k, v in state.items()
        if not (classifier_prefixes and k.startswith(classifier_prefixes))
        and not (k not in expected and k.startswith(_POOL_PREFIXES))
    }


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """timm's description of the architecture (which module is the stem, which the classifier)."""
    return dict(getattr(model, "pretrained_cfg", None) or {})


def _adapt_stem(state: State, model: nn.Module, source: str) -> State:
    key = f"{_pretrained_cfg(model)['first_conv']}.weight"
    expected = model.state_dict().get(key)
    found = state.get(key)
    if expected is None or found is None or found.shape == expected.shape:
        return state
    if found.ndim != 4 or found.shape[0] != expected.shape[0] or found.shape[2:] != expected.shape[2:]:
        return state  # a real mismatch, reported by _check_fit
    try:
        adapted = adapt_input_conv(expected.shape[1], found)
    except (NotImplementedError, ValueError) as e:
        raise InputError(f"{source}: cannot adapt {key} from {tuple(found.shape)}: {e}") from None
    return {**state, key: adapted}


def _check_fit(state: State, expected: State, source: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:_LISTED_KEYS])}{', ...' if len(keys) > _LISTED_KEYS else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise InputError(f"{source} does not fit the backbone: " + "; ".join(parts))
