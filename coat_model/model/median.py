"""The content-guided weighted median of the per-pixel matches (docs/CORRESPONDENCE.md section 7).

Structure comes from the content: where the content's colours change, a part ends, and the matches may jump;
inside a part they should agree. Each pixel's flow becomes the weighted median, per component, of the flows in its
(2r+1)^2 window, a neighbour q of p weighing

    w = exp(-|lab_p - lab_q|^2 / (2 sigma^2))

by how alike the content looks at p and q (CIELAB, :mod:`coat_model.colour`); neighbours outside the image (the
canvas, its letterbox padding) or outside the content's object weigh 0, and p itself 1. The median keeps the flow a
warp (the style's textures stay sharp, nothing is averaged), moves its edges onto the content's edges, and gives a
pixel whose match went astray the match of most of its part. Given matched positions (as inference gives it), a
pixel near a part's edge also takes the match of a neighbour further inside its part, so colours are read from the
part's inside (what lifts PAA; docs/CORRESPONDENCE.md section 7); given displacements, an identity stays the
identity. It is the non-local term of "Secrets of optical flow estimation" (Sun, Roth and Black, CVPR 2010), the
joint weighted median of Zhang et al. ("100+ times faster weighted median filter", CVPR 2014) computed directly by
sorting each window.

:func:`guided_median` is the fast path (every window of a band of rows at once, bands that bound memory);
:func:`guided_median_reference` is its test oracle, one pixel at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..colour import srgb_to_lab

BAND_ELEMENTS = 1 << 22  # window values held at once per flow component (rows per band follow from it)


def guided_median(flow: torch.Tensor, guide: torch.Tensor, radius: int, sigma: float,
                  voters: torch.Tensor | None = None) -> torch.Tensor:
    """flow [B, C, H, W] (any values; C = 2 for matches), guide [B, 3, H, W] sRGB in [0, 1] (the content) -> the
    flow's weighted median in each (2 ``radius`` + 1)^2 window, [B, C, H, W]; ``radius`` 0 returns ``flow``.

    ``voters`` [B or 1, 1, H, W] in [0, 1] scales each neighbour's weight (the image's own pixels of a letterboxed
    canvas, times the content's object mask; None: every pixel), and neighbours outside the canvas weigh 0; a pixel
    always weighs 1 in its own window. The median is the lower one: the smallest value whose cumulative weight
    reaches half the window's. Windows are laid out last ([..., K]) so that the sort runs along contiguous memory,
    one image and one band of rows at a time (at most ``BAND_ELEMENTS`` window values per component)."""
    if radius <= 0:
        return flow
    b, _, h, w = flow.shape
    k = 2 * radius + 1
    lab = srgb_to_lab(guide.float())
    voters = torch.ones_like(lab[:, :1]) if voters is None else voters.to(lab).expand(b, 1, h, w)
    pad = lambda x: F.pad(x, (radius, radius, radius, radius))      # noqa: E731  (0: outside the canvas)
    lab_p, voters_p, flow_p = pad(lab), pad(voters), pad(flow)
    rows = max(1, BAND_ELEMENTS // (k * k * w))
    out = torch.empty_like(flow)
    for i in range(b):
        for top in range(0, h, rows):
            n = min(rows, h - top)
            window = lambda x: band_windows(x, i, top, n, radius)  # noqa: E731
            centre = lab[i:i + 1, :, top:top + n, :, None]                           # [1, 3, n, W, 1]
            alike = torch.exp(-(window(lab_p) - centre).pow(2).sum(1) / (2 * sigma ** 2))
            weights = alike * window(voters_p)[:, 0]                                 # [1, n, W, K]
            weights[..., k * k // 2] = 1.0                                            # the pixel itself
            values, order = window(flow_p).sort(dim=-1)                             # [1, C, n, W, K]
            cumulative = weights[:, None].expand_as(values).gather(-1, order).cumsum(-1)
            below = (cumulative < cumulative[..., -1:] / 2).sum(-1, keepdim=True)    # the first reaching half
            out[i:i + 1, :, top:top + n] = values.gather(-1, below.clamp_max(k * k - 1)).squeeze(-1)
    return out


def band_windows(padded: torch.Tensor, image: int, top: int, rows: int, reach: int, step: int = 1) -> torch.Tensor:
    """The windows of ``rows`` rows from ``top`` of one ``image`` of a canvas padded by ``reach`` on every side
    ([B, C, H + 2 reach, W + 2 reach]): [1, C, rows, W, K], each pixel's window laid out last, row-major, every
    ``step``-th offset from -``reach`` to ``reach`` (K = (2 reach / step + 1)^2). Shared with the local affine fit
    (:mod:`coat_model.model.affine`)."""
    side = 2 * reach + 1
    span = padded[image:image + 1, :, top:top + rows + 2 * reach].unfold(2, side, 1).unfold(3, side, 1)
    span = span[..., ::step, ::step]
    return span.reshape(1, padded.shape[1], rows, padded.shape[-1] - 2 * reach, span.shape[-2] * span.shape[-1])


def guided_median_reference(flow: torch.Tensor, guide: torch.Tensor, radius: int, sigma: float,
                            voters: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`guided_median` one pixel and one component at a time, neighbours outside the canvas left out."""
    if radius <= 0:
        return flow
    lab = srgb_to_lab(guide.float())
    b, c, h, w = flow.shape
    voters = torch.ones(b, 1, h, w) if voters is None else voters.float().expand(b, 1, h, w)
    out = flow.clone()
    for i in range(b):
        for y in range(h):
            for x in range(w):
                ys = range(max(0, y - radius), min(h, y + radius + 1))
                xs = range(max(0, x - radius), min(w, x + radius + 1))
                near = [(v, u) for v in ys for u in xs]
                weights = torch.stack([
                    torch.ones(()) if (v, u) == (y, x) else
                    torch.exp(-(lab[i, :, v, u] - lab[i, :, y, x]).pow(2).sum() / (2 * sigma ** 2)) * voters[i, 0, v, u]
                    for v, u in near])
                for ch in range(c):
                    values = torch.stack([flow[i, ch, v, u] for v, u in near])
                    order = values.argsort()
                    cumulative = weights[order].float().cumsum(0)
                    first = int((cumulative < cumulative[-1] / 2).sum())
                    out[i, ch, y, x] = values[order[first]]
    return out
