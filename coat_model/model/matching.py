"""Dense correspondence between content and style descriptor maps, with confidence (docs/CORRESPONDENCE.md).

Two paths share one output type, :class:`Match`:

- :func:`soft_match` (differentiable, for training): one attention call gives the aligned style values and the
  soft-argmax coordinates at once (the coordinate grid rides along in the value tensor); a second call in the
  other direction gives the cycle (forward-backward) confidence. No HW x HW tensor on the fused backends.
- :func:`hard_match` (inference default): exact argmax matches in both directions (chunked), confidence from
  (a) mutual/cycle consistency plus a similarity floor AND (b) consistency of pair-wise distances between
  neighbouring matches; optional coarse-to-fine search windows.

Coordinates are in [-1, 1], (x, y) order, ``align_corners=True`` (-1 is the centre of the first cell); the
conversions live in :mod:`coat_model.model.coords` (``coordinate_grid`` and ``cell_size`` remain importable from here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import attend, chunked_argmax
from .coords import (
    cell_centres_to_flow, cell_indices, cell_size, cell_steps, cells_to_flow, cells_to_index, cells_to_pixels,
    coordinate_grid, flow_to_cells, index_to_cells, per_axis, pixels_to_cells,
)


@dataclass
class Match:
    """Matches of every content cell at one scale.

    flow: [B, 2, h, w] matched style coordinates; confidence: [B, 1, h, w] in [0, 1]; mask: [B, 1, h, w] bool;
    similarity: [B, 1, h, w] cosine similarity of the match (hard path) or None; aligned: [B, Cv, h, w] soft-
    aligned values (soft path) or None; cycle_error: [B, 1, h, w] forward-backward error in content cells
    (soft path, differentiable) or None.
    """

    flow: torch.Tensor
    confidence: torch.Tensor
    mask: torch.Tensor
    similarity: torch.Tensor | None = None
    aligned: torch.Tensor | None = None
    cycle_error: torch.Tensor | None = None


def tokens(maps: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> contiguous [B, h*w, C]."""
    return maps.flatten(2).transpose(1, 2).contiguous()


def untokens(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, h*w, C] -> [B, C, h, w]."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


def prepare_descriptors(d: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Centre per image over space (CoCosNet) and L2-normalise along channels; [B, C, h, w] -> [B, h*w, C]."""
    if center:
        d = d - d.mean(dim=(2, 3), keepdim=True)
    return tokens(F.normalize(d.float(), dim=1))


def sample_at(maps: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``maps`` [B, C, H, W] at coordinates ``flow`` [B, 2, h, w] -> [B, C, h, w]."""
    return F.grid_sample(maps, flow.permute(0, 2, 3, 1).to(maps.dtype), mode=mode, align_corners=True)


def resample_flow(flow: torch.Tensor, scale: int, to_scale: int, resolution: int,
                  trusted: torch.Tensor | None = None) -> torch.Tensor:
    """Matches of the cells of scale 1/``scale`` as matches of the cells of scale 1/``to_scale`` of the same R x R
    canvas: the field is interpolated bilinearly between cell centres, and its values move to the new grid's cell
    coordinates (a matched style position keeps its place in the image). Both in the cell-centre convention of
    :class:`Match`, [B, 2, R/scale, R/scale] -> [B, 2, R/to_scale, R/to_scale].

    ``trusted`` [B, 1, R/scale, R/scale] (bool): interpolate between trusted matches only, so that an untrusted
    neighbour (whose match may point anywhere) does not pull a trusted one; where no trusted match is near, the
    nearest cell's match.
    """
    h, h_to = resolution // scale, resolution // to_scale
    pixels = cells_to_pixels(flow_to_cells(flow, h, h), scale)
    values = cells_to_flow(pixels_to_cells(pixels, to_scale), h_to, h_to)
    size = (h_to, h_to)
    smooth = F.interpolate(values, size=size, mode="bilinear", align_corners=False)
    if trusted is not None:
        w = trusted.to(values.dtype)
        weight = F.interpolate(w, size=size, mode="bilinear", align_corners=False)
        among_trusted = F.interpolate(values * w, size=size, mode="bilinear", align_corners=False)
        nearest = F.interpolate(values, size=size, mode="nearest")
        smooth = torch.where(weight > 1e-3, among_trusted / weight.clamp_min(1e-3), nearest)
    return smooth.clamp(-1, 1)


# -- soft path -------------------------------------------------------------------------------------------------


def soft_match(
    content_desc: torch.Tensor,
    style_desc: torch.Tensor,
    style_values: torch.Tensor | None = None,
    *,
    temperature: float,
    cycle_sigma: float = 1.0,
    threshold: float = 0.5,
    backend: str = "auto",
    center: bool = True,
) -> Match:
    """Differentiable soft-argmax matches with cycle confidence.

    Args:
        content_desc, style_desc: descriptors [B, C, h, w] and [B, C, hs, ws].
        style_values: optional [B, Cv, hs, ws] maps to align (returned in ``Match.aligned``).
        temperature: softmax temperature T (attention scale 1/T).
        cycle_sigma: falloff of the forward-backward error, in content cells.
        threshold: ``mask = confidence >= threshold``.
    """
    b, _, h, w = content_desc.shape
    hs, ws = style_desc.shape[-2:]
    q, k = prepare_descriptors(content_desc, center), prepare_descriptors(style_desc, center)
    grid_s = coordinate_grid(hs, ws, q.device).expand(b, -1, -1)
    grid_c = coordinate_grid(h, w, q.device).expand(b, -1, -1)
    values = grid_s if style_values is None else torch.cat([tokens(style_values).float(), grid_s], dim=-1)
    out = attend(q, k, values, scale=1.0 / temperature, backend=backend)
    flow = untokens(out[..., -2:], h, w).clamp(-1, 1)  # a convex combination of grid points; rounding can overshoot
    back_map = untokens(attend(k, q, grid_c, scale=1.0 / temperature, backend=backend), hs, ws)
    err = cycle_error(flow, back_map)
    confidence = torch.exp(-0.5 * (err / cycle_sigma) ** 2)
    aligned = None if style_values is None else untokens(out[..., :-2], h, w).to(style_values.dtype)
    return Match(flow=flow, confidence=confidence, mask=confidence >= threshold, aligned=aligned, cycle_error=err)


def cycle_error(flow: torch.Tensor, back_map: torch.Tensor) -> torch.Tensor:
    """Forward-backward error in content cells, [B, 1, h, w]: how far a content cell lands from itself after
    going to its style match (``flow`` [B, 2, h, w]) and back (``back_map`` [B, 2, hs, ws], every style cell's
    content coordinates, read bilinearly at the match). Zero for mutually consistent matches."""
    h, w = flow.shape[-2:]
    back = sample_at(back_map, flow)
    grid = untokens(coordinate_grid(h, w, flow.device, back.dtype)[None], h, w)
    return per_axis(torch.div, back - grid, *cell_steps(h, w)).norm(dim=1, keepdim=True)


# -- hard path -------------------------------------------------------------------------------------------------


@dataclass
class SearchWindow:
    """The coarse-to-fine restriction of a hard search: each confident content cell searches the style cells
    within ``radius + 0.5`` cells (Chebyshev) of its coarse match, (2r+1)^2 cells on a cell centre and (2r+2)^2
    between four; other cells search everywhere, and so does a cell whose window leaves the style grid entirely.

    :meth:`allowed` writes the window as a mask over every style cell (the oracle, for :func:`chunked_argmax`);
    :func:`window_argmax` searches only the window's cells.
    """

    centre: torch.Tensor      # [B, L, 2] fractional (x, y) style cell of each content cell's coarse match
    confident: torch.Tensor   # [B, L] bool: the rows the window restricts
    xs: torch.Tensor          # [ws] the style grid's columns in cells, as flow_to_cells gives them
    ys: torch.Tensor          # [hs] its rows
    radius: int

    @classmethod
    def around(cls, prior: Match, h: int, w: int, hs: int, ws: int, radius: int) -> "SearchWindow":
        """The window of an h x w content grid around the coarser matches ``prior`` (nearest-upsampled)."""
        prior_flow = F.interpolate(prior.flow, size=(h, w), mode="nearest")
        prior_mask = F.interpolate(prior.mask.float(), size=(h, w), mode="nearest")
        grid_cells = flow_to_cells(coordinate_grid(hs, ws, prior_flow.device), hs, ws, dim=-1)
        return cls(centre=flow_to_cells(tokens(prior_flow), hs, ws, dim=-1),
                   confident=tokens(prior_mask)[..., 0] > 0.5,
                   xs=grid_cells[:ws, 0], ys=grid_cells[::ws, 1], radius=radius)

    def near(self, coordinates: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Whether style columns or rows at ``coordinates`` (in cells) lie within the window of centres ``centre``
        (the same axis, broadcast): the one comparison both searches make, so they agree to the bit."""
        return (coordinates - centre).abs() <= self.radius + 0.5

    def allowed(self, rows: slice) -> torch.Tensor:
        """[B, rows, Ls] bool mask for :func:`chunked_argmax`: the per-axis windows ANDed, O(rows (hs + ws))
        arithmetic, never [rows, Ls, 2]."""
        centre = self.centre[:, rows, None]
        near_x = self.near(self.xs[None, None], centre[..., 0])                         # [B, rows, ws]
        near_y = self.near(self.ys[None, None], centre[..., 1])                         # [B, rows, hs]
        near = (near_y[..., :, None] & near_x[..., None, :]).flatten(-2)              # [B, rows, Ls]
        return near | ~self.confident[:, rows, None]


def window_argmax(q: torch.Tensor, k: torch.Tensor, window: SearchWindow) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunked_argmax(q, k, allowed=window.allowed)`` without the full correlation: row maxima and argmaxes
    [B, L] each.

    Each confident row scores only the (2r+3)^2 style cells around its rounded centre (a superset of its window;
    the cells outside it or outside the grid are skipped), one gather of key rows [B, L, C] per offset: O(L r^2 C)
    work and O(L C) memory instead of O(L Ls C) and O(chunk Ls). Offsets run in ascending style index and only a
    strictly larger score replaces the best, so ties go to the lowest index, as ``max`` gives them. Rows that
    search everywhere (unconfident, or no window cell inside the grid) take :func:`chunked_argmax`. The scores are
    the same dot products summed in another order, so they agree with the oracle's to float rounding (about 1e-7 in
    fp32; on CUDA with TF32 matmuls allowed, the oracle's and the fallback rows' products round to about 1e-3 while
    the window's sums stay fp32), and only near-ties within that rounding can pick another cell.
    """
    b, l, c = q.shape
    hs, ws, r = window.ys.numel(), window.xs.numel(), window.radius
    qf, rows_of_k = q.float(), k.float().reshape(b * hs * ws, c)
    first_row = torch.arange(b, device=q.device)[:, None] * (hs * ws)  # each image's first key row
    base = window.centre.round().long()  # [B, L, 2]: within half a cell of the centre, so +-(r+1) covers the window
    best = qf.new_full((b, l), float("-inf"))
    index = torch.zeros(b, l, dtype=torch.long, device=q.device)
    found = torch.zeros(b, l, dtype=torch.bool, device=q.device)
    for dy in range(-r - 1, r + 2):
        y = base[..., 1] + dy
        y_in = (y >= 0) & (y < hs)
        y = y.clamp(0, hs - 1)
        y_ok = y_in & window.near(window.ys[y], window.centre[..., 1])
        for dx in range(-r - 1, r + 2):
            x = base[..., 0] + dx
            x_in = (x >= 0) & (x < ws)
            x = x.clamp(0, ws - 1)
            ok = y_ok & x_in & window.near(window.xs[x], window.centre[..., 0])
            cell = y * ws + x  # [B, L]
            score = (rows_of_k[cell + first_row] * qf).sum(-1)  # whole key rows: contiguous copies
            better = ok & (score > best)
            best = torch.where(better, score, best)
            index = torch.where(better, cell, index)
            found |= ok
    everywhere = ~(window.confident & found)
    if everywhere.any():
        for i in range(b):  # rows that search everywhere, per image (a few host reads; inference only)
            rows = everywhere[i].nonzero()[:, 0]
            if rows.numel():
                value, at = chunked_argmax(q[i:i + 1, rows], k[i:i + 1])
                best[i, rows], index[i, rows] = value[0], at[0]
    return best, index


def geometric_consistency(
    content_xy: torch.Tensor, style_xy: torch.Tensor, valid: torch.Tensor, *, radius: int, sigma: float
) -> torch.Tensor:
    """Consistency of pair-wise distances between neighbouring matches (docs/CORRESPONDENCE.md section 3).

    For each content cell i and each valid neighbour k within ``radius`` cells, compares the content distance
    ``d_c(i, k)``, scaled by the image's median ratio rho = median(d_s / d_c), with the distance ``d_s`` between
    their matches. Score ``g_i = mean_k exp(-(rho d_c - d_s)^2 / sigma^2)``; 0 where i has no valid neighbour.

    Args:
        content_xy, style_xy: [B, 2, h, w] positions in cells (content grid and matched style cells).
        valid: [B, 1, h, w] bool, the candidate matches.
        radius: neighbourhood radius in cells; sigma: tolerance in cells.
    Returns: [B, 1, h, w] scores in [0, 1].
    """
    b, _, h, w = content_xy.shape
    size = 2 * radius + 1
    unfold = lambda t: F.unfold(t, size, padding=radius).view(b, t.shape[1], size * size, h * w)  # noqa: E731
    centre = (size * size) // 2
    vf = valid.float()
    pair_valid = (unfold(vf)[:, 0] > 0.5) & (vf.view(b, 1, h * w) > 0.5)  # [B, K, N]
    pair_valid[:, centre] = False
    # Unfolding pads with zeros; padded neighbours are invalid, so their positions never count.
    d_c = _length(unfold(content_xy) - content_xy.view(b, 2, 1, h * w))
    d_s = _length(unfold(style_xy) - style_xy.view(b, 2, 1, h * w))
    ratio = torch.where(pair_valid, d_s / d_c.clamp_min(1e-6), torch.nan)
    rho = ratio.flatten(1).nanmedian(dim=1).values.nan_to_num(1.0)[:, None, None]
    score = torch.exp(-((rho * d_c - d_s) / sigma) ** 2) * pair_valid
    count = pair_valid.sum(dim=1)
    g = score.sum(dim=1) / count.clamp_min(1)
    return torch.where(count > 0, g, torch.zeros_like(g)).view(b, 1, h, w)


def _length(v: torch.Tensor) -> torch.Tensor:
    """Euclidean length of [B, 2, ...] vectors over dim 1 (elementwise: several times faster than ``norm(dim=1)``
    on these strided views)."""
    return torch.sqrt(v[:, 0].square() + v[:, 1].square())


def hard_match(
    content_desc: torch.Tensor,
    style_desc: torch.Tensor,
    *,
    sim_threshold: float = 0.3,
    cycle_tolerance: float = 1.0,
    cycle_sigma: float = 1.0,
    geometric: bool = True,
    geometric_radius: int = 3,
    geometric_sigma: float = 1.5,
    geometric_threshold: float = 0.5,
    confidence_threshold: float = 0.0,
    prior: Match | None = None,
    search_radius: int = 2,
    center: bool = True,
) -> Match:
    """Argmax matches with mutual/cycle and pair-wise-distance confidence (docs/CORRESPONDENCE.md section 3).

    ``mask`` = cycle error <= ``cycle_tolerance`` cells AND similarity >= ``sim_threshold`` AND (if
    ``geometric``) a geometric score >= ``geometric_threshold`` (computed twice, the second time on the survivors
    of the first) AND ``confidence >= confidence_threshold``. ``confidence`` = exp(-err^2 / 2 sigma^2) times the
    geometric score, zero below the similarity floor. ``prior`` (a coarser Match) restricts the search to
    ``search_radius`` cells around the coarse match of its confident cells.
    """
    b, _, h, w = content_desc.shape
    hs, ws = style_desc.shape[-2:]
    q, k = prepare_descriptors(content_desc, center), prepare_descriptors(style_desc, center)
    if prior is None:
        sim, fwd = chunked_argmax(q, k)  # content -> style
    else:
        sim, fwd = window_argmax(q, k, SearchWindow.around(prior, h, w, hs, ws, search_radius))
    _, bwd = chunked_argmax(k, q)  # style -> content
    cycle = torch.gather(bwd, 1, fwd)  # content -> style -> content

    grid_c = cell_indices(h, w).to(q.device, torch.float32).reshape(2, h * w)  # (x, y) in cells
    style_cells = index_to_cells(fwd, ws)  # [B, 2, N]
    back_cells = index_to_cells(cycle, w)
    err = (back_cells - grid_c).abs().amax(dim=1).view(b, 1, h, w)

    similarity = sim.view(b, 1, h, w)
    confidence = torch.exp(-0.5 * (err / cycle_sigma) ** 2) * (similarity >= sim_threshold)
    mask = (err <= cycle_tolerance) & (similarity >= sim_threshold)
    if geometric:
        content_xy = grid_c.view(1, 2, h, w).expand(b, -1, -1, -1)
        style_xy = style_cells.view(b, 2, h, w)
        g = geometric_consistency(content_xy, style_xy, mask, radius=geometric_radius, sigma=geometric_sigma)
        g = geometric_consistency(
            content_xy, style_xy, mask & (g >= geometric_threshold), radius=geometric_radius, sigma=geometric_sigma
        )
        mask = mask & (g >= geometric_threshold)
        confidence = confidence * g
    mask = mask & (confidence >= confidence_threshold)
    flow = cell_centres_to_flow(style_cells, hs, ws).view(b, 2, h, w)
    return Match(flow=flow, confidence=confidence, mask=mask, similarity=similarity)


# -- refinement below the cell ------------------------------------------------------------------------------------


def window_offsets(radius: int, device=None) -> torch.Tensor:
    """The (2r+1)^2 integer offsets (dx, dy) of a search window, row-major: [K, 2] long."""
    d = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)


def window_correlation(query: torch.Tensor, key: torch.Tensor, centres: torch.Tensor, radius: int):
    """Similarities of every query pixel with the key pixels of a window around its own centre.

    Args:
        query: [B, C, H, W]; key: [B, C, Hs, Ws]; centres: [B, 2, H, W] long key pixel (x, y) of each window centre.
    Returns: (sims [B, K, H, W], inside [B, K, H, W] bool): K = (2r+1)^2 offsets in :func:`window_offsets` order;
    offsets that leave the key image are not ``inside`` (their sims are those of the clamped pixel).
    One gather per offset, each [B, C, H W] (never H W x Hs Ws); a channel sum, not a per-pixel matrix product,
    so nothing is permuted (about 3x faster forward and backward on CPU than one gather of all K windows
    contracted by einsum). Oracle: :func:`window_correlation_reference`.
    """
    b, c, h, w = query.shape
    hs, ws = key.shape[-2:]
    offsets = window_offsets(radius, query.device).view(1, -1, 2, 1, 1)  # [1, K, 2, 1, 1]
    cells = centres[:, None] + offsets  # [B, K, 2, H, W]
    x, y = cells[:, :, 0], cells[:, :, 1]
    inside = (x >= 0) & (x < ws) & (y >= 0) & (y < hs)
    index = cells_to_index(cells, hs, ws, dim=2).flatten(2)  # [B, K, H*W]
    keys, queries = key.flatten(2), query.flatten(2)
    sims = torch.stack([(torch.gather(keys, 2, index[:, i, None].expand(-1, c, -1)) * queries).sum(1)
                        for i in range(index.shape[1])], dim=1)
    return sims.view(b, -1, h, w), inside


def window_correlation_reference(query, key, centres, radius: int):
    """Loop oracle of :func:`window_correlation` (tests only: one dot product per pixel and offset)."""
    b, _, h, w = query.shape
    hs, ws = key.shape[-2:]
    offsets = window_offsets(radius).tolist()
    sims = torch.zeros(b, len(offsets), h, w, dtype=query.dtype)
    inside = torch.zeros(b, len(offsets), h, w, dtype=torch.bool)
    for i in range(b):
        for yy in range(h):
            for xx in range(w):
                cx, cy = int(centres[i, 0, yy, xx]), int(centres[i, 1, yy, xx])
                for k, (dx, dy) in enumerate(offsets):
                    x, y = cx + dx, cy + dy
                    inside[i, k, yy, xx] = 0 <= x < ws and 0 <= y < hs
                    x, y = min(max(x, 0), ws - 1), min(max(y, 0), hs - 1)
                    sims[i, k, yy, xx] = (query[i, :, yy, xx] * key[i, :, y, x]).sum()
    return sims, inside


def refine_match(content_desc: torch.Tensor, style_desc: torch.Tensor, coarse: Match, *, radius: int,
                 temperature: float = 0.05, mode: str = "hard", prior: float = 0.0) -> Match:
    """Matches below the cell: every pixel's coarse match (already per pixel, e.g. from :func:`resample_flow`) is
    searched again in a (2r+1)^2 pixel window of the style's full-resolution descriptors.

    Args:
        content_desc, style_desc: L2-normalised full-resolution descriptors [B, C, R, R].
        coarse: per-pixel Match ([B, 2, R, R] flow in [-1, 1], align_corners=True over pixels; confidence, mask).
        mode: "hard" takes the best pixel of the window; "soft" (training) the softmax-weighted mean offset, with
            gradients to the descriptors and, straight through, to the coarse flow.
        prior: hard mode, > 0: each offset's similarity is lowered by ``prior * (|offset| / radius)^2`` before the
            best is taken (a match leaves its coarse place only for a clearly more alike pixel: descriptors that do
            not yet tell neighbours apart keep the interpolated matches), and a pixel whose best offset is the
            window's centre keeps its coarse match below the pixel instead of the centre's rounded pixel.
    Returns: the refined Match; confidence and mask carried from ``coarse``, ``similarity`` the chosen pixel's sim.
    """
    r_h, r_w = style_desc.shape[-2:]
    pixel = flow_to_cells(coarse.flow, r_h, r_w)  # [B, 2, R, R] style pixel coordinates (the cells of scale 1)
    centre = pixel.detach().round()
    sims, inside = window_correlation(content_desc, style_desc, centre.long(), radius)
    sims = sims.float().masked_fill(~inside, float("-inf"))
    offsets = window_offsets(radius, sims.device).to(pixel.dtype).view(1, -1, 2, 1, 1)
    if prior and mode == "hard":
        distance = (offsets[:, :, 0] ** 2 + offsets[:, :, 1] ** 2) / radius ** 2  # [1, K, 1, 1]
        arg = (sims - prior * distance.to(sims.dtype)).argmax(dim=1, keepdim=True)
        best = sims.gather(1, arg)
    else:
        best, arg = sims.max(dim=1, keepdim=True)
    if mode == "soft":
        weights = torch.softmax(sims / temperature, dim=1)  # [B, K, R, R]
        shift = (weights[:, :, None] * offsets).sum(1)
        refined = centre + shift + (pixel - pixel.detach())  # straight-through to the coarse flow
    else:
        shift = torch.gather(offsets.expand(sims.shape[0], -1, -1, *sims.shape[-2:]), 1,
                             arg[:, :, None].expand(-1, -1, 2, -1, -1))[:, 0]
        refined = centre + shift
        if prior:  # stayed put: the coarse match as it was, below the pixel
            refined = torch.where((shift == 0).all(1, keepdim=True), pixel, refined)
    flow = cells_to_flow(refined, r_h, r_w).clamp(-1, 1)
    return Match(flow=flow, confidence=coarse.confidence, mask=coarse.mask, similarity=best)
