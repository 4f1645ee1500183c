"""Loading a local checkpoint into a timm backbone: unwrap, remap, adapt the stem, drop the classifier.

Accepted files: a plain state dict or a timm / training checkpoint that nests it under `state_dict`,
`model` or (preferred when `use_ema`) `state_dict_ema` / `model_ema`, saved with torch.save or as
.safetensors; a DistributedDataParallel `module.` prefix is removed. timm's own per-architecture filter
(`checkpoint_filter_fn`) then maps original-author layouts onto timm's and resizes ViT position embeddings
and MaxViT relative-position tables to the configured image size. A 3-channel stem loaded into a
1-channel model is summed over its input channels, which gives exactly the 3-channel model's output on a
grey image repeated three times. Anything that still does not fit is an InputError listing the keys.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from timm.models import adapt_input_conv, load_state_dict
from torch import nn

from cxrlt.errors import InputError

_LISTED_KEYS = 20


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = True) -> None:
    """Load the checkpoint at `path` into timm `model` (built with num_classes=0) strictly, in place."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"backbone checkpoint not found: {path}")
    state = load_state_dict(str(path), use_ema=use_ema)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    state = _drop_classifier(state, model.pretrained_cfg.get("classifier"))
    state = _adapt_stem(state, model, path)
    _check_fit(state, model.state_dict(), path)
    model.load_state_dict(state, strict=True)


def _drop_classifier(state: dict[str, torch.Tensor], classifier: str | tuple[str, ...] | None) -> dict:
    if not classifier:
        return state
    prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _adapt_stem(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    key = f"{model.pretrained_cfg['first_conv']}.weight"
    expected = model.state_dict().get(key)
    found = state.get(key)
    if expected is None or found is None or found.shape == expected.shape:
        return state
    if found.ndim != 4 or found.shape[0] != expected.shape[0] or found.shape[2:] != expected.shape[2:]:
        return state  # a real mismatch, reported by _check_fit
    try:
        adapted = adapt_input_conv(expected.shape[1], found)
    except (NotImplementedError, ValueError) as e:
        raise InputError(f"{path}: cannot adapt {key} from {tuple(found.shape)}: {e}") from None
    return {**state, key: adapted}


def _check_fit(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
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
        raise InputError(f"{path} does not fit the backbone: " + "; ".join(parts))
