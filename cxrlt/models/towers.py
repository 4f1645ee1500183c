"""A contrastive model's towers as the files ordinary members start from (`cxrlt contrastive export`).

`export_towers` writes
- `image_backbone.pth`: the image tower's backbone in the layout `model.backbone.checkpoint` reads
  (cxrlt.models.backbones.save_backbone_checkpoint), so any classification member, of any schema,
  image or study, starts from the report-trained encoder by config alone (stage.init_from with a
  contrastive file does the same through cxrlt.models.crossschema);
- `text_encoder/`: the fine-tuned text encoder (transformers weights + tokenizer), a local folder for
  `model.text_encoder.path`: a text-query ML-Decoder then builds its class queries with the text side
  that learnt report language, and a study model embeds indications with it;
- `transfer.toml`: the `--set` keys that use both, to paste into a member's overrides.
A study tower's first view encoder is exported (the shared one, or the frontal one with per-view
encoders). The EMA weights are used when the file has them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cxrlt.atomic import write_text_atomic
from cxrlt.errors import InputError
from cxrlt.models.backbones import save_backbone_checkpoint
from cxrlt.models.contrastive import ContrastiveModel
from cxrlt.models.saved import SavedModel

BACKBONE_FILE = "image_backbone.pth"
TEXT_FOLDER = "text_encoder"
OVERRIDES_FILE = "transfer.toml"


@dataclass(frozen=True)
class TowerFiles:
    backbone: Path
    text_encoder: Path
    overrides: dict[str, str]


def export_towers(saved: SavedModel, out: str | os.PathLike, use_ema: bool = True) -> TowerFiles:
    """Write the towers of a contrastive trained-model file into folder `out` (see the module docstring)."""
    if saved.kind != "contrastive":
        raise InputError(f"{saved.path}: a {saved.kind} model; export takes a contrastive model (stage contrastive)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = saved.build(use_ema)
    if not isinstance(model, ContrastiveModel):
        raise InputError(f"{saved.path}: built a {type(model).__name__}, not a contrastive model")
    backbone = save_backbone_checkpoint(model.encoders[0], out / BACKBONE_FILE)
    # Written beside and renamed, so a reader never sees half a folder.
    text_dir, partial = out / TEXT_FOLDER, out / f".{TEXT_FOLDER}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.text_encoder.model.save_pretrained(partial)
    model.text_encoder.tokenizer.save_pretrained(partial)
    shutil.rmtree(text_dir, ignore_errors=True)
    partial.rename(text_dir)
    overrides = {
        "model.backbone.name": saved.model_config.backbone.name,
        "model.backbone.checkpoint": str(backbone.resolve()),
        "model.text_encoder.path": str(text_dir.resolve()),
    }
    lines = ["# --set keys that start a member from this contrastive model's towers", "set = ["]
    lines += [f'    "{key}={value}",' for key, value in overrides.items()]
    write_text_atomic(out / OVERRIDES_FILE, "\n".join([*lines, "]"]) + "\n")
    return TowerFiles(backbone, text_dir, overrides)
