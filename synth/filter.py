"""The classifier filter: score each candidate with a trained classifier file and keep those whose
probability for their target class reaches the threshold.

Candidates are preprocessed exactly as the classifier's evaluation images are (the model file's
`transform`, through cxrlt's evaluation transform), so a score here is the score that classifier would
give the image in `cxrlt predict`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrlt.data.transforms import ImageTransform, TransformConfig
from cxrlt.errors import InputError
from cxrlt.models.saved import load_model
from synth.config import FilterConfig
from synth.generate import Candidate, image_path


def score_candidates(candidates: list[Candidate], out: Path, cfg: FilterConfig) -> None:
    """Set `filter_score` and `kept` on every candidate (in place); without a classifier all are kept."""
    if cfg.classifier is None:
        for c in candidates:
            c.filter_score, c.kept = None, True
        return
    saved = load_model(cfg.classifier)
    if saved.kind != "image":
        raise InputError(f"filter.classifier {cfg.classifier}: a {saved.kind!r} model; the filter needs an image model")
    missing = sorted({c.target for c in candidates} - set(saved.classes))
    if missing:
        raise InputError(f"filter.classifier {cfg.classifier}: does not predict {missing}")
    t = saved.transform
    transform = ImageTransform(
        TransformConfig(size=t["size"], channels=t["channels"], mean=t["mean"], std=t["std"]), train=False
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = saved.build(use_ema=cfg.use_ema).to(device)
    rng = np.random.default_rng(0)  # the evaluation transform draws nothing; it only needs the argument
    for start in range(0, len(candidates), cfg.batch_size):
        batch = candidates[start : start + cfg.batch_size]
        images = torch.stack([transform(Image.open(image_path(out, c)).convert("L"), rng) for c in batch])
        with torch.no_grad():
            probabilities = torch.sigmoid(model(images.to(device)).float()).cpu()
        for c, row in zip(batch, probabilities):
            c.filter_score = float(row[saved.classes.index(c.target)])
            c.kept = c.filter_score >= cfg.threshold
