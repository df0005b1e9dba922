"""Socket types passed between COAT nodes, and the IMAGE / MASK adapters.

ComfyUI: IMAGE is float [B, H, W, C] in [0, 1], MASK is [B, H, W]. The library: images [B, 3, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import comfy.model_management as mm
from comfy.model_patcher import ModelPatcher
from comfy_api.v0_0_2 import io

from coat_model import COAT, Alignment, COATConfig, COATInputError, Latents

CoatModel = io.Custom("COAT_MODEL")
CoatLatents = io.Custom("COAT_LATENTS")
CoatAlignment = io.Custom("COAT_ALIGNMENT")


class COATModule(torch.nn.Module):
    """The COAT network as ComfyUI's model management sees it.

    ``ModelPatcher`` writes bookkeeping attributes (``device``, ``model_loaded_weight_memory``, ...) onto the module
    it manages; ``COAT.device`` is a read-only property, so the patcher manages this thin holder instead."""

    def __init__(self, coat: COAT):
        super().__init__()
        self.coat = coat

    def get_dtype(self) -> torch.dtype:
        return next(self.coat.parameters()).dtype


class COATPatcher(ModelPatcher):
    """A ``ModelPatcher`` for COAT models: registered with ``comfy.model_management`` like ComfyUI's own models,
    so "Unload Models", ``POST /free`` and the VRAM modes (``--lowvram``, ``--novram``, ``--highvram``,
    ``--disable-smart-memory``) move it between its load and offload devices.

    COAT's layers are plain torch modules (no ``comfy.ops`` weight casting), so they cannot run with part of their
    weights left on the offload device: every load is a whole load (the models are small: 1-100 MB)."""

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        if extra_memory >= 0:
            extra_memory = max(extra_memory, self.model_size() + 1)
        return super().partially_load(device_to, extra_memory, force_patch_weights=force_patch_weights)


def inference_memory(config: COATConfig, batch: int) -> int:
    """A rough bound (bytes) of what one Encode/Align/Decode pass needs beside the weights: ComfyUI frees this
    much on the device before loading the model."""
    return int(max(1, batch) * config.resolution ** 2 * 4 * 256)


@dataclass(frozen=True)
class LoadedModel:
    """COAT_MODEL: the model (eval mode) plus how to run it, managed by ComfyUI's model management.

    The weights rest on ``offload_device`` (the CPU, or the GPU with ``--highvram``) and move to ``load_device``
    when a node calls :meth:`load`; ComfyUI moves them back when it needs the memory or is asked to unload."""

    model: COAT
    backend: str  # resolved attention backend of the soft path: "xformers", "sdpa" or "chunked"
    name: str     # checkpoint file name, or a description for models made in the graph
    load_device: torch.device | None = None     # default: ComfyUI's torch device
    offload_device: torch.device | None = None  # default: where ComfyUI offloads diffusion models
    patcher: COATPatcher = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        load_device = self.load_device or mm.get_torch_device()
        offload_device = self.offload_device or (torch.device("cpu") if load_device.type == "cpu"
                                                 else mm.unet_offload_device())
        object.__setattr__(self, "load_device", load_device)
        object.__setattr__(self, "offload_device", offload_device)
        module = COATModule(self.model)
        patcher = COATPatcher(module, load_device, offload_device)
        patcher.coat_name = self.name
        object.__setattr__(self, "patcher", patcher)
        module.device = self.model.device   # where the weights are now (the patcher assumes the offload device)

    @property
    def config(self) -> COATConfig:
        return self.model.config

    def load(self, batch: int = 1) -> COAT:
        """Load the weights on ``load_device`` through ``comfy.model_management`` (freeing memory for them and for
        a pass over ``batch`` images first, by offloading other models) and return the model."""
        mm.load_models_gpu([self.patcher], memory_required=inference_memory(self.config, batch),
                           force_full_load=True)
        return self.model

    @property
    def is_loaded(self) -> bool:
        """Whether ComfyUI's model management currently holds this model loaded."""
        return any(m.model is self.patcher for m in mm.current_loaded_models)


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
