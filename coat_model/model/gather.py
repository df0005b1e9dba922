"""The style's latents gathered along the matches, one map per decoder layer, untrusted cells filled, and the
content mask rule (docs/METHOD.md "Alignment", docs/CORRESPONDENCE.md).

:meth:`COAT.align <coat_model.model.coat.COAT.align>` finds matches per scale; turning them into the aligned latent
map of one layer is a composition of the steps below (``COAT._aligned_map``):

1. **gather** the style's map of the layer along the matches, on the grid of that map (a :class:`Gathered`):

   - :func:`soft_gather`: the soft path's attention already averaged the style values (``Match.aligned``); the
     layer's channels are sliced out;
   - :func:`cell_gather`: the style map sampled at the matches of the nearest matched scale (nearest cell on the
     hard path, bilinear on the soft one), the matches resized to the map with nearest neighbour first where the
     layer's own scale was not matched;
   - :func:`pixel_gather`: full-resolution latents, sampled bilinearly at the per-pixel matches
     (:func:`pixel_matches`, refined when the alignment refines);

2. :func:`restrict_to_object`: the content mask rule below, on the map's grid;
3. :func:`fill_gathered`: untrusted cells filled (:func:`coat_model.model.fill.fill_unconfident`, the style cells hit
   by trusted matches from :func:`style_hits`);
4. :func:`keep_content_background`: the background goes back to the content's latents.

The warped-style colour path is a gather too (:func:`warp_style_image`): the style image at the per-pixel matches.
At inference the untrusted per-pixel matches may first take their trusted neighbours' flow (:func:`fill_matches`, the
config's ``flow_fill``), and the gate may be offered the warped colours on the whole object (``warp_everywhere``).

**The content mask rule** (a content mask ``[B, 1, R, R]`` on the canvas, 1 = object). A content cell of any grid
(a cell of one scale, or a pixel) belongs to the object when the mask covers more than half of it: its area average
exceeds 0.5 (:func:`object_cells`). The match of a cell outside the object is never trusted: its mask is False and
its confidence 0. :func:`restrict_to_object` applies this to every match the alignment uses, on the grid where it
is used: each scale's matches (as they are found, so a coarse-to-fine search does not follow a background match),
the per-pixel matches whether refined or not, and each layer's matches resized to its map. Nothing downstream
counts such a match: it is filled like any untrusted cell, it marks no style cell as hit, and the warped colours
get no trust there. Then the background keeps the content's own appearance, with a soft edge: the aligned latents
are blended back to the content's latents by the mask resized bilinearly to the map, and the warped colours' trust
is multiplied by the mask. Without a mask every function here leaves its input as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .coords import flow_to_index, identity_flow
from .fill import SIGMA as FILL_SIGMA
from .fill import fill_unconfident, propagate
from .matching import Match, resample_flow, sample_at


@dataclass
class Gathered:
    """Style values read along the matches for one latent map, and the matches they were read at.

    values: [B, C, h, w] on the grid of the map; match: a :class:`Match` on the same grid (flow, confidence, mask);
    reach: how far the fill spreads, as a multiple of :data:`coat_model.model.fill.SIGMA` cells of this grid.
    """

    values: torch.Tensor
    match: Match
    reach: int = 1


# -- the content mask rule ------------------------------------------------------------------------------------


def object_cells(content_mask: torch.Tensor, size) -> torch.Tensor:
    """The cells of an ``size`` = (h, w) grid that belong to the object: the area average of ``content_mask``
    [B, 1, R, R] over each cell exceeds 0.5. [B, 1, h, w] bool; on the canvas grid (h = R) simply ``mask > 0.5``."""
    return F.interpolate(content_mask, size=tuple(size), mode="area") > 0.5


def restrict_to_object(match: Match, content_mask: torch.Tensor | None) -> Match:
    """``match`` with the cells outside the object untrusted (mask False, confidence 0); the rule of this module's
    docstring. The match may be on any grid of the canvas; its other fields are kept. Unchanged without a mask."""
    if content_mask is None:
        return match
    inside = object_cells(content_mask, match.mask.shape[-2:])
    return dataclasses.replace(match, mask=match.mask & inside, confidence=match.confidence * inside)


def keep_content_background(aligned: torch.Tensor, content_map: torch.Tensor,
                            content_mask: torch.Tensor | None) -> torch.Tensor:
    """``mask * aligned + (1 - mask) * content_map`` with the mask resized bilinearly to the map [B, C, h, w]: the
    background keeps the content's latents, and a soft mask feathers the edge. ``aligned`` without a mask."""
    if content_mask is None:
        return aligned
    fg = F.interpolate(content_mask, size=aligned.shape[-2:], mode="bilinear", align_corners=False)
    return fg * aligned + (1 - fg) * content_map


# -- gather -----------------------------------------------------------------------------------------------------


def nearest_scale(scales, scale: int) -> int:
    """The matched scale (of ``scales``, divisors of R) closest to ``scale`` in octaves: whose flow a layer of
    ``scale`` reads when its own scale was not matched."""
    return min(scales, key=lambda m: abs(m.bit_length() - scale.bit_length()))


def soft_gather(match: Match, slot: int, width: int) -> Gathered:
    """The soft path: the attention already carried the style values of every layer of this scale
    (``match.aligned`` [B, n * width, h, w], layers in order); the ``slot``-th layer's ``width`` channels."""
    i = slot * width
    return Gathered(match.aligned[:, i : i + width], match)


def cell_gather(style_map: torch.Tensor, match: Match, size, sampling: str) -> Gathered:
    """``style_map`` [B, C, hs, ws] sampled at the matches (``sampling`` "nearest": the matched cell, the hard path;
    "bilinear": the soft path). Matches of another grid than ``size`` = (h, w), the map's own, are resized to it
    with nearest neighbour first (flow, mask and confidence)."""
    if tuple(match.flow.shape[-2:]) != tuple(size):
        match = Match(
            flow=F.interpolate(match.flow, size=size, mode="nearest"),
            confidence=F.interpolate(match.confidence, size=size, mode="nearest"),
            mask=F.interpolate(match.mask.float(), size=size, mode="nearest") > 0.5,
        )
    return Gathered(sample_at(style_map, match.flow, mode=sampling), match)


def pixel_gather(style_map: torch.Tensor, pixels: Match, reach: int) -> Gathered:
    """Full-resolution latents: ``style_map`` [B, C, R, R] sampled bilinearly at the per-pixel matches ``pixels``.
    ``reach``: the scale the matches came from, so that the fill spreads as far in the image as at that scale."""
    return Gathered(sample_at(style_map, pixels.flow, mode="bilinear"), pixels, reach)


def pixel_matches(finest: Match, scale: int, resolution: int) -> Match:
    """The matches of the cells of ``scale`` (the finest matched one) as matches of every pixel of the R x R
    canvas: the flow interpolated between trusted matches (:func:`coat_model.model.matching.resample_flow`), the mask
    of the containing cell, the confidence interpolated bilinearly. Refining them is
    :func:`coat_model.model.matching.refine_match`."""
    r = resolution
    flow = resample_flow(finest.flow, scale, 1, r, trusted=finest.mask)
    mask = F.interpolate(finest.mask.float(), size=(r, r), mode="nearest") > 0.5
    confidence = F.interpolate(finest.confidence.float(), size=(r, r), mode="bilinear", align_corners=False)
    return Match(flow=flow, confidence=confidence.clamp(0, 1), mask=mask)


def fill_matches(pixels: Match, sigma: float, displacement: bool = False) -> Match:
    """Per-pixel matches whose untrusted pixels take the flow of the trusted ones around them: ``propagate``'s
    normalised convolution (:func:`coat_model.model.fill.propagate`, at ``sigma``, 2 and 4 ``sigma`` pixels); a pixel
    with no trusted match within reach keeps its own. Trusted pixels, confidence and mask are unchanged: the fill
    moves where the untrusted pixels look (and where a refinement searches), not whether they are trusted.

    ``displacement``: average the trusted matches' displacements (matched position less the pixel's own) instead of
    their positions. An average of positions sends a pixel where its trusted neighbours look, which is where they
    are, not where it is: a pixel beyond them (a frame's edge, a part's end) is pulled back by its distance to them.
    An average of displacements is exact for any shift (docs/CORRESPONDENCE.md section 9)."""
    m = pixels.mask.to(pixels.flow.dtype)
    base = identity_flow(pixels.flow.shape[-1], pixels.flow.device, pixels.flow.dtype) if displacement else 0.0
    values = pixels.flow - base
    filled = (propagate(values, m, values, sigma) + base).clamp(-1, 1)
    return Match(flow=m * pixels.flow + (1 - m) * filled, confidence=pixels.confidence, mask=pixels.mask)


def warp_style_image(style_image: torch.Tensor, pixels: Match, *, soft: bool, content_mask: torch.Tensor | None,
                     everywhere: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The warped-style colour path (docs/CORRESPONDENCE.md section 5): the style image [B, 3, R, R] sampled
    bilinearly at the per-pixel matches, and where the decoder may take it, the trust [B, 1, R, R]: the cycle
    confidence on the soft path (detached: a weight the gate cannot game), the trusted matches on the hard one
    (every pixel with ``everywhere``: the learned gate alone decides), times the content mask where there is one."""
    warped = sample_at(style_image, pixels.flow, mode="bilinear")
    if everywhere:
        trust = torch.ones_like(warped[:, :1])
    else:
        trust = (pixels.confidence.detach() if soft else pixels.mask).to(warped.dtype)
    if content_mask is not None:
        trust = trust * content_mask
    return warped, trust


# -- fill -------------------------------------------------------------------------------------------------------


def style_hits(flow: torch.Tensor, mask: torch.Tensor, size) -> torch.Tensor:
    """The style cells [B, 1, hs, ws] (``size`` = (hs, ws)) that some trusted content cell matched: ``flow``
    [B, 2, h, w] read at the nearest style cell where ``mask`` [B, 1, h, w] holds."""
    b = flow.shape[0]
    hs, ws = size
    index = flow_to_index(flow, hs, ws)
    hits = torch.zeros(b, hs * ws, device=flow.device)
    hits.scatter_add_(1, index, mask.flatten(1).float())
    return (hits > 0).view(b, 1, hs, ws)


def fill_gathered(gathered: Gathered, *, mode: str, style_map: torch.Tensor, content_map: torch.Tensor,
                  average: torch.Tensor) -> torch.Tensor:
    """The gathered values where their match is trusted, ``mode``'s fill (:mod:`coat_model.model.fill`) elsewhere.
    ``style_map``: the style's own map of the layer (the global mean of the cells trusted matches hit);
    ``content_map``: the content's ("content" fill); ``average``: the average latent [C] ("average" fill)."""
    match = gathered.match
    hits = style_hits(match.flow, match.mask, style_map.shape[-2:]) if mode in ("propagate", "global") else None
    return fill_unconfident(
        gathered.values, match.mask, mode=mode, style_maps=style_map, style_hits=hits, content_maps=content_map,
        average=average, sigma=FILL_SIGMA * gathered.reach,
    )
