"""`cxrlt predict`: a trained-model file + a shard split -> a prediction file (+ sidecar), on any ranks.

Each rank reads its share of the split (EvalReader), the model scores it with optional test-time
augmentation, rank 0 gathers everything in split order and writes the table and its sidecar
atomically. A study model reads study batches and its prediction is written for every image of the
study (the prediction-file contract is one row per image); a study with more views than the model's
slots is scored in view chunks whose probabilities are averaged (trainers.inference). A fixed-class
model's classes must include the shards' classes: a different schema would put its outputs under names
of findings it never learned (a weak-label member adds the classes it learned from report-mined labels;
`--classes` keeps any of its classes' columns). A text-query model may score other names (`--classes`,
`--descriptions`, see trainers.zeroshot): unseen names have no labels in the shards, which does not
matter for scoring.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.shardset import read_index
from cxrlt.data.transforms import TransformConfig
from cxrlt.errors import InputError
from cxrlt.models.saved import SavedModel, load_model
from cxrlt.predictions import SUFFIXES, PredictionMeta, write_predictions
from trainers import distributed
from trainers.inference import TTA, image_rows, predict_split
from trainers.request import PredictRequest, add_request_arguments, request_from
from trainers.zeroshot import ScoredClasses, scored_classes


def check_request(request: PredictRequest) -> tuple[SavedModel, ScoredClasses, TTA]:
    """Everything that can be wrong with the inputs, before any rank starts."""
    if request.out.suffix.lower() not in SUFFIXES:
        raise InputError(f"--out {request.out}: prediction files end in {' or '.join(SUFFIXES)}")
    saved = load_model(request.model)
    index = read_index(request.shards)
    if request.split not in index.splits:
        raise InputError(f"--split {request.split!r}: {request.shards} has splits {sorted(index.splits)}")
    scored = scored_classes(saved, request.classes, request.descriptions)
    if not set(index.classes) <= set(saved.classes) and not saved.model_config.open_vocabulary:
        raise InputError(
            f"{request.model} predicts {len(saved.classes)} classes of schema {saved.schema!r}; "
            f"{request.shards} is schema {index.schema!r} with {len(index.classes)} classes: the model must "
            "have every class of the shards"
        )
    slots = saved.model_config.study.max_views
    if saved.model_config.level == "study" and not 1 <= request.max_views <= slots:
        raise InputError(f"--max-views {request.max_views}: {request.model} has {slots} view slots; use 1 to {slots}")
    try:
        tta = TTA.parse(request.tta)
    except ValueError as e:
        raise InputError(f"--tta {request.tta!r}: {e}") from None
    return saved, scored, tta


def predict(request: PredictRequest) -> Path | None:
    """Write the prediction file; returns its path on rank 0 (None on other ranks)."""
    saved, scored, tta = check_request(request)
    ctx = distributed.init()
    model = saved.build(request.use_ema, scored.built, scored.descriptions).to(ctx.device)
    level = saved.model_config.level
    transform = TransformConfig(**{k: saved.transform[k] for k in ("size", "channels", "mean", "std")})
    reader = EvalReader(
        request.shards,
        ReaderConfig(
            level=level,
            split=request.split,
            batch_size=request.batch_size,
            max_views=request.max_views,
            transform=transform,
        ),
    )
    progress = tqdm(
        total=reader.num_samples(request.num_workers),
        desc=f"predict {request.split} (rank 0 share)",
        disable=not ctx.is_main,
    )
    outputs = predict_split(
        model,
        make_loader(reader, request.num_workers),
        level,
        ctx.device,
        tta,
        autocast=ctx.device.type == "cuda",
        progress=progress,
    )
    progress.close()
    if outputs is None:
        return None
    image_ids, study_ids, rows = image_rows(outputs)
    meta = PredictionMeta(
        classes=scored.names,
        schema=scored.schema,
        split=request.split,
        model=request.model_name,
        config_hash=saved.config_hash,
        checkpoint=str(request.model.resolve()),
        mlflow_run_id=saved.mlflow_run_id,
        tta=tta.describe(),
        extra={"level": level, "size": transform.size, "use_ema": request.use_ema and saved.ema_state_dict is not None},
    )
    return write_predictions(request.out, image_ids, study_ids, outputs.probs[rows][:, scored.columns], meta)


def main(argv: Sequence[str] | None = None) -> int:
    """Per-rank entry under torchrun: `python -m trainers.predict MODEL --shards ... --out ...`."""
    args = add_request_arguments(argparse.ArgumentParser(prog="trainers.predict")).parse_args(argv)
    try:
        predict(request_from(args))
    except (InputError, FileNotFoundError) as e:
        print(f"cxrlt predict: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
