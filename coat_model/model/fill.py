"""Values for content cells without a confident match (docs/METHOD.md "Alignment").

- ``propagate``: normalised convolution of the confident values, W = G*(M W) / G*M, at sigma, 2 sigma, 4 sigma
  cells; cells still uncovered take the global style mean;
- ``global``: the mean of the style cells hit by confident matches (the global-code fallback);
- ``average``: the model's average latent;
- ``content``: the content's own latent;
- ``none``: keep the (unconfident) matched values: the "no confidence filtering" ablation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import FILL_MODES

SIGMA = 2.0  # propagate's first Gaussian, in cells of the map it fills


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding; [B, C, h, w].

    Each pass is one matrix product with a banded [n, n] matrix (what a zero-padded 1-D convolution is): BLAS runs
    it several times faster than a depthwise convolution with long kernels. :func:`gaussian_blur_reference` (the
    depthwise convolutions) is its test oracle. Hand-written: torchvision's ``gaussian_blur`` pads by reflection,
    and kornia is not a dependency of the library; ``kornia.filters.gaussian_blur2d`` with ``border_type="constant"``
    and the same 2 ceil(3 sigma) + 1 taps gives the same values within 1e-6, checked in tests/test_losses.py.
    """
    k, radius = _gaussian_taps(sigma, x.device, x.dtype)
    h, w = x.shape[-2:]
    x = x @ _band(k, radius, w)
    return _band(k, radius, h).transpose(0, 1) @ x


def gaussian_blur_reference(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`gaussian_blur` as two depthwise convolutions."""
    k, radius = _gaussian_taps(sigma, x.device, x.dtype)
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def _gaussian_taps(sigma: float, device, dtype) -> tuple[torch.Tensor, int]:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum(), radius


def _band(k: torch.Tensor, radius: int, n: int) -> torch.Tensor:
    """[n, n] matrix M with M[i, j] = k[i - j + radius] (0 outside the kernel): ``x @ M`` convolves the last axis
    of x with k, zero padded."""
    i = torch.arange(n, device=k.device)
    offset = i[:, None] - i[None, :] + radius
    inside = (offset >= 0) & (offset <= 2 * radius)
    return torch.where(inside, k[offset.clamp(0, 2 * radius)], k.new_zeros(()))


def global_mean(style_maps: torch.Tensor, hits: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``style_maps`` [B, C, h, w] over the cells marked in ``hits`` [B, 1, h, w] (all cells where none)."""
    if hits is None:
        return style_maps.mean(dim=(2, 3), keepdim=True)
    hits = hits.to(style_maps.dtype)
    total = hits.sum(dim=(2, 3), keepdim=True)
    masked = (style_maps * hits).sum(dim=(2, 3), keepdim=True) / total.clamp_min(1.0)
    return torch.where(total > 0, masked, style_maps.mean(dim=(2, 3), keepdim=True))


def propagate(values: torch.Tensor, mask: torch.Tensor, fallback: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """Fill values [B, C, h, w] where ``mask`` [B, 1, h, w] is 0 by normalised convolution at growing sigma."""
    m = mask.to(values.dtype)
    filled = torch.zeros_like(values)
    done = torch.zeros_like(m)
    for s in (sigma, 2 * sigma, 4 * sigma):
        den = gaussian_blur(m, s)
        num = gaussian_blur(values * m, s)
        ok = (den > 1e-3).to(values.dtype) * (1 - done)
        filled = filled + ok * num / den.clamp_min(1e-3)
        done = done + ok
    return filled + (1 - done) * fallback


def fill_unconfident(
    matched: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str,
    style_maps: torch.Tensor,
    style_hits: torch.Tensor | None,
    content_maps: torch.Tensor,
    average: torch.Tensor,
    sigma: float = SIGMA,
) -> torch.Tensor:
    """``mask * matched + (1 - mask) * fill`` for one latent map.

    Args:
        matched: style values gathered at the matches [B, C, h, w]; mask: [B, 1, h, w] (bool or float weight).
        style_maps: the style's own map [B, C, hs, ws]; style_hits: style cells hit by confident matches.
        content_maps: the content's map [B, C, h, w]; average: the average latent [C].
    """
    if mode not in FILL_MODES:
        raise ValueError(f"fill mode must be one of {FILL_MODES}, got {mode!r}")
    if mode == "none":
        return matched
    m = mask.to(matched.dtype)
    if mode == "propagate":
        fill = propagate(matched, m, global_mean(style_maps, style_hits), sigma)
    elif mode == "global":
        fill = global_mean(style_maps, style_hits).expand_as(matched)
    elif mode == "average":
        fill = average.view(1, -1, 1, 1).to(matched).expand_as(matched)
    else:
        fill = content_maps
    return m * matched + (1 - m) * fill
