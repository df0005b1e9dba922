"""Socket types passed between COAT nodes, and the IMAGE / MASK adapters.

ComfyUI: IMAGE is float [B, H, W, C] in [0, 1], MASK is [B, H, W]. The library: images [B, 3, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import comfy.model_management as mm
from comfy_api.v0_0_2 import io

from coat_model import COAT, Alignment, COATConfig, COATInputError, Latents

CoatModel = io.Custom("COAT_MODEL")
CoatLatents = io.Custom("COAT_LATENTS")
CoatAlignment = io.Custom("COAT_ALIGNMENT")


@dataclass(frozen=True)
class LoadedModel:
    """COAT_MODEL: the model (eval mode, on its device) plus how to run it."""

    model: COAT
    backend: str  # resolved attention backend of the soft path: "xformers", "sdpa" or "chunked"
    name: str     # checkpoint file name, or a description for models made in the graph

    @property
    def config(self) -> COATConfig:
        return self.model.config


@dataclass(frozen=True)
class Encoded:
    """COAT_LATENTS: the library's Latents plus the IMAGE they came from (a reference, for previews)."""

    latents: Latents
    images: torch.Tensor  # [B, H, W, C] as given to COAT Encode
    config: COATConfig

    def check(self, handle: LoadedModel, what: str) -> None:
        if self.config != handle.config:
            raise COATInputError(f"the {what} latents were encoded by another COAT model than {handle.name}: "
                                 "encode with the same model you align and decode with")


@dataclass(frozen=True)
class Aligned:
    """COAT_ALIGNMENT: the library's Alignment plus the content and style it relates."""

    alignment: Alignment
    content: Encoded
    style: Encoded


def interrupt_point() -> None:
    """Stop here if the user pressed Cancel (raises ComfyUI's InterruptProcessingException)."""
    mm.throw_exception_if_processing_interrupted()


def image_to_bchw(image: torch.Tensor, name: str) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> [B, C, H, W] float32 (the library checks channels and values)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise COATInputError(f"{name} must be a ComfyUI IMAGE [B, H, W, C], got {shape}")
    return image.movedim(-1, 1).float()


def bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> ComfyUI IMAGE [B, H, W, C] float32 on the intermediate device."""
    return x.movedim(1, -1).float().to(mm.intermediate_device())


def object_mask(mask: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor | None:
    """A MASK [B, H, W] or [H, W] (1 = object) resized to the IMAGE's size, or None."""
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or 0 in mask.shape[1:]:
        raise COATInputError(f"mask must be a ComfyUI MASK [B, H, W], got shape {tuple(mask.shape)}")
    if mask.shape[0] not in (1, image.shape[0]):
        raise COATInputError(f"mask batch {mask.shape[0]} must be 1 or the image batch {image.shape[0]}")
    if not torch.isfinite(mask).all():
        raise COATInputError("mask contains NaN or Inf values")
    if mask.amax() <= 0:
        raise COATInputError("the object mask is empty (all 0): white (1) must mark the object. LoadImage's "
                             "mask is 1 where the PNG is transparent: invert it, or leave the mask unconnected")
    size = tuple(image.shape[1:3])
    if tuple(mask.shape[-2:]) != size:
        mask = F.interpolate(mask[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return mask.float().clamp(0, 1)
