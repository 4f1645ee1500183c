"""What `cxrlt predict` is asked to do, and its command-line form (argparse only: no heavy imports,
so `cxrlt --help` stays fast and the per-rank entry point parses exactly what the command parsed)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PredictRequest:
    model: Path
    shards: Path
    split: str
    out: Path
    tta: str = "none"
    batch_size: int = 64
    num_workers: int = 0
    max_views: int = 4
    use_ema: bool = True
    classes: tuple[str, ...] = ()  # names to score instead of the model's (text-query models)
    descriptions: Path | None = None  # descriptions file for those names
    name: str = ""  # the model's name in the sidecar (ensembles and reports show it)

    @property
    def model_name(self) -> str:
        """`name`, else the run folder's name; a per-resolution folder (res-SIZE) is named with its run's."""
        folder = self.model.resolve().parent
        if self.name:
            return self.name
        return f"{folder.parent.name}-{folder.name}" if folder.name.startswith("res-") else folder.name

    def to_args(self) -> list[str]:
        """The arguments that parse back into this request (for the torchrun workers)."""
        args = [str(self.model), "--shards", str(self.shards), "--split", self.split, "--out", str(self.out)]
        args += ["--tta", self.tta, "--batch-size", str(self.batch_size), "--num-workers", str(self.num_workers)]
        args += ["--max-views", str(self.max_views)] + ([] if self.use_ema else ["--no-ema"])
        args += ["--classes", ",".join(self.classes)] if self.classes else []
        args += ["--descriptions", str(self.descriptions)] if self.descriptions is not None else []
        args += ["--name", self.name] if self.name else []
        return args


def add_request_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", type=Path, help="trained-model file (a run's best.pt or last.pt)")
    parser.add_argument("--shards", required=True, type=Path, help="shard set folder")
    parser.add_argument("--split", default="test", help="split to predict (default test)")
    parser.add_argument("--out", required=True, type=Path, help="prediction file (.csv or .parquet)")
    parser.add_argument("--tta", default="none", help="test-time augmentation: hflip and/or scales=0.9,1.1")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--max-views",
        type=int,
        default=4,
        help="view slots per study item for study models (at most the model's); a study with more views is "
        "scored in chunks whose probabilities are averaged, so every image gets a row",
    )
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    parser.add_argument(
        "--classes",
        default="",
        help="comma-separated class names to score instead of the model's (text-query models: unseen names "
        "are scored from their text, zero-shot)",
    )
    parser.add_argument(
        "--descriptions",
        type=Path,
        help="class descriptions (.toml [descriptions] or .csv class,description, or a packaged name such "
        "as cxr-lt-2024-task3) added to the query texts",
    )
    parser.add_argument("--name", default="", help="model name in the prediction sidecar (default: the run folder's)")
    return parser


def request_from(args: argparse.Namespace) -> PredictRequest:
    return PredictRequest(
        args.model,
        args.shards,
        args.split,
        args.out,
        args.tta,
        args.batch_size,
        args.num_workers,
        args.max_views,
        not args.no_ema,
        parse_class_list(args.classes),
        args.descriptions,
        args.name,
    )


def parse_class_list(text: str) -> tuple[str, ...]:
    """ "Bulla,Cardiomyopathy, Hilum" -> names (stripped, empty items dropped)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
