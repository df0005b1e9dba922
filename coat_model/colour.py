"""Colour spaces: sRGB <-> CIELAB (D65 white), for the bench's colour differences and the content-guided flow
median (:mod:`coat_model.model.median`), which weighs neighbours by how alike they look."""

from __future__ import annotations

import torch

__all__ = ["srgb_to_lab", "lab_to_srgb"]

_WHITE_D65 = (0.95047, 1.0, 1.08883)
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_DELTA = 6.0 / 29.0


def srgb_to_lab(rgb: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """sRGB in [0, 1] -> CIELAB (L in [0, 100]) along channel axis ``dim``.

    Hand-written: torchvision has no Lab conversion and kornia is not a dependency of the library;
    ``kornia.color.rgb_to_lab`` agrees within 0.01 Lab units (it rounds the CIE constants), checked in
    tests/test_metrics.py.
    """
    rgb = rgb.movedim(dim, 0).clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device)
    t = torch.tensordot(matrix / white[:, None], linear, dims=1)        # XYZ / white, channel first
    f = torch.where(t > _DELTA ** 3, t.clamp_min(1e-12) ** (1.0 / 3.0), t / (3 * _DELTA ** 2) + 4.0 / 29.0)
    lab = torch.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])
    return lab.movedim(0, dim)


def lab_to_srgb(lab: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """CIELAB -> sRGB along channel axis ``dim``, clipped to [0, 1]. The inverse of :func:`srgb_to_lab`;
    ``kornia.color.lab_to_rgb`` agrees within 1e-4 (tests/test_metrics.py)."""
    lab = lab.movedim(dim, -1)
    big_l, a, b = lab.unbind(-1)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], -1)
    t = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0))
    xyz = t * torch.tensor(_WHITE_D65, dtype=lab.dtype, device=lab.device)
    linear = (xyz @ torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=lab.dtype, device=lab.device)).T).clamp(0, 1)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return rgb.clamp(0.0, 1.0).movedim(-1, dim)
