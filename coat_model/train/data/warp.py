"""Random geometric warps with exact flow, and random colour remaps, for self-supervised "warp pairs".

A warp is defined by its *backward* map ``psi``: warped pixel ``q`` shows original position ``psi(q)``::

    psi(q) = M q + c + d(q),     M = R(-theta) / s,  c = -M t

i.e. an affine map (the original appears rotated by ``theta``, scaled by ``s`` and shifted by ``t``) plus a
smooth displacement ``d``: random offsets on a coarse ``grid x grid`` lattice interpolated bicubically
(``grid_sample(mode="bicubic")``). This smooth-displacement stand-in for a thin-plate spline is cheap, has
no linear solve, and is the very same function in the warp and in its inverse.

``warped = grid_sample(images, psi)`` and the flow of an original pixel ``p`` is ``psi^-1(p)``, found by the
fixed-point iteration ``q <- M^-1 (p - c - d(q))``, which contracts because ``|M^-1| * Lip(d) < 1`` for the
default ranges (offsets are bounded, uniform in ``[-tps_jitter, tps_jitter]``). All coordinates are in
``[-1, 1]`` (x, y), ``align_corners=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...model.coords import pixel_grid

__all__ = ["random_warp", "random_color_remap"]


def _generator(generator):
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


def _uniform(g, shape, lo: float, hi: float) -> torch.Tensor:
    """Uniform draws of ``shape`` (batch first); ``g`` is one generator, or a list with one per image (each
    image's draws then come from its own stream, whatever batch it is part of)."""
    if isinstance(g, (list, tuple)):
        per_image = tuple(shape[1:]) if isinstance(shape, tuple) else ()
        return lo + (hi - lo) * torch.stack([torch.rand(per_image, generator=gi) for gi in g])
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _identity_grid(b: int, h: int, w: int, device=None) -> torch.Tensor:
    """Pixel-centre coordinates [B, H, W, 2] (x, y) in [-1, 1]."""
    return pixel_grid(h, w, device).expand(b, h, w, 2)


def _displacement(coarse: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Smooth displacement [B, H, W, 2] at points [B, H, W, 2]: coarse offsets [B, 2, g, g], bicubic."""
    d = F.grid_sample(coarse, points, mode="bicubic", padding_mode="border", align_corners=True)
    return d.permute(0, 2, 3, 1)


def _affine(points: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """points [B, H, W, 2] -> matrix [B, 2, 2] @ points + offset [B, 2]."""
    return torch.einsum("bij,bhwj->bhwi", matrix, points) + offset[:, None, None]


def random_warp(
    images: torch.Tensor,               # [B, C, H, W]
    generator: torch.Generator | list[torch.Generator] | int | None = None,
    rotation: float = 20.0,             # max |rotation|, degrees
    scale: tuple[float, float] = (0.8, 1.2),   # range of the zoom factor
    translate: float = 0.1,             # max |shift| per axis, in [-1, 1] units (0.1 = 5% of the width)
    tps_jitter: float = 0.1,            # max |offset| of the smooth displacement lattice, [-1, 1] units
    grid: int = 4,                      # displacement lattice size
    padding_mode: str = "reflection",   # how the warped image is filled where it shows outside the original
    iterations: int = 30,               # fixed-point steps for the inverse
):
    """Warp each image by its own random affine + smooth displacement.

    Returns ``(warped [B, C, H, W], flow [B, 2, H, W], valid [B, 1, H, W] bool)``: for every pixel of the
    ORIGINAL image, ``flow`` is its (x, y) location in the warped image in [-1, 1] (``align_corners=True``),
    and ``valid`` marks the pixels that land inside the warped image. Sampling ``warped`` at ``flow``
    (``grid_sample(warped, flow.permute(0, 2, 3, 1))``) gives back the original where valid.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    g = _generator(generator)
    b, _, h, w = images.shape
    dev, dtype = images.device, images.dtype
    theta = torch.deg2rad(_uniform(g, b, -rotation, rotation))
    zoom = _uniform(g, b, *scale)
    shift = _uniform(g, (b, 2), -translate, translate)
    coarse = _uniform(g, (b, 2, grid, grid), -tps_jitter, tps_jitter)
    cos, sin = torch.cos(theta), torch.sin(theta)
    forward = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) * zoom[:, None, None]
    matrix = torch.linalg.inv(forward)                          # M = R(-theta) / s
    offset = -(matrix @ shift[..., None])[..., 0]               # c = -M t
    matrix, offset, coarse, forward = (t.to(dev, dtype) for t in (matrix, offset, coarse, forward))

    base = _identity_grid(b, h, w, dev).to(dtype)
    psi = _affine(base, matrix, offset) + _displacement(coarse, base)
    warped = F.grid_sample(images, psi, mode="bilinear", padding_mode=padding_mode, align_corners=True)

    target = base - offset[:, None, None]                      # solve M q + d(q) = p - c
    q = _affine(target, forward, torch.zeros_like(offset))
    for _ in range(iterations):
        q = _affine(target - _displacement(coarse, q), forward, torch.zeros_like(offset))
    flow = q.permute(0, 3, 1, 2).contiguous()
    valid = (flow.abs() <= 1.0).all(1, keepdim=True)
    return warped, flow, valid


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """Rotations [B, 3, 3] of RGB about the grey axis (Rodrigues' formula)."""
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    eye = torch.eye(3)
    a = angle[:, None, None]
    return eye + torch.sin(a) * k + (1.0 - torch.cos(a)) * (k @ k)


def random_color_remap(
    images: torch.Tensor,               # [B, 3, H, W] in [0, 1]
    generator: torch.Generator | list[torch.Generator] | int | None = None,
    saturation: tuple[float, float] = (0.6, 1.4),
    mixing: float = 0.25,               # max |off-identity entry| of the random channel-mixing matrix
    gain: tuple[float, float] = (0.7, 1.3),
    offset: float = 0.1,
    invert: float = 0.2,                # probability of also inverting the image (1 - x)
) -> torch.Tensor:
    """Random per-image colour transform that changes part colours but not structure.

    Each image gets one affine colour map ``x -> K x + o``: a hue rotation by a uniform angle, a saturation
    change, a random channel mix, a per-channel gain and offset, and sometimes an inversion. To stay in
    [0, 1] without clipping (which would merge colours), the result is rescaled per image by one more affine
    map only when it leaves [0, 1]. So equal colours stay equal and distinct colours stay distinct.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    g = _generator(generator)
    b = images.shape[0]
    sat = _uniform(g, b, *saturation)[:, None, None]
    grey = torch.full((3, 3), 1.0 / 3.0)
    k = (1.0 - sat) * grey + sat * torch.eye(3)
    k = _hue_rotation(_uniform(g, b, 0.0, 2 * math.pi)) @ k
    k = (torch.eye(3) + _uniform(g, (b, 3, 3), -mixing, mixing)) @ k
    k = _uniform(g, (b, 3, 1), *gain) * k
    o = _uniform(g, (b, 3), -offset, offset)
    flip = _uniform(g, b, 0.0, 1.0) < invert
    k = torch.where(flip[:, None, None], -k, k)
    o = torch.where(flip[:, None], 1.0 - o, o)
    k, o = k.to(images), o.to(images)
    out = torch.einsum("bij,bjhw->bihw", k, images) + o[:, :, None, None]
    lo = out.amin((1, 2, 3), keepdim=True).clamp(max=0.0)
    hi = out.amax((1, 2, 3), keepdim=True).clamp(min=1.0)
    return ((out - lo) / (hi - lo)).clamp(0.0, 1.0)    # the clamp only removes rounding error
