"""Fixtures for the contrastive tests: a small rehearsal tree (real NIH images, real IU X-ray reports
in MIMIC-CXR layout) sharded through the MIMIC source with its reports, at 64 px."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.rehearsal import RehearsalOptions, make_rehearsal
from cxrlt.data.sources.mimic import read_mimic_cxr_lt
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import CXR_LT_2024_TASK1

REHEARSAL_IMAGES = 150
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "contrastive-tiny.toml"


@pytest.fixture(scope="session")
def rehearsal_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contrastive-rehearsal") / "tree"
    make_rehearsal(out, RehearsalOptions(images=REHEARSAL_IMAGES), progress=False)
    return out


def _label_files(tree: Path) -> dict[str, Path]:
    csvs = tree / "cxr-lt-2024"
    return {
        "train": csvs / "train_labeled.csv",
        "dev": csvs / "development_labeled_task1.csv",
        "test": csvs / "test_labeled_task1.csv",
    }


@pytest.fixture(scope="session")
def report_shards(tmp_path_factory: pytest.TempPathFactory, rehearsal_tree: Path) -> Path:
    """Image-level shards of the rehearsal's MIMIC tree, each image with its study's report sections."""
    out = tmp_path_factory.mktemp("report-shards")
    table = read_mimic_cxr_lt(
        rehearsal_tree / "mimic-cxr-jpg" / "2.0.0",
        _label_files(rehearsal_tree),
        CXR_LT_2024_TASK1,
        reports=rehearsal_tree / "mimic-cxr" / "2.0.0" / "files",
    )
    build_shards(table, CXR_LT_2024_TASK1, out, BuildOptions(), WriterOptions(max_size=64, samples_per_shard=40))
    return out


def save_tiny_bert(folder: Path, tokenizer: Any, hidden: int = 32) -> Path:
    """A one-layer BERT of `hidden` width with `tokenizer`'s vocabulary, random weights (seed 0), saved with
    the tokenizer as a local transformers folder: the `model.text_encoder.path` route a BioClinicalBERT
    or CXR-BERT folder takes, small enough that training steps cost milliseconds."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """save_tiny_bert with the packaged MiniLM's tokenizer (nothing is downloaded); dropout on, so
    resuming must restore the RNG."""
    from transformers import AutoTokenizer

    from cxrlt.models.text import default_text_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_text_encoder_path()), local_files_only=True)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer)


def contrastive_overrides(shards: Path, text_encoder: Path, work: Path, *extra: str) -> list[str]:
    """`--set` values for the tiny contrastive config: paths, the tiny text encoder, short epochs."""
    return [
        f"data.shards={shards}",
        f"run.out_dir={work / 'run'}",
        f"run.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"model.text_encoder.path={text_encoder}",
        "data.steps_per_epoch=3",
        *extra,
    ]
