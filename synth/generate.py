"""Candidate generation: `per_class` images per target class from a trained synth model, as PNGs plus
one manifest row each (the provenance the written shards carry).

Each image has its own seed, derived from (sample.seed, class position, image number): its starting
noise comes from a generator seeded with it, so an image is reproducible on its own, whatever batch it
was drawn in, and a rerun regenerates only the images whose PNG is missing (a killed run resumes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cxrlt.atomic import write_bytes_atomic, write_text_atomic
from cxrlt.data.images import encode
from cxrlt.data.shardset import sample_key
from cxrlt.errors import InputError
from synth.config import SampleConfig
from synth.grid import to_uint8
from synth.labelsets import LabelSets
from synth.model import SynthModel

CANDIDATES = "candidates"
MANIFEST = "candidates.jsonl"


@dataclass
class Candidate:
    """One generated image and how it was made; `filter_score` / `kept` are set by the filter."""

    key: str
    target: str
    labels: list[float]
    positives: list[str]
    source_row: int
    seed: int
    guidance: float
    ddim_steps: int
    eta: float
    model: str
    model_step: int
    filter_score: float | None = None
    kept: bool = True


def write_manifest(out: Path, candidates: list[Candidate]) -> Path:
    return write_text_atomic(out / MANIFEST, "".join(json.dumps(asdict(c), sort_keys=True) + "\n" for c in candidates))


def read_manifest(out: Path) -> list[Candidate]:
    path = out / MANIFEST
    if not path.is_file():
        raise InputError(f"{out}: no {MANIFEST}; not a folder written by `cxrlt synth sample`")
    try:
        return [Candidate(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: not a candidate manifest: {e}") from None


def image_seed(seed: int, class_position: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, class_position, number]).generate_state(1, dtype=np.uint64)[0] >> 1)


def plan_candidates(
    label_sets: list[LabelSets], classes: list[str], cfg: SampleConfig, model: SynthModel
) -> list[Candidate]:
    return [
        Candidate(
            key=sample_key(f"synth_{sets.target}_{i:05d}"),
            target=sets.target,
            labels=[float(v) for v in row],
            positives=[c for c, v in zip(classes, row) if v == 1],
            source_row=int(source),
            seed=image_seed(cfg.seed, classes.index(sets.target), i),
            guidance=cfg.guidance,
            ddim_steps=cfg.ddim_steps,
            eta=cfg.eta,
            model=str(model.path),
            model_step=model.step,
        )
        for sets in label_sets
        for i, (row, source) in enumerate(zip(sets.rows, sets.sources))
    ]


def image_path(out: Path, candidate: Candidate) -> Path:
    return out / CANDIDATES / f"{candidate.key}.png"


def generate(candidates: list[Candidate], model: SynthModel, out: Path, batch_size: int) -> int:
    """Draw every candidate whose PNG is missing under `out`; returns how many were drawn."""
    todo = [c for c in candidates if not image_path(out, c).is_file()]
    diffusion = model.diffusion
    with tqdm(total=len(candidates), initial=len(candidates) - len(todo), unit="img", desc="synth sample") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            labels = torch.tensor([c.labels for c in batch], dtype=torch.float32)
            generators = [torch.Generator().manual_seed(c.seed) for c in batch]
            first = batch[0]
            images = diffusion.sample(
                diffusion.trainable, labels, first.guidance, first.ddim_steps, generators, first.eta
            )
            for candidate, pixels in zip(batch, to_uint8(images)):
                write_bytes_atomic(image_path(out, candidate), encode(Image.fromarray(pixels, mode="L"), "png"))
            bar.update(len(batch))
    return len(todo)
