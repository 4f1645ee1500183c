"""Zero-shot prompts for an image-text model: per class, positive and negative sentences to embed.

CheXzero (Tiu et al., 2022) scores a finding by a softmax over the image's similarity to "{finding}"
and to "no {finding}"; CLIP averages the embeddings of several templates of one class ("prompt
ensembling"). Both are here: each class gets every positive template filled with its name, plus
"<name>: <description>" when the class has a description (cxrlt.models.descriptions; the one line that
tells the text side what an unseen finding looks like), and every negative template. The model embeds
and averages each side (cxrlt.models.contrastive).

Report text is lower-case prose ("mild cardiomegaly", "small left pleural effusion"), so names are
lower-cased by default before they fill a template; descriptions are used as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_SLOT = "{}"


@dataclass
class PromptConfig:
    """positive / negative: templates with one "{}" for the class name. descriptions: add the class
    description (when it has one) as one more positive prompt. lowercase: names lower-cased first."""

    positive: list[str] = field(default_factory=lambda: ["{}", "there is {}", "findings consistent with {}"])
    negative: list[str] = field(default_factory=lambda: ["no {}", "there is no {}", "no evidence of {}"])
    descriptions: bool = True
    lowercase: bool = True

    def __post_init__(self) -> None:
        for side in ("positive", "negative"):
            templates = getattr(self, side)
            if not templates:
                raise ValueError(f"{side} needs at least one template")
            bad = [t for t in templates if t.count(_SLOT) != 1]
            if bad:
                raise ValueError(f"{side} template {bad[0]!r} must hold '{{}}' exactly once (the class name)")


@dataclass(frozen=True)
class ClassPrompts:
    """The sentences one class is scored with."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]


def class_prompts(
    classes: Sequence[str], cfg: PromptConfig, descriptions: Mapping[str, str] | None = None
) -> list[ClassPrompts]:
    """One ClassPrompts per class, in class order."""
    descriptions = descriptions or {}
    out = []
    for name in classes:
        shown = name.lower() if cfg.lowercase else name
        positive = [t.format(shown) for t in cfg.positive]
        if cfg.descriptions and descriptions.get(name):
            positive.append(f"{shown}: {descriptions[name]}")
        out.append(ClassPrompts(tuple(positive), tuple(t.format(shown) for t in cfg.negative)))
    return out
