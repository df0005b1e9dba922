"""Input checks with errors that say what to do, and the letterbox that maps any image size to the model's."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class COATInputError(ValueError):
    """Bad input to a COAT call; the message names the problem and the fix."""


def check_images(images, name: str = "images", values: bool = True) -> torch.Tensor:
    """Validate an image batch [B, 3, H, W] float in [0, 1]; returns it unchanged. ``values=False`` checks the
    shape and dtype only (the value scan reads the extremes on the host: a wait for the device)."""
    if not isinstance(images, torch.Tensor):
        raise COATInputError(f"{name} must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        raise COATInputError(f"{name} has shape {tuple(images.shape)}: add a batch axis, e.g. images[None]")
    if images.dim() != 4:
        raise COATInputError(f"{name} must have 4 dims [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise COATInputError(f"{name} is an empty batch: give at least one image")
    if images.shape[-2] == 0 or images.shape[-1] == 0:
        raise COATInputError(f"{name} has no pixels (size {images.shape[-2]}x{images.shape[-1]}): give at least 1x1")
    channels = images.shape[1]
    if channels != 3:
        hint = {1: "grayscale: repeat it to 3 channels", 4: "RGBA: drop or composite the alpha channel"}.get(
            channels, "channels must come second ([B, 3, H, W], not [B, H, W, 3])"
        )
        raise COATInputError(f"{name} must have 3 channels, got {channels} ({hint})")
    if not images.dtype.is_floating_point:
        raise COATInputError(f"{name} must be float in [0, 1], got {images.dtype}: divide uint8 images by 255")
    if not values:
        return images
    lo, hi = (v.item() for v in torch.aminmax(images))  # one pass, no copy: NaN and Inf show in the extremes
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise COATInputError(f"{name} contains NaN or Inf values; check the node or file that produced them")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise COATInputError(f"{name} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return images


def pair_batches(content: int, style: int) -> None:
    """B contents go with B styles pairwise or with one style broadcast; anything else is an error."""
    if style not in (1, content):
        raise COATInputError(
            f"batch sizes do not pair up: {content} content image(s) and {style} style image(s); "
            "give one style for all contents or exactly one style per content"
        )


@dataclass(frozen=True)
class Frame:
    """Where an input image of size (height, width) sits inside the square model canvas."""

    height: int
    width: int
    top: int
    left: int
    inner_height: int
    inner_width: int
    resolution: int

    @classmethod
    def fit(cls, height: int, width: int, resolution: int) -> "Frame":
        scale = resolution / max(height, width)
        ih, iw = max(1, round(height * scale)), max(1, round(width * scale))
        return cls(height, width, (resolution - ih) // 2, (resolution - iw) // 2, ih, iw, resolution)

    def to_canvas(self, images: torch.Tensor) -> torch.Tensor:
        """Resize (aspect kept) and pad by edge replication to [B, C, R, R]."""
        resolution = self.resolution
        x = _resize(images, (self.inner_height, self.inner_width))
        pad = (self.left, resolution - self.left - self.inner_width, self.top, resolution - self.top - self.inner_height)
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        return x

    def from_canvas(self, maps: torch.Tensor) -> torch.Tensor:
        """Crop the image area out of [B, C, R', R'] (any R', scaled) and resize it to (height, width)."""
        r = maps.shape[-1] / self.resolution
        top, left = round(self.top * r), round(self.left * r)
        ih, iw = max(1, round(self.inner_height * r)), max(1, round(self.inner_width * r))
        return _resize(maps[..., top : top + ih, left : left + iw], (self.height, self.width))

    def image_area(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """[1, 1, R, R]: 1 on the image's own pixels of the canvas, 0 on the padding around it."""
        area = torch.zeros(1, 1, self.resolution, self.resolution, device=device, dtype=dtype)
        area[..., self.top : self.top + self.inner_height, self.left : self.left + self.inner_width] = 1
        return area


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
