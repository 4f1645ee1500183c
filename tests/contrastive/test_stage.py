"""The contrastive stage end to end on real images and real report text: `cxrlt train` (stage
"contrastive") on the DeepSpeed engine with MLflow, exact resume after a stop request, zero-shot
`cxrlt predict --classes --descriptions` on the result, and its towers starting classification members."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from cxrlt.config import load_config
from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.transforms import TransformConfig
from cxrlt.models.backbones import BackboneConfig
from cxrlt.models.descriptions import load_descriptions
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.heads import HeadConfig
from cxrlt.models.prompts import class_prompts
from cxrlt.models.saved import load_model
from cxrlt.models.text import TextEncoderConfig
from cxrlt.requeue import REQUEUE_EXIT_CODE, request_stop
from cxrlt.tracking import Tracker
from launch.main import main as cxrlt_main
from tests.contrastive.conftest import TINY_CONFIG, contrastive_overrides
from trainers import distributed
from trainers.config import TrainConfig
from trainers.stages import run_training

pytestmark = pytest.mark.timeout(400)
TASK3 = ("Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis")
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def forked(fn: Callable[..., object], *args: object, **kwargs: object) -> int | None:
    """Run `fn` in a forked child as a one-rank `cxrlt` worker runs, and return its exit code.

    A child per command, because DeepSpeed keeps the first process group it saw: a second engine in
    one process fails once that group is destroyed. Forked, the child starts with this process's
    imports; no rendezvous variables reach it, so it forms a group of one."""
    for key in RENDEZVOUS:
        os.environ.pop(key, None)

    def child() -> None:
        try:
            result = fn(*args, **kwargs)
        finally:
            distributed.shutdown()
        sys.exit(result if isinstance(result, int) else 0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join()
    return process.exitcode


def _config(shards: Path, text_encoder: Path, work: Path) -> TrainConfig:
    return load_config(TrainConfig, TINY_CONFIG, contrastive_overrides(shards, text_encoder, work))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, report_shards, tiny_text_encoder) -> Path:
    work = tmp_path_factory.mktemp("contrastive-run")
    assert forked(run_training, _config(report_shards, tiny_text_encoder, work)) == 0
    assert (work / "run" / "best.pt").is_file()
    return work


def _weights(path: Path) -> dict[str, torch.Tensor]:
    saved = load_model(path)
    return {**saved.state_dict, **{f"ema.{k}": v for k, v in (saved.ema_state_dict or {}).items()}}


def test_the_stage_trains_validates_zero_shot_and_tracks_in_mlflow(trained):
    run_dir = trained / "run"
    saved = load_model(run_dir / "best.pt")
    assert saved.kind == "contrastive" and saved.model_config.contrastive.loss == "clip"
    assert any(k.startswith("text_encoder.model.") for k in saved.state_dict)  # the text tower trained too
    tracker = Tracker(f"sqlite:///{trained / 'mlruns.db'}")
    run = tracker.client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "contrastive"
    losses = tracker.client.get_metric_history(run.info.run_id, "train/loss")
    assert losses and all(0 < m.value < 10 for m in losses)
    # Validation is zero-shot scoring of the shards' classes on the dev split.
    assert sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, "dev/mAUROC")) == [3, 6]
    dev = pd.read_csv(run_dir / "dev_predictions.csv")
    assert list(dev.columns[2:]) == list(saved.classes) and dev.iloc[:, 2:].stack().between(0, 1).all()


def test_a_stop_request_then_resume_ends_with_the_uninterrupted_weights(
    trained, report_shards, tiny_text_encoder, tmp_path
):
    cfg = _config(report_shards, tiny_text_encoder, tmp_path)

    def stop_after_first_epoch(epoch: int, metrics: dict, run_dir: Path) -> None:
        if epoch == 1:
            request_stop(run_dir, "test: preempted")

    assert forked(run_training, cfg, on_epoch_end=stop_after_first_epoch) == REQUEUE_EXIT_CODE
    # Stopped at the first step boundary of epoch 2: mid-epoch, so resume replays the data position.
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert forked(run_training, cfg, resume=True) == 0
    expected, got = _weights(trained / "run" / "last.pt"), _weights(tmp_path / "run" / "last.pt")
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


def test_predict_scores_unseen_classes_by_positive_and_negative_prompts(trained, report_shards, tmp_path):
    out = tmp_path / "task3.csv"
    args = ["predict", trained / "run" / "best.pt", "--shards", report_shards, "--split", "dev", "--out", out]
    args += ["--classes", ",".join(TASK3), "--descriptions", "cxr-lt-2024-task3"]
    assert forked(cxrlt_main, [str(a) for a in args]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[2:]) == list(TASK3)
    # The same numbers from first principles: CheXzero's softmax over the mean positive and the mean
    # negative prompt embedding, prompts written out here from the templates and the descriptions file.
    model = load_model(trained / "run" / "best.pt").build()
    config = ReaderConfig(split="dev", batch_size=256, transform=TransformConfig(size=64))
    (batch,) = list(make_loader(EvalReader(report_shards, config, 0, 1)))
    prompts = class_prompts(TASK3, model.cfg.prompts, load_descriptions("cxr-lt-2024-task3"))
    with torch.no_grad():
        image = model.encode_images(batch["image"])
        positive = F.normalize(torch.stack([model.encode_texts(p.positive).mean(0) for p in prompts]), dim=-1)
        negative = F.normalize(torch.stack([model.encode_texts(p.negative).mean(0) for p in prompts]), dim=-1)
        pair = torch.stack([image @ positive.T, image @ negative.T], -1) * model.scale()
        expected = pair.softmax(-1)[..., 0]
    rows = table.set_index("image_id").loc[batch["id"], list(TASK3)].to_numpy()
    torch.testing.assert_close(torch.from_numpy(rows).float(), expected, rtol=1e-4, atol=1e-5)


def test_export_hands_the_towers_to_a_classification_member_of_another_schema(trained, tiny_text_encoder, tmp_path):
    args = ["contrastive", "export", trained / "run" / "best.pt", "--out", tmp_path / "towers"]
    assert cxrlt_main([str(a) for a in args]) == 0
    saved = load_model(trained / "run" / "best.pt")
    member = ModelConfig(
        backbone=BackboneConfig("convnext_atto", checkpoint=tmp_path / "towers" / "image_backbone.pth"),
        head=HeadConfig(name="ml_decoder", text_queries=True, decoder_dim=32, num_heads=2, ffn_dim=64),
        text_encoder=TextEncoderConfig(path=tmp_path / "towers" / "text_encoder"),
    )
    classifier = build_model(member, TASK3)  # 5 classes: not the 40 the contrastive run validated on
    tower = {k.removeprefix("image_tower.backbone."): v for k, v in saved.ema_state_dict.items()}
    for name, value in classifier.backbone.state_dict().items():
        assert torch.equal(value, tower[name]), name
    # The exported text encoder is the report-trained text tower, and the text-query head's class
    # queries are built with it (not with the encoder the contrastive run started from).
    exported = AutoModel.from_pretrained(str(tmp_path / "towers" / "text_encoder"), local_files_only=True)
    for name, value in exported.state_dict().items():
        assert torch.equal(value, saved.ema_state_dict[f"text_encoder.model.{name}"]), name
    queries = classifier.head.class_embeddings
    untrained = build_model(replace(member, text_encoder=TextEncoderConfig(path=tiny_text_encoder)), TASK3)
    assert queries.shape == (5, 32) and not torch.allclose(queries, untrained.head.class_embeddings)
    assert "model.text_encoder.path" in (tmp_path / "towers" / "transfer.toml").read_text()
