"""Local foundation-model weights in the layouts they ship in: timm hub folders (safetensors or .bin),
DINOv2's torch-hub file, transformers DINOv2 folders, SigLIP with its attention pool; position embeddings
resampled to the training size; unusable folders explained."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from cxrlt.errors import InputError
from cxrlt.models import BackboneConfig, create_backbone

DINO = "vit_small_patch14_dinov2"


def _rgb_dinov2(img_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(DINO, pretrained=False, num_classes=0, img_size=img_size).eval()
    with torch.no_grad():  # layer scale starts at 1e-5 in timm; make it matter to the comparison
        for block in model.blocks:
            block.ls1.gamma.uniform_(0.5, 1.5)
    return model


def _write_timm_folder(folder, model: torch.nn.Module, weights_file: str) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": DINO, "num_classes": 0}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights_file.endswith(".safetensors"):
        save_file(state, str(folder / weights_file))
    else:
        torch.save(state, folder / weights_file)


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_timm_hub_folder_loads_with_position_embeddings_resampled_to_the_training_size(tmp_path, weights_file):
    source = _rgb_dinov2(img_size=98)  # a 7x7 patch grid, as a 518-px release has 37x37
    _write_timm_folder(tmp_path / "dinov2", source, weights_file)
    grey = create_backbone(BackboneConfig(name=DINO, img_size=56, checkpoint=tmp_path / "dinov2")).eval()
    assert grey.model.pos_embed.shape == (1, 1 + 4 * 4, 384)
    assert torch.equal(grey.model.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    assert torch.equal(grey.model.blocks[0].ls1.gamma, source.blocks[0].ls1.gamma)
    assert torch.equal(grey.model.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(1, keepdim=True))
    # at the source's own size nothing is resampled: the grey model is the RGB model on a repeated grey image
    same = create_backbone(BackboneConfig(name=DINO, img_size=98, checkpoint=tmp_path / "dinov2")).eval()
    image = torch.randn(1, 1, 98, 98)
    with torch.no_grad():
        expected = source.forward_features(image.expand(-1, 3, -1, -1))[:, 1:]
        torch.testing.assert_close(same(image).flatten(2).transpose(1, 2), expected, atol=1e-4, rtol=1e-4)


def test_dinov2_torch_hub_file_with_mask_token_loads(tmp_path):
    source = _rgb_dinov2(img_size=56)
    release = {**source.state_dict(), "mask_token": torch.zeros(1, 384)}  # facebookresearch's layout
    torch.save(release, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = create_backbone(
        BackboneConfig(name=DINO, img_size=56, in_chans=3, checkpoint=tmp_path / "dinov2_vits14_pretrain.pth")
    )
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_transformers_dinov2_folder_gives_the_transformers_model_features(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=56
    )
    reference = Dinov2Model(config).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "lambda1" in name:
                parameter.uniform_(0.5, 1.5)
    reference.save_pretrained(tmp_path / "rad-dino-like")
    backbone = create_backbone(
        BackboneConfig(name=DINO, img_size=56, in_chans=3, checkpoint=tmp_path / "rad-dino-like")
    ).eval()
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = reference(pixel_values=images).last_hidden_state[:, 1:]
        torch.testing.assert_close(backbone(images).flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=1e-5)


def test_siglip_attention_pool_is_left_out_and_the_tower_loads(tmp_path):
    torch.manual_seed(2)
    name = "vit_base_patch16_siglip_224"
    released = timm.create_model(name, pretrained=False, img_size=32).eval()  # with its attention-pool head
    assert any(k.startswith("attn_pool.") for k in released.state_dict())
    save_file({k: v.contiguous() for k, v in released.state_dict().items()}, str(tmp_path / "siglip.safetensors"))
    backbone = create_backbone(
        BackboneConfig(name=name, img_size=32, in_chans=3, checkpoint=tmp_path / "siglip.safetensors")
    ).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = released.forward_features(images)  # no class token: every token is a patch
        torch.testing.assert_close(backbone(images).flatten(2).transpose(1, 2), expected)


def test_unusable_folders_and_files_are_explained(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: a model folder needs one of model.safetensors, pytorch_model.bin"):
        create_backbone(BackboneConfig(name="convnext_atto", checkpoint=empty))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    torch.save({"x": torch.zeros(1)}, other / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"bert/config.json: a transformers 'bert' model"):
        create_backbone(BackboneConfig(name="convnext_atto", checkpoint=other))
    (tmp_path / "broken.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(InputError, match=r"broken.safetensors: cannot be read as a weights file"):
        create_backbone(BackboneConfig(name="convnext_atto", checkpoint=tmp_path / "broken.safetensors"))


def test_folder_of_another_architecture_names_it_in_the_error(tmp_path):
    folder = tmp_path / "convnext"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "convnext_atto"}))
    save_file(timm.create_model("convnext_atto", pretrained=False).state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(InputError, match=r"convnext \(its config.json names architecture 'convnext_atto'\) does not"):
        create_backbone(BackboneConfig(name="convnextv2_atto", checkpoint=folder))
