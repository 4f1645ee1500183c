"""Fine-tuning a local Stable Diffusion folder: a tiny random one (UNet, VAE, CLIP text encoder and a
character-level CLIP tokenizer, built offline from configs) stands in for RoentGen's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from cxrlt.errors import InputError
from synth.conditioning import PromptEncoder, label_prompt
from synth.model import load_synth_model
from synth.train import train


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    chars = list(bytes_to_unicode().values())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate([*chars, *(c + "</w>" for c in chars), *specials])}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=24).save_pretrained(root / "tokenizer")
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=24,
        bos_token_id=vocab[specials[0]],
        eos_token_id=vocab[specials[1]],
        pad_token_id=vocab[specials[1]],
    )
    CLIPTextModel(text).save_pretrained(root / "text_encoder")
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
    ).save_pretrained(root / "vae")
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        norm_num_groups=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
    ).save_pretrained(root / "unet")
    # RoentGen / SD 2 style: scaled-linear betas, v-prediction.
    DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="v_prediction",
    ).save_pretrained(root / "scheduler")
    return root


def test_prompts_name_the_positive_findings() -> None:
    classes = ["Effusion", "Pleural_Thickening", "Hernia"]
    assert label_prompt([1, 1, 0], classes, "a chest x-ray showing {}", "none") == (
        "a chest x-ray showing Effusion, Pleural Thickening"
    )
    assert label_prompt([0, -1, 0], classes, "x {}", "a normal chest x-ray") == "a normal chest x-ray"


def test_fine_tunes_the_folder_unet_with_label_prompts(make_config, tiny_sd: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, f"model.pretrained={tiny_sd}", "model.image_size=16", "train.steps=2")
    assert train(cfg) == 0
    model = load_synth_model(cfg.model_file)
    diffusion = model.diffusion
    assert isinstance(diffusion.prompts, PromptEncoder) and list(diffusion.trainable) == ["unet"]
    assert diffusion.latent_shape == (4, 8, 8)
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").state_dict()
    tuned = diffusion.trainable["unet"].state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)  # trained
    frozen = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder").state_dict()
    assert all(torch.equal(v, diffusion.prompts.text_encoder.state_dict()[k]) for k, v in frozen.items())
    labels = torch.tensor([[1.0 if c == "Hernia" else 0.0 for c in diffusion.classes]] * 2)
    generators = [torch.Generator().manual_seed(s) for s in (0, 0)]
    images = diffusion.sample(diffusion.trainable, labels, guidance=2.0, steps=2, generators=generators)
    assert images.shape == (2, 1, 16, 16) and 0.0 <= float(images.min()) <= float(images.max()) <= 1.0
    assert np.array_equal(images[0].numpy(), images[1].numpy())


def test_a_folder_without_the_stable_diffusion_parts_is_an_input_error(make_config, tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(InputError, match="no vae, text_encoder, tokenizer, scheduler"):
        train(make_config(tmp_path / "run", f"model.pretrained={tmp_path}"))
