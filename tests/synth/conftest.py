"""Fixtures for the synth tests: the embedded NIH sample as 64 px shards, a tiny 32 px diffusion model
trained on them for a few steps, a real (untrained) classifier file, and one sampled synthetic set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cxrlt.config import load_config
from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.shardset import read_index
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import NIH_14
from cxrlt.models.backbones import BackboneConfig
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.heads import HeadConfig
from cxrlt.models.saved import save_model
from cxrlt.tracking import sqlite_uri
from synth.config import SynthConfig
from synth.sample import SampleResult, sample
from synth.train import train

TINY = (
    "model.image_size=32",
    "model.unet.block_out_channels=[16, 32]",
    "model.unet.layers_per_block=1",
    "model.unet.cross_attention_dim=32",
    "model.unet.norm_num_groups=8",
    "train.batch_size=8",
    "train.checkpoint_every=4",
    "train.grid_steps=2",
    "train.log_every=1",
    "train.shuffle_buffer=64",
    "train.ema.decay=0.9",
    "sample.tail_threshold=0.04",
    "sample.per_class=3",
    "sample.ddim_steps=3",
    "sample.batch_size=4",
)
TRAIN_STEPS = 4
CLASSIFIER_TRANSFORM = {"size": 32, "channels": 1, "mean": 0.5, "std": 0.25}


MakeConfig = Callable[..., SynthConfig]


@pytest.fixture(scope="session")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("starter-64")
    build_shards(read_starter(NIH_14), NIH_14, out, BuildOptions(), WriterOptions(max_size=64))
    return out


@pytest.fixture(scope="session")
def make_config(starter: Path, tmp_path_factory: pytest.TempPathFactory) -> MakeConfig:
    """`make_config(out, *overrides)`: the tiny config on the starter shards. All runs share one MLflow
    store, since creating a SQLite store (its schema migrations) costs seconds each time."""
    tracking = sqlite_uri(tmp_path_factory.mktemp("mlflow"))

    def make(out: Path, *overrides: str) -> SynthConfig:
        fixed = [f"data.shards={starter}", f"run.out_dir={out}", f"run.tracking_uri={tracking}"]
        return load_config(SynthConfig, None, [*TINY, *fixed, *overrides])

    return make


@pytest.fixture(scope="session")
def trained(make_config: MakeConfig, tmp_path_factory: pytest.TempPathFactory) -> SynthConfig:
    cfg = make_config(tmp_path_factory.mktemp("synth-run"), f"train.steps={TRAIN_STEPS}")
    assert train(cfg) == 0
    return cfg


@pytest.fixture(scope="session")
def classifier(starter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real classifier file (convnext_atto + linear head, random init) as the trainer writes them."""
    index = read_index(starter)
    config = ModelConfig(backbone=BackboneConfig(name="convnext_atto", in_chans=1), head=HeadConfig(name="linear"))
    torch.manual_seed(0)
    model = build_model(config, index.classes)
    path = tmp_path_factory.mktemp("classifier") / "best.pt"
    return save_model(path, model, config, index.classes, index.schema, CLASSIFIER_TRANSFORM)


@pytest.fixture(scope="session")
def sampled(make_config: MakeConfig, trained: SynthConfig, classifier: Path) -> tuple[SynthConfig, SampleResult]:
    """Candidates scored by the classifier; threshold 0 keeps them all so the set is never empty."""
    cfg = make_config(
        trained.run.out_dir, f"train.steps={TRAIN_STEPS}", f"filter.classifier={classifier}", "filter.threshold=0.0"
    )
    return cfg, sample(cfg)
