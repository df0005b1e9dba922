"""The content-guided weighted median of the per-pixel matches (docs/CORRESPONDENCE.md section 7).

Structure comes from the content: where the content's colours change, a part ends, and the matches may jump;
inside a part they should agree. Each pixel's flow becomes the weighted median, per component, of the flows in its
(2r+1)^2 window, a neighbour q of p weighing

    w = exp(-|lab_p - lab_q|^2 / (2 sigma^2))

by how alike the content looks at p and q (CIELAB, :mod:`coat_model.colour`), neighbours outside the canvas 0. The
median keeps the flow a warp (the style's textures stay sharp, nothing is averaged), moves its edges onto the
content's edges, and gives a pixel whose match went astray the match of most of its part: the non-local term of
"Secrets of optical flow estimation" (Sun, Roth and Black, CVPR 2010), the joint weighted median of Zhang et al.
("100+ times faster weighted median filter", CVPR 2014) computed directly by sorting each window.

:func:`guided_median` is the fast path (every window at once, in bands of rows that bound memory);
:func:`guided_median_reference` is its test oracle, one pixel at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..colour import srgb_to_lab

BAND_ELEMENTS = 1 << 22  # window values held at once per flow component (rows per band follow from it)


def guided_median(flow: torch.Tensor, guide: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """flow [B, C, H, W] (any values; C = 2 for matches), guide [B, 3, H, W] sRGB in [0, 1] (the content) -> the
    flow's weighted median in each (2 ``radius`` + 1)^2 window, [B, C, H, W]; ``radius`` 0 returns ``flow``. The
    median is the lower one: the smallest value whose cumulative weight reaches half the window's (never a
    neighbour outside the canvas: a pixel weighs 1 in its own window). Windows are laid out last ([..., K]), so
    the sort runs along contiguous memory."""
    if radius <= 0:
        return flow
    b, _, h, w = flow.shape
    k = 2 * radius + 1
    lab = srgb_to_lab(guide.float())
    inside = torch.ones_like(lab[:, :1])                               # 0 outside the canvas (zero padding)
    pad = lambda x: F.pad(x, (radius, radius, radius, radius))      # noqa: E731
    lab_p, inside_p, flow_p = pad(lab), pad(inside), pad(flow)
    rows = max(1, BAND_ELEMENTS // (b * k * k * w))
    out = torch.empty_like(flow)
    for top in range(0, h, rows):
        n = min(rows, h - top)
        window = lambda x: x[:, :, top:top + n + 2 * radius].unfold(2, k, 1).unfold(3, k, 1).reshape(  # noqa: E731
            b, x.shape[1], n, w, k * k)
        centre = lab[:, :, top:top + n, :, None]                                     # [B, 3, n, W, 1]
        alike = torch.exp(-(window(lab_p) - centre).pow(2).sum(1) / (2 * sigma ** 2))
        weights = alike * window(inside_p)[:, 0]                                     # [B, n, W, K]
        values, order = window(flow_p).sort(dim=-1)                                 # [B, C, n, W, K]
        cumulative = weights[:, None].expand_as(values).gather(-1, order).cumsum(-1)
        below = (cumulative < cumulative[..., -1:] / 2).sum(-1, keepdim=True)        # the first reaching half
        out[:, :, top:top + n] = values.gather(-1, below.clamp_max(k * k - 1)).squeeze(-1)
    return out


def guided_median_reference(flow: torch.Tensor, guide: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """:func:`guided_median` one pixel and one component at a time, neighbours outside the canvas left out."""
    if radius <= 0:
        return flow
    lab = srgb_to_lab(guide.float())
    b, c, h, w = flow.shape
    out = flow.clone()
    for i in range(b):
        for y in range(h):
            for x in range(w):
                ys = range(max(0, y - radius), min(h, y + radius + 1))
                xs = range(max(0, x - radius), min(w, x + radius + 1))
                near = [(v, u) for v in ys for u in xs]
                weights = torch.stack([torch.exp(-(lab[i, :, v, u] - lab[i, :, y, x]).pow(2).sum() / (2 * sigma ** 2))
                                       for v, u in near])
                for ch in range(c):
                    values = torch.stack([flow[i, ch, v, u] for v, u in near])
                    order = values.argsort()
                    cumulative = weights[order].float().cumsum(0)
                    first = int((cumulative < cumulative[-1] / 2).sum())
                    out[i, ch, y, x] = values[order[first]]
    return out
