"""Random geometric warps with exact flow, and random appearance changes, for self-supervised "warp pairs".

Each augmentation comes in two halves: ``draw_*`` makes its random numbers on the CPU (a few per image, from one
stream per image) and ``apply_*`` turns them into pixels with tensor ops wherever the images are, without a host
synchronisation; ``random_*`` is both at once. Batch workers draw, the model's device applies
(:mod:`coat_model.train.pairs`).

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
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ...model.coords import pixel_grid

__all__ = [
    "random_warp", "random_color_remap", "random_palette", "random_blur", "WarpDraw", "draw_warp", "apply_warp",
    "draw_color_remap", "apply_color_remap", "draw_palette", "apply_palette", "draw_blur", "apply_blur",
]


BLUR_MAX_SIGMA = 0.02  # the largest random blur, as a fraction of the width


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


def _identity_lattice(b: int, n: int) -> torch.Tensor:
    """The nodes [B, n, n, 2] (x, y) of an n x n lattice spanning [-1, 1] (``align_corners=True``)."""
    t = torch.linspace(-1.0, 1.0, n)
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([gx, gy], -1).expand(b, n, n, 2)


def _affine(points: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """points [B, H, W, 2] -> matrix [B, 2, 2] @ points + offset [B, 2]."""
    return torch.einsum("bij,bhwj->bhwi", matrix, points) + offset[:, None, None]


class WarpDraw(NamedTuple):
    """The random draws of :func:`random_warp` for a batch (CPU tensors; :func:`apply_warp` moves them)."""

    matrix: torch.Tensor    # [B, 2, 2] M = R(-theta) / s
    offset: torch.Tensor    # [B, 2] c = -M t
    coarse: torch.Tensor    # [B, 2, g, g] displacement lattice
    forward: torch.Tensor   # [B, 2, 2] M^-1


def draw_warp(
    generator: torch.Generator | list[torch.Generator] | int | None,
    batch: int,
    rotation: float = 20.0,             # max |rotation|, degrees
    scale: tuple[float, float] = (0.8, 1.2),   # range of the zoom factor
    translate: float = 0.1,             # max |shift| per axis, in [-1, 1] units (0.1 = 5% of the width)
    tps_jitter: float = 0.1,            # max |offset| of the smooth displacement lattice, [-1, 1] units
    grid: int = 4,                      # displacement lattice size
    strength: float = 1.0,              # multiplies rotation, shift and jitter, and the zoom's exponent (0.8**s ...)
    local: float = 0.0,                 # > 0: max |offset| of a second, finer lattice (local, part-sized motion)
    local_grid: int = 8,                # that lattice's size
) -> WarpDraw:
    """The random part of a warp of ``batch`` images, drawn on the CPU (a few numbers per image). The same draws
    for every ``strength`` (a stronger warp of the same stream is the same warp, larger; ``strength`` does not
    scale ``local``).

    ``local`` adds independent offsets on a ``local_grid`` lattice, drawn after the others (so the global warp is
    the same draw with or without them): parts move against their neighbours, as between two instances of a
    category, where the coarse lattice bends the whole object. Both lattices become one ``local_grid`` lattice
    (the coarse one sampled bicubically at its nodes). The fixed-point inverse needs the field to stay a
    contraction: ``local`` up to about 0.3 / (local_grid - 1) keeps it one with the default ranges."""
    g = _generator(generator)
    theta = torch.deg2rad(_uniform(g, batch, -rotation * strength, rotation * strength))
    zoom = _uniform(g, batch, scale[0] ** strength, scale[1] ** strength)
    shift = _uniform(g, (batch, 2), -translate * strength, translate * strength)
    coarse = _uniform(g, (batch, 2, grid, grid), -tps_jitter * strength, tps_jitter * strength)
    if local > 0:
        fine = _uniform(g, (batch, 2, local_grid, local_grid), -local, local)
        nodes = _identity_lattice(batch, local_grid)
        coarse = _displacement(coarse, nodes).permute(0, 3, 1, 2) + fine
    cos, sin = torch.cos(theta), torch.sin(theta)
    forward = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) * zoom[:, None, None]
    matrix = torch.linalg.inv(forward)                          # M = R(-theta) / s
    offset = -(matrix @ shift[..., None])[..., 0]               # c = -M t
    return WarpDraw(matrix, offset, coarse, forward)


def apply_warp(
    images: torch.Tensor,               # [B, C, H, W], on any device
    draw: WarpDraw,
    padding_mode: str = "reflection",   # how the warped image is filled where it shows outside the original
    iterations: int = 30,               # fixed-point steps for the inverse
):
    """The warp of :func:`random_warp` for given draws, where ``images`` are (tensor ops only, no host sync)."""
    b, _, h, w = images.shape
    dev, dtype = images.device, images.dtype
    matrix, offset, coarse, forward = (t.to(dev, dtype, non_blocking=True) for t in draw)
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


def random_warp(
    images: torch.Tensor,               # [B, C, H, W]
    generator: torch.Generator | list[torch.Generator] | int | None = None,
    padding_mode: str = "reflection",
    iterations: int = 30,
    **ranges,
):
    """Warp each image by its own random affine + smooth displacement (:func:`draw_warp` with ``ranges``, then
    :func:`apply_warp` with ``padding_mode`` and ``iterations``).

    Returns ``(warped [B, C, H, W], flow [B, 2, H, W], valid [B, 1, H, W] bool)``: for every pixel of the
    ORIGINAL image, ``flow`` is its (x, y) location in the warped image in [-1, 1] (``align_corners=True``),
    and ``valid`` marks the pixels that land inside the warped image. Sampling ``warped`` at ``flow``
    (``grid_sample(warped, flow.permute(0, 2, 3, 1))``) gives back the original where valid.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    return apply_warp(images, draw_warp(generator, images.shape[0], **ranges), padding_mode, iterations)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """Rotations [B, 3, 3] of RGB about the grey axis (Rodrigues' formula)."""
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    eye = torch.eye(3)
    a = angle[:, None, None]
    return eye + torch.sin(a) * k + (1.0 - torch.cos(a)) * (k @ k)


def draw_color_remap(
    generator: torch.Generator | list[torch.Generator] | int | None,
    batch: int,
    saturation: tuple[float, float] = (0.6, 1.4),
    mixing: float = 0.25,               # max |off-identity entry| of the random channel-mixing matrix
    gain: tuple[float, float] = (0.7, 1.3),
    offset: float = 0.1,
    invert: float = 0.2,                # probability of also inverting the image (1 - x)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine colour maps ``x -> K x + o`` of :func:`random_color_remap`: ``(K [B, 3, 3], o [B, 3])`` (CPU)."""
    g = _generator(generator)
    sat = _uniform(g, batch, *saturation)[:, None, None]
    grey = torch.full((3, 3), 1.0 / 3.0)
    k = (1.0 - sat) * grey + sat * torch.eye(3)
    k = _hue_rotation(_uniform(g, batch, 0.0, 2 * math.pi)) @ k
    k = (torch.eye(3) + _uniform(g, (batch, 3, 3), -mixing, mixing)) @ k
    k = _uniform(g, (batch, 3, 1), *gain) * k
    o = _uniform(g, (batch, 3), -offset, offset)
    flip = _uniform(g, batch, 0.0, 1.0) < invert
    k = torch.where(flip[:, None, None], -k, k)
    o = torch.where(flip[:, None], 1.0 - o, o)
    return k, o


def apply_color_remap(images: torch.Tensor, k: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """``K x + o`` per image, rescaled into [0, 1] only where it leaves it (equal colours stay equal)."""
    k, o = k.to(images, non_blocking=True), o.to(images, non_blocking=True)
    out = torch.einsum("bij,bjhw->bihw", k, images) + o[:, :, None, None]
    lo = out.amin((1, 2, 3), keepdim=True).clamp(max=0.0)
    hi = out.amax((1, 2, 3), keepdim=True).clamp(min=1.0)
    return ((out - lo) / (hi - lo)).clamp(0.0, 1.0)    # the clamp only removes rounding error


def random_color_remap(
    images: torch.Tensor,               # [B, 3, H, W] in [0, 1]
    generator: torch.Generator | list[torch.Generator] | int | None = None,
    **ranges,
) -> torch.Tensor:
    """Random per-image colour transform that changes part colours but not structure.

    Each image gets one affine colour map ``x -> K x + o``: a hue rotation by a uniform angle, a saturation
    change, a random channel mix, a per-channel gain and offset, and sometimes an inversion (``ranges``: those
    of :func:`draw_color_remap`). To stay in [0, 1] without clipping (which would merge colours), the result is
    rescaled per image by one more affine map only when it leaves [0, 1]. So equal colours stay equal and
    distinct colours stay distinct.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    return apply_color_remap(images, *draw_color_remap(generator, images.shape[0], **ranges))


def draw_palette(generator, batch: int, lattice: int = 3) -> torch.Tensor:
    """The colour lattices of :func:`random_palette`: [B, 3, lattice, lattice, lattice] uniform in [0, 1] (CPU)."""
    return _uniform(_generator(generator), (batch, 3, lattice, lattice, lattice), 0.0, 1.0)


def apply_palette(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each pixel's colour looked up trilinearly in its image's lattice, then stretched to fill [0, 1]."""
    b, _, h, w = images.shape
    table = table.to(images, non_blocking=True)  # [B, 3, D=blue, H=green, W=red]
    where = (images.clamp(0, 1) * 2 - 1).permute(0, 2, 3, 1).reshape(b, 1, h, w, 3)  # (x, y, z) = (r, g, b)
    out = F.grid_sample(table, where, mode="bilinear", padding_mode="border", align_corners=True).view(b, 3, h, w)
    lo, hi = out.amin((1, 2, 3), keepdim=True), out.amax((1, 2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp(min=1e-6)  # interpolating random colours flattens contrast: stretch it back


def random_palette(
    images: torch.Tensor,               # [B, 3, H, W] in [0, 1]
    generator: torch.Generator | list[torch.Generator] | int | None = None,
    lattice: int = 3,                   # nodes per axis of the colour lattice
) -> torch.Tensor:
    """Random per-image recolouring by a coarse colour lookup table: every node of a ``lattice^3`` grid over the
    RGB cube gets a uniform random colour, and each pixel takes the trilinear interpolation of its colour's cell.

    Unlike :func:`random_color_remap` (one affine map for the whole image, which keeps every colour relation), the
    colours of distant regions of the cube change independently, as the parts of two different instances of a
    category do: the matching descriptors cannot rely on how one part's colour relates to another's. Nearby
    colours stay nearby (the map is continuous), so shading and edges survive; the result is stretched to fill
    [0, 1]. Nothing here knows the category.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    return apply_palette(images, draw_palette(generator, images.shape[0], lattice))


def draw_blur(generator, batch: int, width: int, max_sigma: float = BLUR_MAX_SIGMA) -> torch.Tensor:
    """The Gaussian sigmas of :func:`random_blur` in pixels: [B] uniform in [0, max_sigma * width] (CPU)."""
    return _uniform(_generator(generator), batch, 0.0, max_sigma * width)


def apply_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float = BLUR_MAX_SIGMA) -> torch.Tensor:
    """Each image blurred by its own Gaussian (separable, reflection padding); the kernel's radius follows from
    ``max_sigma`` (a fraction of the width), never from the drawn sigmas, so nothing waits for the device."""
    b, c, h, w = images.shape
    sigma = sigma.to(images, non_blocking=True)
    radius = max(1, math.ceil(3 * max_sigma * w))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K]
    flat = images.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return flat.view(b, c, h, w)


def random_blur(
    images: torch.Tensor,               # [B, C, H, W]
    generator: torch.Generator | list[torch.Generator] | int | None = None,
    max_sigma: float = BLUR_MAX_SIGMA,  # largest Gaussian sigma, as a fraction of the width
) -> torch.Tensor:
    """Each image blurred by a Gaussian of its own uniform random sigma in ``[0, max_sigma * W]`` pixels (separable,
    reflection padding; sigma 0 leaves the image as it is): fine texture stops being a cue for matching, so the
    descriptors have to rely on shapes and parts, which differ less between instances than textures do."""
    return apply_blur(images, draw_blur(generator, images.shape[0], images.shape[-1], max_sigma), max_sigma)
