"""The conditional diffusion model: building it (from scratch or a local Stable Diffusion folder), its
training loss, guided DDIM sampling, and the synth-model file that `sample` loads.

`Diffusion` keeps what is trained (`trainable`: the UNet, plus the label tokens when trained from
scratch) apart from what is frozen (VAE, text encoder), so the optimizer, the EMA and the model file
cover exactly the trained part, and sampling can run on either the live weights or the EMA copy
(`modules` argument). Images enter as grayscale in [-1, 1] and leave as grayscale in [0, 1].

The model file holds {format, classes, schema, diffusion (config), state_dict, step, config_hash} as
plain containers and tensors (loads with weights_only=True); a fine-tuned Stable Diffusion model also
needs its `pretrained` folder for the frozen VAE and text encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# From the subpackages, not `diffusers`: under TYPE_CHECKING the top-level package resolves these
# names to its dummy placeholder classes (no nn.Module / scheduler methods), the subpackages to the real ones.
from diffusers.models import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from torch.nn import functional as F

from cxrlt.atomic import atomic_path
from cxrlt.config import from_dict, to_dict
from cxrlt.errors import InputError
from cxrlt.models.saved import read_weights_file
from synth.conditioning import LabelTokens, PromptEncoder
from synth.config import DiffusionConfig

FORMAT = "cxrlt-synth/1"
PRETRAINED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; plain fp32 elsewhere (CPU bf16 is slower and no more accurate)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class Diffusion:
    def __init__(
        self,
        config: DiffusionConfig,
        classes: Sequence[str],
        trainable: nn.ModuleDict,
        scheduler: DDPMScheduler,
        vae: AutoencoderKL | None = None,
        prompts: PromptEncoder | None = None,
    ) -> None:
        self.config = config
        self.classes = tuple(classes)
        self.trainable = trainable
        self.scheduler = scheduler
        self.vae = None if vae is None else vae.requires_grad_(False).eval()
        self.prompts = prompts
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> Diffusion:
        self.device = torch.device(device)
        for part in (self.trainable, self.vae, self.prompts):
            if part is not None:
                # diffusers wraps ModelMixin.to in functools.wraps, whose stub type does not bind `self`.
                part.to(self.device)  # type: ignore[arg-type]
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        unet = self.trainable["unet"]
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"trainable['unet'] is a {type(unet).__name__}, not a UNet2DConditionModel")
        return unet.config["in_channels"], unet.config["sample_size"], unet.config["sample_size"]

    def context(self, modules: nn.ModuleDict, labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        labels = labels.to(self.device)
        return self.prompts(labels, drop) if self.prompts is not None else modules["labels"](labels, drop)

    def to_latents(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Grayscale [-1, 1] (B, 1, H, W) -> what the UNet denoises (the pixels, or VAE latents)."""
        images = images.to(self.device)
        if self.vae is None:
            return images
        with torch.no_grad():
            posterior = self.vae.encode(images.expand(-1, 3, -1, -1)).latent_dist
            return posterior.sample(generator) * self.vae.config["scaling_factor"]

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoised latents -> grayscale (B, 1, H, W) float32 in [0, 1], on the CPU."""
        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae.config["scaling_factor"]).sample.mean(1, keepdim=True)
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()

    def loss(
        self,
        modules: nn.ModuleDict,
        images: torch.Tensor,
        labels: torch.Tensor,
        drop: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """DDPM loss on a batch: noise at uniform timesteps, predict the noise (or v), mean squared error.
        All randomness comes from `generator` (CPU) so a resumed run draws the same numbers."""
        latents = self.to_latents(images, generator)
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        steps = torch.randint(0, self.scheduler.config["num_train_timesteps"], (batch,), generator=generator).to(
            self.device
        )
        # diffusers annotates timesteps as the legacy torch.IntTensor; any integer tensor (here int64) is fine.
        noisy = self.scheduler.add_noise(latents, noise, steps)  # type: ignore[arg-type]
        if self.scheduler.config["prediction_type"] == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, steps)  # type: ignore[arg-type]
        else:
            target = noise
        with autocast(self.device):
            predicted = modules["unet"](noisy, steps, encoder_hidden_states=self.context(modules, labels, drop)).sample
        return F.mse_loss(predicted.float(), target.float())

    @torch.no_grad()
    def sample(
        self,
        modules: nn.ModuleDict,
        labels: torch.Tensor,
        guidance: float,
        steps: int,
        generators: list[torch.Generator],
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Guided DDIM sampling of one image per label row; image i depends only on generators[i]
        (its starting noise and, with eta > 0, its step noise), not on the rest of the batch."""
        ddim = DDIMScheduler.from_config(self.scheduler.config)
        ddim.set_timesteps(steps)
        batch = labels.shape[0]
        latents = randn_tensor((batch, *self.latent_shape), generator=generators, device=self.device)
        latents = latents * ddim.init_noise_sigma
        no = torch.zeros(batch, dtype=torch.bool)
        context = torch.cat([self.context(modules, labels, ~no), self.context(modules, labels, no)])
        for t in ddim.timesteps:
            model_input = ddim.scale_model_input(torch.cat([latents, latents]), t)
            with autocast(self.device):
                unconditioned, conditioned = modules["unet"](
                    model_input, t, encoder_hidden_states=context
                ).sample.chunk(2)
            guided = unconditioned.float() + guidance * (conditioned.float() - unconditioned.float())
            latents = ddim.step(guided, t, latents, eta=eta, generator=generators).prev_sample
        return self.to_images(latents)


def _scheduler(config: DiffusionConfig) -> DDPMScheduler:
    # clip_sample: pixel-space targets live in [-1, 1], so the x0 estimate may be clipped to it.
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def _from_scratch(config: DiffusionConfig, classes: Sequence[str]) -> Diffusion:
    u = config.unet
    levels = len(u.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=u.cross_attention_dim,
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=u.norm_num_groups,
    )
    trainable = nn.ModuleDict({"unet": unet, "labels": LabelTokens(len(classes), u.cross_attention_dim)})
    return Diffusion(config, classes, trainable, _scheduler(config))


def _from_folder(config: DiffusionConfig, classes: Sequence[str]) -> Diffusion:
    from transformers import CLIPTextModel, CLIPTokenizer

    if config.pretrained is None:
        raise ValueError("a Stable Diffusion model needs model.pretrained (a diffusers folder)")
    folder = Path(config.pretrained)
    missing = [part for part in PRETRAINED_PARTS if not (folder / part).is_dir()]
    if missing:
        raise InputError(
            f"model.pretrained {folder}: not a diffusers Stable Diffusion folder (no {', '.join(missing)}/)"
        )
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, low_cpu_mem_usage=False)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if config.image_size % scale:
        raise InputError(f"model.image_size {config.image_size} is not a multiple of the VAE's downscale {scale}")
    unet = UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", local_files_only=True, low_cpu_mem_usage=False
    )
    # The folder's UNet was trained at its own size; the latent size follows the requested image size.
    unet.register_to_config(sample_size=config.image_size // scale)
    prompts = PromptEncoder(
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True),
        classes,
        config.prompt,
        config.empty_prompt,
    )
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    return Diffusion(config, classes, nn.ModuleDict({"unet": unet}), scheduler, vae, prompts)


def build_diffusion(config: DiffusionConfig, classes: Sequence[str]) -> Diffusion:
    """The configured model for `classes` (in shard order); from-scratch weights follow torch's seed."""
    return _from_scratch(config, classes) if config.pretrained is None else _from_folder(config, classes)


@dataclass(frozen=True)
class SynthModel:
    """A loaded synth-model file: the model with its trained weights, and where they came from."""

    diffusion: Diffusion
    schema: str
    step: int
    config_hash: str | None
    path: Path


def save_synth_model(
    path: str | os.PathLike,
    diffusion: Diffusion,
    modules: nn.ModuleDict,
    schema: str,
    step: int,
    config_hash: str | None = None,
) -> Path:
    """Write `modules`' weights (the live or the EMA copy) with the model's description, atomically."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "classes": list(diffusion.classes),
        "schema": schema,
        "diffusion": to_dict(diffusion.config),
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in modules.state_dict().items()},
        "step": int(step),
        "config_hash": config_hash,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_synth_model(path: str | os.PathLike) -> SynthModel:
    path = Path(path)
    payload = read_weights_file(path, FORMAT, " (made by `cxrlt synth train`, e.g. RUN/model.pt)")
    config = from_dict(DiffusionConfig, payload["diffusion"], lambda key: f"{path} (diffusion)")
    diffusion = build_diffusion(config, payload["classes"])
    diffusion.trainable.load_state_dict(payload["state_dict"], strict=True)
    diffusion.trainable.eval()
    return SynthModel(diffusion, payload["schema"], payload["step"], payload.get("config_hash"), path)
