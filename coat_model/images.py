"""Tensor <-> PIL conversions and image grids (PNG), shared by the trainer, the benchmarks and tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> RGB PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def from_pil(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> [3, H, W] float in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """[N, 3, H, W] -> one [3, rows*(H+pad)+pad, nrow*(W+pad)+pad] image on a white background."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    out = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, image in enumerate(images):
        r, col = divmod(i, nrow)
        out[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = image
    return out


def save_grid(images: torch.Tensor, path, nrow: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid(images.float().cpu().clamp(0, 1), nrow)).save(path)
