"""The hold-out never leaks into training, and held-out / unseen classes are scored from text alone."""

from __future__ import annotations

import pytest
import torch

from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.transforms import TransformConfig
from cxrlt.errors import InputError
from cxrlt.models.descriptions import class_texts, load_descriptions, packaged_descriptions
from cxrlt.models.saved import load_model
from tests.zeroshot.conftest import EPOCHS, HELD_OUT, STEPS

pytestmark = pytest.mark.timeout(600)


def test_held_out_labels_are_unknown_in_every_training_batch_and_in_validation(held_out_run):
    rec, classes = held_out_run.recorded, held_out_run.classes
    held = [classes.index(c) for c in HELD_OUT]
    seen = [i for i in range(len(classes)) if i not in held]
    assert len(rec.targets) == len(rec.raw_labels) == EPOCHS * STEPS  # one per micro-step, nothing skipped
    raw = torch.cat(rec.raw_labels)
    # The data did hold positives of the held-out findings: the loop hid them.
    assert (raw[:, held] == 1).sum() > 0
    for targets in rec.targets:
        assert torch.all(targets[:, held] == -1)
        assert torch.all(targets[:, seen] >= 0)  # the other classes keep their real labels
    assert len(rec.dev_labels) >= EPOCHS  # every epoch's validation
    for labels in rec.dev_labels:
        assert torch.all(labels[:, held] == -1) and torch.all(labels[:, seen] >= 0)


def _test_images(run, starter64) -> torch.Tensor:
    saved = load_model(run.run_dir / "best.pt")
    transform = TransformConfig(**{k: saved.transform[k] for k in ("size", "channels", "mean", "std")})
    reader = EvalReader(starter64, ReaderConfig(level="image", split="test", batch_size=16, transform=transform), 0, 1)
    return next(iter(make_loader(reader, 0)))["image"]


def test_unseen_names_are_scored_from_text_alone_without_retraining(held_out_run, starter64):
    saved = load_model(held_out_run.run_dir / "best.pt")
    images = _test_images(held_out_run, starter64)
    trained = saved.build()
    names = ("Bulla", "Cardiomegaly", "Scoliosis")  # two never-seen names, one held-out name
    task3 = load_descriptions("cxr-lt-2024-task3")
    with torch.no_grad():
        base = torch.sigmoid(trained(images))
        scored = torch.sigmoid(saved.build(classes=names, descriptions=task3)(images))
        reworded = {**task3, "Bulla": "a large air cyst in the lung apex"}
        rescored = torch.sigmoid(saved.build(classes=names, descriptions=reworded)(images))
    assert scored.shape == (len(images), 3) and torch.all((scored > 0) & (scored < 1))
    # A name the model has keeps its saved query: the same scores as the trained model's column.
    torch.testing.assert_close(scored[:, 1], base[:, saved.classes.index("Cardiomegaly")])
    # Unseen names depend on their text: a new description changes Bulla and nothing else.
    assert not torch.allclose(scored[:, 0], rescored[:, 0])
    torch.testing.assert_close(scored[:, 1:], rescored[:, 1:])
    # No retraining: every weight but the class-embedding buffer is the file's, bitwise.
    weights = saved.ema_state_dict
    state = saved.build(classes=names).state_dict()
    for key, value in state.items():
        if not key.endswith("head.class_embeddings"):
            assert torch.equal(value, weights[key]), key


def test_held_out_query_is_its_text_embedding_never_trained(held_out_run):
    """A held-out class's query row is exactly the text encoder's embedding of its name + description."""
    from cxrlt.models.factory import class_text_embeddings
    from cxrlt.models.text import TextEncoder

    saved = load_model(held_out_run.run_dir / "best.pt")
    rows = [saved.classes.index(c) for c in HELD_OUT]
    encoder = TextEncoder(saved.model_config.text_encoder)
    expected = class_text_embeddings(encoder, HELD_OUT, saved.model_config.class_prompt, load_descriptions("nih-14"))
    torch.testing.assert_close(saved.state_dict["head.class_embeddings"][rows], expected)


def test_packaged_descriptions_cover_their_schemas_and_files_are_checked(tmp_path):
    from cxrlt.labels import get_schema

    packaged = packaged_descriptions()
    for name in ("nih-14", "cxr-lt-2024-task3"):
        descriptions = load_descriptions(name)
        assert set(descriptions) == set(get_schema(name).classes)
        assert all(len(text.split()) >= 5 for text in descriptions.values())
        assert packaged[name].is_file()
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("class,description\nBulla,air space\nHilum,\n", encoding="utf-8")
    assert load_descriptions(csv_file) == {"Bulla": "air space", "Hilum": ""}
    assert class_texts(["Bulla", "Hilum"], "chest x-ray with {}", load_descriptions(csv_file)) == [
        "chest x-ray with Bulla: air space",
        "chest x-ray with Hilum",
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text("[descriptions]\nBulla = 3\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.toml.*'Bulla' must be a string"):
        load_descriptions(bad)
    csv_file.write_text("class,description\nBulla,a\nBulla,b\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"d.csv: line 3: class 'Bulla' described twice"):
        load_descriptions(csv_file)
    with pytest.raises(InputError, match="not a packaged name"):
        load_descriptions(tmp_path / "missing.toml")
