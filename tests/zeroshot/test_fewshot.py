"""Few-shot adaptation moves only the adapted classes' query embeddings, and it fits the examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlt.data.mining import Example, write_examples
from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.transforms import TransformConfig
from cxrlt.models.fewshot import FewShotConfig, adapt_class_queries, balanced_bce
from cxrlt.models.saved import load_model
from tests.zeroshot.conftest import HELD_OUT
from trainers.fewshot import example_features

pytestmark = pytest.mark.timeout(600)
K = 6


def split_labels(shards, split: str) -> dict[str, torch.Tensor]:
    """image id -> label row, as the evaluation reader yields them."""
    reader = EvalReader(shards, ReaderConfig(level="image", split=split, batch_size=128), 0, 1)
    return {i: row for batch in make_loader(reader, 0) for i, row in zip(batch["id"], batch["labels"])}


def _examples(run, starter64, name: str) -> list[Example]:
    """K positives and 3K negatives of `name` from the train split's labels (the NIH sample has no reports)."""
    column = run.classes.index(name)
    labels = split_labels(starter64, "train")
    positives = sorted(i for i, row in labels.items() if row[column] == 1)[:K]
    negatives = sorted(i for i, row in labels.items() if row[column] == 0)[: 3 * K]
    return [Example(name, 1, "", i) for i in positives] + [Example(name, 0, "", i) for i in negatives]


def test_adaptation_changes_only_the_adapted_query_rows_and_fits_the_examples(held_out_run, starter64):
    saved = load_model(held_out_run.run_dir / "best.pt")
    model = saved.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    examples = _examples(held_out_run, starter64, "Effusion")
    transform = TransformConfig(**{k: saved.transform[k] for k in ("size", "channels", "mean", "std")})
    features = example_features(model, starter64, "train", transform, {e.image_id for e in examples})
    ids = [e.image_id for e in examples]
    stacked = torch.stack([features[i] for i in ids])
    targets = torch.tensor([[float(e.label)] for e in examples])
    row = saved.classes.index("Effusion")

    def example_loss() -> float:
        """The class-balanced BCE on the examples: the fit the adaptation is for."""
        with torch.no_grad():
            return float(balanced_bce(model.head(stacked)[:, [row]], targets))

    loss_before = example_loss()
    adapt_class_queries(model.head, stacked, targets, [row], FewShotConfig())
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["head.class_embeddings"]  # backbone, decoder, projections: bitwise the same
    moved = (before["head.class_embeddings"] != after["head.class_embeddings"]).any(1)
    assert moved.nonzero().flatten().tolist() == [row]
    assert example_loss() < loss_before  # it fits the few examples
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_adapt_command_writes_a_model_that_predict_uses(held_out_run, starter64, tmp_path, cli):
    examples = tmp_path / "examples.csv"
    write_examples([e for c in HELD_OUT[:2] for e in _examples(held_out_run, starter64, c)], examples)
    out = tmp_path / "adapted.pt"
    status, _, err = cli(
        "zeroshot",
        "adapt",
        held_out_run.run_dir / "best.pt",
        "--shards",
        starter64,
        "--examples",
        examples,
        "--classes",
        "Cardiomegaly,Effusion,Bulla",
        "--out",
        out,
        "--set",
        "steps=20",
    )
    assert status == 0, err
    original, adapted = load_model(held_out_run.run_dir / "best.pt"), load_model(out)
    assert adapted.classes == ("Cardiomegaly", "Effusion", "Bulla") and adapted.schema == "zero-shot"
    for key, value in adapted.state_dict.items():
        if key != "head.class_embeddings":
            assert torch.equal(value, original.ema_state_dict[key]), key
    queries = adapted.state_dict["head.class_embeddings"]
    text = original.ema_state_dict["head.class_embeddings"][[original.classes.index(c) for c in HELD_OUT[:2]]]
    assert not torch.equal(queries[:2], text)  # both example classes moved
    preds = tmp_path / "p.csv"
    status, _, err = cli("predict", out, "--shards", starter64, "--split", "test", "--out", preds)
    assert status == 0, err
    assert np.isfinite(np.loadtxt(preds, delimiter=",", skiprows=1, usecols=(2, 3, 4))).all()
    missing = tmp_path / "missing.csv"
    write_examples([Example("Effusion", 1, "", "no-such-image")], missing)
    status, _, err = cli(
        "zeroshot",
        "adapt",
        held_out_run.run_dir / "best.pt",
        "--shards",
        starter64,
        "--examples",
        missing,
        "--out",
        tmp_path / "x.pt",
    )
    assert status == 2 and "1 image id(s) are not in split 'train'" in err
