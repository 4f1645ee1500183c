"""The pretraining chain across label schemas: a model trained on NIH-14 shards starts a CXR-LT 2024
Task 1 member (backbone, and the head rows of the 14 classes both name), through `stage.init_head` and
through `cxrlt export-backbone`."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cxrlt.config import load_config
from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.writer import WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import CXR_LT_2024_TASK1, NIH_14
from cxrlt.models import BackboneConfig, HeadConfig, ModelConfig, build_model, create_backbone
from cxrlt.models.saved import load_model, save_model
from launch.main import main
from tests.cli import cxrlt_forked
from tests.trainers.conftest import CONFIG, train_args
from trainers.config import StageConfig, TrainConfig
from trainers.modelinit import build_member_model

pytestmark = pytest.mark.timeout(600)
# NIH spelling -> CXR-LT 2024 spelling of the 14 classes the two schemas share.
SHARED = {
    c: {"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Thickening"}.get(c, c) for c in NIH_14.classes
}


def _member(trained, init_head: str) -> TrainConfig:
    cfg = load_config(TrainConfig, CONFIG)
    return replace(cfg, stage=StageConfig(init_from=trained / "best.pt", init_head=init_head))


def _backbone(state, prefix="backbone.model."):
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def test_nih_model_starts_a_cxr_lt_member_with_its_backbone_and_shared_class_rows(trained):
    saved = load_model(trained / "best.pt")
    assert saved.schema == "nih-14" and saved.ema_state_dict is not None
    torch.manual_seed(0)
    model = build_member_model(_member(trained, "shared"), CXR_LT_2024_TASK1.classes)
    torch.manual_seed(0)
    fresh = build_member_model(_member(trained, "none"), CXR_LT_2024_TASK1.classes)
    trained_backbone = _backbone(saved.ema_state_dict)
    for started in (model, fresh):
        loaded = started.backbone.model.state_dict()
        assert loaded.keys() == trained_backbone.keys()
        assert all(torch.equal(loaded[k], trained_backbone[k]) for k in loaded)
    weight, bias = saved.ema_state_dict["head.fc.weight"], saved.ema_state_dict["head.fc.bias"]
    for nih, cxr_lt in SHARED.items():
        row, source = CXR_LT_2024_TASK1.index(cxr_lt), NIH_14.index(nih)
        assert torch.equal(model.head.fc.weight[row], weight[source]), cxr_lt
        assert torch.equal(model.head.fc.bias[row], bias[source]), cxr_lt
    others = [i for i, c in enumerate(CXR_LT_2024_TASK1.classes) if c not in SHARED.values()]
    assert len(others) == 26
    # classes NIH never had keep the fresh initialisation, the same as a head started from nothing
    assert torch.equal(model.head.fc.weight[others], fresh.head.fc.weight[others])
    assert not torch.equal(
        fresh.head.fc.weight[CXR_LT_2024_TASK1.index("Pleural Effusion")], weight[NIH_14.index("Effusion")]
    )


def test_whole_model_start_across_schemas_is_refused_with_the_way_out(trained):
    with pytest.raises(InputError, match=r"other classes.*stage.init_head = 'shared'"):
        build_member_model(_member(trained, "all"), CXR_LT_2024_TASK1.classes)
    cfg = _member(trained, "shared")
    other = replace(cfg, model=replace(cfg.model, backbone=BackboneConfig(name="resnet18")))
    with pytest.raises(InputError, match=r"its backbone is 'convnext_atto'.*model.backbone.name = 'convnext_atto'"):
        build_member_model(other, CXR_LT_2024_TASK1.classes)
    with pytest.raises(ValueError, match="init_head = 'shared' is for the image and student stages"):
        StageConfig(name="study", init_head="shared")


def _ml_decoder_file(tmp_path, classes, num_groups=100):
    cfg = ModelConfig(head=HeadConfig(num_groups=num_groups, decoder_dim=32, num_heads=2, ffn_dim=64))
    cfg = replace(cfg, backbone=BackboneConfig(name="convnext_atto", img_size=64))
    torch.manual_seed(3)
    model = build_model(cfg, classes)
    path = save_model(tmp_path / "nih.pt", model, cfg, classes, "nih-14", {"size": 64})
    return cfg, model, path


def test_ml_decoder_head_shares_decoder_and_per_class_queries(tmp_path):
    cfg, source, path = _ml_decoder_file(tmp_path, NIH_14.classes)
    member = replace(TrainConfig(), model=cfg, stage=StageConfig(init_from=path, init_head="shared"))
    model = build_member_model(member, CXR_LT_2024_TASK1.classes)
    head, trained_head = model.head, source.head
    assert torch.equal(head.embed.weight, trained_head.embed.weight)  # class-independent: copied whole
    row, source_row = CXR_LT_2024_TASK1.index("Pleural Thickening"), NIH_14.index("Pleural_Thickening")
    for name in ("queries", "group_weight", "group_bias"):
        assert torch.equal(getattr(head, name)[row], getattr(trained_head, name)[source_row]), name
    # 100 groups for 193 PadChest-like classes: a group decodes two classes and cannot be split by name
    many = [f"class {i}" for i in range(193)]
    wide = replace(member, model=replace(cfg, head=replace(cfg.head, num_groups=100)))
    with pytest.raises(InputError, match=r"cannot share head rows.*num_groups >= 193"):
        build_member_model(wide, many)


def test_export_backbone_gives_a_checkpoint_any_schema_loads(trained, tmp_path, capsys):
    out = tmp_path / "nih-convnext.pt"
    assert main(["export-backbone", str(trained / "best.pt"), "--out", str(out)]) == 0
    assert "convnext_atto backbone" in capsys.readouterr().out
    backbone = create_backbone(BackboneConfig(name="convnext_atto", img_size=64, checkpoint=out))
    expected = _backbone(load_model(trained / "best.pt").ema_state_dict)
    assert all(torch.equal(v, expected[k]) for k, v in backbone.model.state_dict().items())
    payload = torch.load(out, weights_only=True)
    assert payload["provenance"]["schema"] == "nih-14" and payload["provenance"]["ema"] is True


@pytest.fixture(scope="module")
def cxr_lt_shards(tmp_path_factory):
    """The starter under the CXR-LT 2024 Task 1 schema: NIH's 14 classes placed by name, 26 unknown."""
    out = tmp_path_factory.mktemp("cxr-lt-40")
    schema = CXR_LT_2024_TASK1
    build_shards(read_starter(schema), schema, out, BuildOptions(), WriterOptions(max_size=64, samples_per_shard=300))
    return out


def test_cxr_lt_member_trains_from_the_nih_model(trained, cxr_lt_shards, tmp_path):
    out = tmp_path / "cxr-lt"
    sets = ("schedule.epochs=1", "data.steps_per_epoch=2", f"stage.init_from={trained / 'best.pt'}")
    result = cxrlt_forked(*train_args(cxr_lt_shards, out, *sets, "stage.init_head=shared"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    member = load_model(out / "best.pt")
    assert member.schema == "cxr-lt-2024-task1" and len(member.classes) == 40
