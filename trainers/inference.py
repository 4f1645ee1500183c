"""Distributed inference over an evaluation split: every sample once, gathered on rank 0 in split order.

Used by validation (every epoch) and by `cxrlt predict`. Each rank reads its share with the
EvalReader, runs the model (with test-time augmentation when asked), and rank 0 gathers the shares and
sorts them by the sample's position in the split, so the result does not depend on the rank count.
Test-time augmentation averages the sigmoid probabilities over the original image, its horizontal flip
and rescaled copies.

A study with more views than the model's slots arrives as several items (view chunks with the same
`index`, cxrlt.data.decoding); each rank merges them into one row per study before the gather (a
sample's chunks are always read by one rank), averaging the chunks' probabilities in chunk order, and
the study's image ids become all its views in stored order, so every image gets a prediction row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers import distributed
from trainers.batches import batch_size, model_inputs


@dataclass(frozen=True)
class TTA:
    """hflip: add the mirrored image. scales: extra input sizes as factors of the trained size (each
    rounded to a multiple of 32, which every backbone accepts)."""

    hflip: bool = False
    scales: tuple[float, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> TTA:
        """'hflip', 'scales=0.9,1.1', 'hflip,scales=0.875,1.125' or '' / 'none'."""
        hflip, scales = False, []
        reading_scales = False
        for part in (text or "").replace(" ", "").split(","):
            if not part or part == "none":
                continue
            if part == "hflip":
                hflip, reading_scales = True, False
            elif part.startswith("scales="):
                reading_scales = True
                scales.append(float(part.removeprefix("scales=")))
            elif reading_scales:
                scales.append(float(part))
            else:
                raise ValueError(f"unknown test-time augmentation {part!r}; use hflip and/or scales=a,b")
        if any(s <= 0 for s in scales):
            raise ValueError("TTA scales must be positive")
        return cls(hflip, tuple(scales))

    def describe(self) -> str:
        parts = (["hflip"] if self.hflip else []) + (
            [f"scales={','.join(map(str, self.scales))}"] if self.scales else []
        )
        return ",".join(parts) or "none"

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The augmented copies of (..., C, H, W) images, the original first."""
        size = images.shape[-1]
        out = [images]
        for scale in self.scales:
            new = max(32, round(size * scale / 32) * 32)
            flat = images.flatten(0, -4)
            out.append(
                F.interpolate(flat, size=(new, new), mode="bilinear", antialias=True).view(*images.shape[:-2], new, new)
            )
        if self.hflip:
            out += [view.flip(-1) for view in out]
        return out


class Progress(Protocol):
    """A progress bar (tqdm): told how many samples each batch finished."""

    def update(self, n: int) -> object: ...


@dataclass
class SplitOutputs:
    """Rank 0's gathered outputs in split order (N samples)."""

    index: np.ndarray
    ids: list[str]
    study_ids: list[str]
    image_ids: list[list[str]]  # per sample: its image ids (one at image level, every view at study level)
    labels: np.ndarray  # (N, K) float32 with -1 unknown
    probs: np.ndarray  # (N, K) float32


@torch.no_grad()
def _probabilities(
    model: nn.Module, batch: dict, level: str, device: torch.device, tta: TTA, autocast: bool
) -> torch.Tensor:
    inputs = model_inputs(batch, level, device)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    total: torch.Tensor | None = None
    views = tta.views(inputs.args[0])
    with context:
        for images in views:
            probs = torch.sigmoid(model(images, *inputs.args[1:], **inputs.kwargs).float())
            total = probs if total is None else total + probs
    if total is None:  # views always starts with the original images
        raise RuntimeError("test-time augmentation produced no views")
    return total / len(views)


def predict_split(
    model: nn.Module,
    batches: Iterable[dict],
    level: str,
    device: torch.device,
    tta: TTA = TTA(),
    autocast: bool = False,
    progress: Progress | None = None,
) -> SplitOutputs | None:
    """Run `model` (eval mode) over this rank's `batches`; rank 0 gets the whole split, others None."""
    was_training = model.training
    model.eval()
    index, ids, study_ids, image_ids, labels, probs, chunks = [], [], [], [], [], [], []
    for batch in batches:
        probs.append(_probabilities(model, batch, level, device, tta, autocast).cpu().numpy())
        labels.append(batch["labels"].numpy())
        index.append(batch["index"].numpy())
        chunks.append(batch["chunk"].numpy() if "chunk" in batch else np.zeros(len(batch["index"]), dtype=np.int64))
        ids += batch["id"]
        study_ids += batch["study_id"]
        if level == "image":
            image_ids += [[i] for i in batch["id"]]
        else:
            image_ids += [
                [i for i, on in zip(views, mask) if on]
                for views, mask in zip(batch["image_ids"], batch["view_mask"].tolist())
            ]
        if progress is not None:
            progress.update(int((chunks[-1] == 0).sum()) if level == "study" else batch_size(batch))
    model.train(was_training)
    shard = (index, ids, study_ids, image_ids, labels, probs)
    if level == "study" and index:
        shard = _merge_chunks(shard, np.concatenate(chunks))
    gathered = distributed.gather_to_main(shard)
    if gathered is None:
        return None

    def listed(field: int) -> list:
        every = [x for g in gathered for x in g[field]]
        return [every[i] for i in order]

    def stacked(field: int) -> np.ndarray:
        return np.concatenate([np.concatenate(g[field]) for g in gathered if g[field]])[order]

    order = np.argsort(np.concatenate([np.concatenate(g[0]) for g in gathered if g[0]]), kind="stable")
    return SplitOutputs(
        index=stacked(0), ids=listed(1), study_ids=listed(2), image_ids=listed(3), labels=stacked(4), probs=stacked(5)
    )


def _merge_chunks(shard: tuple, chunks: np.ndarray) -> tuple:
    """This rank's outputs with one row per sample: the rows of a study's view chunks (same index)
    become one, ordered by (index, chunk) so the result depends neither on batch boundaries nor on the
    order chunks arrived in.

    The chunks' probabilities are averaged, not their logits: the model's outputs are already
    probabilities here (test-time augmentation averages sigmoids), and a mean of probabilities is the
    ensemble rule used elsewhere in cxrlt (TTA, the default of ensembles' view aggregation), bounded so one
    overconfident chunk cannot swamp the others. Chunks are as equal in size as possible, so each
    counts the same. A study that fits the model's slots is one chunk and keeps its row bit for bit."""
    index, ids, study_ids, image_ids, labels, probs = shard
    flat_index = np.concatenate(index)
    order = np.lexsort((chunks, flat_index))
    sorted_index = flat_index[order]
    starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    merged_probs = np.add.reduceat(np.concatenate(probs)[order], starts, axis=0) / counts[:, None].astype(np.float32)
    first = order[starts]
    merged_images = [
        [image for row in order[start : start + count] for image in image_ids[row]]
        for start, count in zip(starts, counts)
    ]
    return (
        [sorted_index[starts]],
        [ids[i] for i in first],
        [study_ids[i] for i in first],
        merged_images,
        [np.concatenate(labels)[first]],
        [merged_probs.astype(np.float32)],
    )


def image_rows(outputs: SplitOutputs) -> tuple[list[str], list[str], np.ndarray]:
    """(image ids, study ids, row of `outputs` per image): a study's prediction applies to each of its
    images, which is how the prediction-file contract (one row per image) holds study predictions."""
    image_ids, study_ids, rows = [], [], []
    for sample, (images, study) in enumerate(zip(outputs.image_ids, outputs.study_ids)):
        image_ids += images
        study_ids += [study] * len(images)
        rows += [sample] * len(images)
    return image_ids, study_ids, np.asarray(rows, dtype=np.int64)
