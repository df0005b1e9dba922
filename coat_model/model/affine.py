"""The content-guided local affine fit of the per-pixel matches (docs/CORRESPONDENCE.md section 8).

Inside a part, two instances of a category differ by a smooth deformation: over a window, close to an affine map.
Where the part is flat (skin, clothing, the car's body) the descriptors cannot tell its pixels apart, and each
pixel's match strays a few pixels around the truth. A least-squares fit over many pixels of the same part averages
those errors away where a median only picks one of them. Each pixel's match becomes the value at that pixel of the
affine map

    flow(q) ~ b + A (q - p)

fitted by weighted least squares to the matches of the pixels q of its window, a neighbour weighing

    w = exp(-|lab_p - lab_q|^2 / (2 sigma^2))

by how alike the content looks at p and q (CIELAB, the same guide as the flow median's,
:mod:`coat_model.model.median`); neighbours outside the canvas or the content's object weigh 0 and p itself 1. One
reweighting step (iteratively reweighted least squares with Huber weights of scale ``HUBER_PX``) lets a minority of
stray matches fall out of the fit. The window is sampled every ``step`` pixels so that at most ``MAX_SIDE`` x
``MAX_SIDE`` neighbours vote whatever the radius: a regression needs samples of the window, not all of its pixels.
An affine map of the window is reproduced (the least-squares fit of an affine field is that field, to within the
slope terms' small ridge), also next to an edge, where a window's weights are lopsided: unlike the median over
positions, the fit moves a pixel's match only as far as its neighbours disagree with it. The ridge is there for a
part one pixel thin (no spread across it): its slope across the part is then 0. A wider window averages a large
part's matches better but fills a small part's with look-alike neighbours: with ``wide``, the fit at that radius is
blended in where enough of the pixel's window at ``radius`` looks like it (:data:`WIDE_SHARE`): inside large parts.

:func:`guided_affine` is the fast path (every window of a band of rows at once; the sums over a window are one
matrix product with the window's offsets); :func:`guided_affine_reference` is its test oracle, one pixel at a time.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ..colour import srgb_to_lab
from .median import band_windows

MAX_SIDE = 15          # neighbours per window side at most (the window is sampled every ``step`` pixels)
HUBER_PX = 2.0         # the reweighting's scale: a neighbour whose match is off the fit by more weighs less
RIDGE = 1e-3           # the slope terms' ridge, relative to the window's total weight
BAND_ELEMENTS = 1 << 21  # window values held at once (rows per band follow from it)
#: The wide fit (``wide`` > ``radius``) takes over as a pixel's window looks more like it: the mean likeness of its
#: window at ``radius`` (the pixel counted, the neighbours weighed as the fit weighs them) from the first value (the
#: narrow fit alone: a small part, such as an eye or a brow, 0.03-0.17 in the faces) to the second (the wide fit
#: alone: a large part, such as the skin, hair or clothing, 0.4-0.6 at the median).
WIDE_SHARE = (0.1, 0.3)


def window_step(radius: int) -> int:
    """The sampling step of a window of this radius: 1 up to radius 7, then as coarse as keeps ``MAX_SIDE`` a side."""
    return max(1, math.ceil(2 * radius / (MAX_SIDE - 1)))


def window_offsets(radius: int) -> torch.Tensor:
    """The sampled offsets of a window, [K, 2] as (dy, dx) in pixels, row-major; the centre included."""
    step = window_step(radius)
    half = radius // step
    side = torch.arange(-half, half + 1) * step
    dy, dx = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], 1)


def guided_affine(flow: torch.Tensor, guide: torch.Tensor, radius: int, sigma: float,
                  voters: torch.Tensor | None = None, wide: int = 0) -> torch.Tensor:
    """flow [B, C, H, W] (C = 2 for matches, in canvas units [-1, 1]), guide [B, 3, H, W] sRGB in [0, 1] (the
    content) -> each pixel's value of the affine map fitted to its window's flow, [B, C, H, W]; ``radius`` 0 returns
    ``flow``. ``voters`` [B or 1, 1, H, W] in [0, 1] scales each neighbour's weight (None: every pixel);
    neighbours outside the canvas weigh 0, a pixel 1 in its own window. ``wide`` > ``radius``: the fit over the
    window of that radius too, taken where a pixel's window at ``radius`` looks like it (:data:`WIDE_SHARE`)."""
    if radius <= 0:
        return flow
    b, _, h, w = flow.shape
    lab = srgb_to_lab(guide.float())
    voters = torch.ones_like(lab[:, :1]) if voters is None else voters.to(lab).expand(b, 1, h, w)
    narrow, share = _fit_windows(flow, lab, voters, radius, sigma)
    if wide <= radius:
        return narrow
    take = ((share - WIDE_SHARE[0]) / (WIDE_SHARE[1] - WIDE_SHARE[0])).clamp(0, 1)
    return narrow + take * (_fit_windows(flow, lab, voters, wide, sigma)[0] - narrow)


def _fit_windows(flow: torch.Tensor, lab: torch.Tensor, voters: torch.Tensor, radius: int,
                 sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`guided_affine`'s fit at one radius (``lab`` the guide in CIELAB, ``voters`` [B, 1, H, W]), and each
    window's mean weight before the reweighting (how much of it looks like the pixel), [B, 1, H, W]."""
    b, c, h, w = flow.shape
    step = window_step(radius)
    offsets = window_offsets(radius)                                    # [K, 2] (dy, dx) in pixels
    k, reach = len(offsets), int(offsets.max())                         # reach: the farthest sampled offset
    offsets = offsets.to(lab) / max(1, reach)                           # in [-1, 1]
    basis = torch.cat([torch.ones_like(offsets[:, :1]), offsets.flip(1)], 1)  # [K, 3]: 1, dx, dy
    moments = (basis[:, :, None] * basis[:, None, :]).reshape(k, 9)    # [K, 9]: the 3 x 3 normal matrix's terms
    huber = HUBER_PX * 2 / max(1, max(h, w) - 1)                       # pixels -> canvas units
    ridge = torch.tensor([0.0, RIDGE, RIDGE], dtype=lab.dtype, device=lab.device)
    pad = lambda x: F.pad(x, (reach, reach, reach, reach))  # noqa: E731  (0: outside the canvas)
    lab_p, voters_p, flow_p = pad(lab), pad(voters), pad(flow.float())
    rows = max(1, BAND_ELEMENTS // (k * w))
    out, share = torch.empty_like(flow), torch.empty_like(lab[:, :1])
    for i in range(b):
        for top in range(0, h, rows):
            n = min(rows, h - top)
            window = lambda x: band_windows(x, i, top, n, reach, step)  # noqa: E731  [1, C, n, W, K]
            centre = lab[i:i + 1, :, top:top + n, :, None]
            prior = torch.exp(-(window(lab_p) - centre).pow(2).sum(1) / (2 * sigma ** 2)) * window(voters_p)[:, 0]
            prior[..., k // 2] = 1.0                                        # the pixel itself
            share[i, 0, top:top + n] = prior[0].mean(-1)
            values = window(flow_p)[0]                                      # [C, n, W, K]
            coef = _fit(prior[0], values, basis, moments, ridge)            # [C, n, W, 3]
            residual = (values - coef @ basis.T).square().sum(0).sqrt()     # [n, W, K]
            weights = prior[0] / (residual / huber).clamp_min(1.0)          # the stray neighbours weigh less
            coef = _fit(weights, values, basis, moments, ridge)
            out[i, :, top:top + n] = coef[..., 0].to(flow.dtype)
    return out, share


def _fit(weights: torch.Tensor, values: torch.Tensor, basis: torch.Tensor, moments: torch.Tensor,
         ridge: torch.Tensor) -> torch.Tensor:
    """Weighted least squares of ``values`` [C, ..., K] on ``basis`` [K, 3] with ``weights`` [..., K]: the
    coefficients [C, ..., 3] (intercept, slope in x, slope in y). The normal matrix is symmetric 3 x 3 and shared by
    the components: inverted once, in closed form (its adjugate over its determinant)."""
    m = weights @ moments                                               # [..., 9]: the normal matrix, row-major
    total = m[..., 0]
    a, b, c = m[..., 0], m[..., 1], m[..., 2]
    d, e, f = m[..., 4] + ridge[1] * total, m[..., 5], m[..., 8] + ridge[2] * total  # a thin part: no slope across it
    cof = torch.stack([d * f - e * e, c * e - b * f, b * e - c * d,        # the adjugate (symmetric)
                       a * f - c * c, b * c - a * e, a * d - b * b], -1)
    det = a * cof[..., 0] + b * cof[..., 1] + c * cof[..., 2]
    inverse = cof[..., [0, 1, 2, 1, 3, 4, 2, 4, 5]].unflatten(-1, (3, 3)) / det[..., None, None]
    rhs = (weights * values) @ basis                                    # [C, ..., 3]
    return (inverse @ rhs[..., None])[..., 0]


def guided_affine_reference(flow: torch.Tensor, guide: torch.Tensor, radius: int, sigma: float,
                            voters: torch.Tensor | None = None, wide: int = 0) -> torch.Tensor:
    """:func:`guided_affine` one pixel and one component at a time, neighbours outside the canvas left out (they
    count in a window's size as the wide fit's share counts them)."""
    if radius <= 0:
        return flow
    narrow, share = _reference_fit(flow, guide, radius, sigma, voters)
    if wide <= radius:
        return narrow
    wide_fit = _reference_fit(flow, guide, wide, sigma, voters)[0]
    lo, hi = WIDE_SHARE
    out = narrow.clone()
    for i, y, x in itertools.product(range(flow.shape[0]), range(flow.shape[2]), range(flow.shape[3])):
        take = min(1.0, max(0.0, (share[i][y][x] - lo) / (hi - lo)))
        out[i, :, y, x] = narrow[i, :, y, x] + take * (wide_fit[i, :, y, x] - narrow[i, :, y, x])
    return out


def _reference_fit(flow, guide, radius, sigma, voters):
    """The oracle's fit at one radius and each window's share (nested lists [B][H][W])."""
    lab = srgb_to_lab(guide.float()).double()
    b, c, h, w = flow.shape
    voters = torch.ones(b, 1, h, w) if voters is None else voters.float().expand(b, 1, h, w)
    step = window_step(radius)
    reach = max(1, (radius // step) * step)
    huber = HUBER_PX * 2 / max(1, max(h, w) - 1)
    out = flow.clone()
    share = [[[0.0] * w for _ in range(h)] for _ in range(b)]
    for i in range(b):
        for y in range(h):
            for x in range(w):
                rows, prior = [], []
                for dy, dx in window_offsets(radius).tolist():
                    v, u = y + dy, x + dx
                    if not (0 <= v < h and 0 <= u < w):
                        continue
                    alike = torch.exp(-(lab[i, :, v, u] - lab[i, :, y, x]).pow(2).sum() / (2 * sigma ** 2))
                    rows.append((v, u, dx / reach, dy / reach))
                    prior.append(1.0 if (dy, dx) == (0, 0) else float(alike) * float(voters[i, 0, v, u]))
                design = torch.tensor([[1.0, ex, ey] for _, _, ex, ey in rows], dtype=torch.float64)
                target = torch.stack([flow[i, :, v, u] for v, u, _, _ in rows]).double()   # [K, C]
                weights = torch.tensor(prior, dtype=torch.float64)
                share[i][y][x] = float(weights.sum()) / len(window_offsets(radius))
                for reweigh in (True, False):  # the fit, then once more with the stray neighbours weighed down
                    normal = design.T @ (weights[:, None] * design)
                    normal = normal + torch.diag(torch.tensor([0.0, RIDGE, RIDGE], dtype=torch.float64)) * weights.sum()
                    coef = torch.linalg.solve(normal, design.T @ (weights[:, None] * target))  # [3, C]
                    if reweigh:
                        residual = (target - design @ coef).norm(dim=1)
                        weights = torch.tensor(prior, dtype=torch.float64) / (residual / huber).clamp_min(1.0)
                out[i, :, y, x] = coef[0].to(flow.dtype)
    return out, share
