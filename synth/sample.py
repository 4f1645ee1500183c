"""`cxrlt synth sample`: target classes -> label sets -> candidates -> classifier filter -> shards.

Reads data.shards and sample.model (default run.out_dir/model.pt); writes into sample.out (default
run.out_dir/synthetic): candidates/ (every generated PNG, kept or not), candidates.jsonl
(one row per candidate: label set, seed, guidance, filter score, kept), config.toml, and the shard set
(`train-%06d.tar` + `_index.json`) of the kept candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cxrlt.config import write_config
from cxrlt.data.shardset import ShardIndex, read_index
from cxrlt.errors import InputError
from synth.config import SynthConfig
from synth.filter import score_candidates
from synth.generate import Candidate, generate, plan_candidates, write_manifest
from synth.labelsets import draw_label_sets, target_classes, train_labels
from synth.model import load_synth_model
from synth.write import write_synthetic_shards

CONFIG = "config.toml"


@dataclass(frozen=True)
class SampleResult:
    index: ShardIndex
    candidates: list[Candidate]
    drawn: int


def sample(cfg: SynthConfig, command: list[str] | None = None) -> SampleResult:
    shards, model_path, out = cfg.shards, cfg.model_file, cfg.synthetic_dir
    real = read_index(shards)
    model = load_synth_model(model_path)
    if list(model.diffusion.classes) != real.classes:
        raise InputError(f"{model_path}: trained on classes other than {shards}'s (same schema and order needed)")
    labels = train_labels(shards)
    targets = target_classes(real.classes, labels, cfg.sample)
    if not targets:
        raise InputError(
            f"{shards}: no class is below sample.tail_threshold={cfg.sample.tail_threshold} of the train split; "
            "raise it or list sample.classes"
        )
    label_sets = [draw_label_sets(labels, real.classes, t, cfg.sample.per_class, cfg.sample.seed) for t in targets]
    candidates = plan_candidates(label_sets, real.classes, cfg.sample, model)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / CONFIG)
    model.diffusion.to("cuda" if torch.cuda.is_available() else "cpu")
    drawn = generate(candidates, model, out, cfg.sample.batch_size)
    score_candidates(candidates, out, cfg.filter)
    write_manifest(out, candidates)
    index = write_synthetic_shards(
        candidates,
        out,
        real,
        cfg.filter,
        model.diffusion.config.image_size,
        cfg.sample.samples_per_shard,
        command or [],
    )
    return SampleResult(index, candidates, drawn)
