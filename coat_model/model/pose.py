"""Pose search: align the style in a few poses too (its mirror image, small rotations) and keep, per pair, the pose
whose matches are surest; then the pose fitted to those matches (docs/CORRESPONDENCE.md section 6).

Objects of most categories are left-right symmetric and photographed from either side and at a slight tilt; a
content facing left and a style facing right match poorly (and the position input prefers the mirrored part on the
same side), and so do a level content and a tilted style. Each pose costs one more style encoding and one more
matching of every scale (the pairs' picked poses are assembled once). A pose is a linear map A of the [-1, 1] canvas
(a left-right flip for the mirrored poses, then a turn): the posed image reads the style at A p, so a match p' into
it is the match A p' into the style as given (clamped to the canvas: a turn's uncovered corners show the style's
border pixels), which is how the winner's flows are reported.

Per pair the pose with the highest mean finest confidence over the content's object, less its prior, wins; ties go
to the style as given. The style as given is the prior (0): a symmetric object (a frontal face) matches its mirror
about as well, part for mirrored part, and taking the mirror on a coin toss would send the style's left side to the
content's right; so the mirror pays ``mirror_margin``, a rotation ``rotation_margin`` and a rotated mirror both. The
winner is kept whole: each pair's matches and its posed style's latents are picked first and assembled once, so its
latents, warped colours and trust are read from its posed image.

The fitted pose (:func:`fit_similarity`, :class:`FittedPose`; ``COAT._refit``): the similarity (zoom, turn, shift)
that best maps each pair's content cells onto their trusted matches re-poses the style, which is matched once more
and kept per pair where surer by ``pose_fit_margin``; unlike the searched poses, it is one pose per pair.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .coords import coordinate_grid
from .matching import Match


@dataclass(frozen=True)
class Pose:
    """The style flipped left-right when ``mirrored``, then turned ``degrees`` clockwise on screen (about the canvas
    centre)."""

    degrees: float = 0.0
    mirrored: bool = False

    def matrix(self, device=None) -> torch.Tensor:
        """A [2, 2]: the posed image's pixel p (x first, [-1, 1]) shows the style's pixel A p. The turn alone reads
        the style at R p; flipping first reads it at M R p (M: x -> -x)."""
        t = math.radians(self.degrees)
        rotate = torch.tensor([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]], device=device)
        return torch.diag(torch.tensor([-1.0 if self.mirrored else 1.0, 1.0], device=device)) @ rotate

    def apply(self, image: torch.Tensor, fill: str = "border") -> torch.Tensor:
        """The posed image of ``image`` [B, C, R, R]: a flip is exact; a rotation samples bilinearly, the corners it
        uncovers taking the nearest border pixel (``fill="border"``) or 0 (``"zeros"``, for masks)."""
        if not self.degrees:
            return image.flip(-1) if self.mirrored else image
        theta = torch.zeros(image.shape[0], 2, 3, device=image.device, dtype=image.dtype)
        theta[:, :, :2] = self.matrix(image.device).to(image.dtype)
        grid = F.affine_grid(theta, list(image.shape), align_corners=True)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode=fill, align_corners=True)

    def to_style(self, flow: torch.Tensor) -> torch.Tensor:
        """Flow [B, 2, h, w] into the posed image (x first) -> the same flow into the style as given: A flow, clamped
        to the canvas where a turn's uncovered corners showed the style's border pixels (as ``apply`` read them)."""
        if not self.degrees:
            return torch.cat([-flow[:, :1], flow[:, 1:]], 1) if self.mirrored else flow
        return torch.einsum("ij,bjhw->bihw", self.matrix(flow.device).to(flow.dtype), flow).clamp(-1, 1)

    def prior(self, mirror_margin: float, rotation_margin: float) -> float:
        """The lead in mean confidence this pose needs over the style as given."""
        return (mirror_margin if self.mirrored else 0.0) + (rotation_margin if self.degrees else 0.0)


def candidate_poses(mirror: bool, rotation: float) -> list[Pose]:
    """The poses searched: the style as given first, then its mirror (``mirror``), then +-``rotation`` degrees
    (when > 0), each with its mirror too when ``mirror``."""
    flips = (False, True) if mirror else (False,)
    turns = (0.0, float(rotation), -float(rotation)) if rotation else (0.0,)
    return [Pose(t, m) for t in turns for m in flips]


def object_confidence(confidence: torch.Tensor, content_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean confidence [B] of the cells [B, 1, h, w] over the content's object (``content_mask`` [B, 1, R, R], the
    share of each cell it covers as weight; every cell without a mask)."""
    confidence = confidence.float()
    if content_mask is None:
        return confidence.flatten(1).mean(1)
    weight = F.adaptive_avg_pool2d(content_mask.float(), confidence.shape[-2:])
    return (confidence * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-6)


def winners(match_sets: list[dict[int, Match]], poses: list[Pose], content_mask: torch.Tensor | None,
            mirror_margin: float, rotation_margin: float) -> torch.Tensor:
    """[B] index into ``poses``: per pair, the highest mean finest confidence of its matches (``match_sets[k]``:
    scale -> matches into pose k) over the content's object, less the pose's prior (the first on ties: the style as
    given). Every pose pays its own fixed prior: a turn (``rotation_margin``) may beat the mirror (``mirror_margin``)
    on less raw confidence."""
    finest = min(match_sets[0])
    scores = [object_confidence(m[finest].confidence, content_mask) - p.prior(mirror_margin, rotation_margin)
              for m, p in zip(match_sets, poses)]
    return torch.stack(scores).argmax(0)


def per_pair(values: list, pick: torch.Tensor):
    """Per pair b, ``values[pick[b]]`` (tensors [B, ...] alike, or all None)."""
    if values[0] is None:
        return None
    out = values[0]
    for k in range(1, len(values)):
        out = torch.where((pick == k).view(-1, *([1] * (out.dim() - 1))), values[k], out)
    return out


def per_pair_matches(match_sets: list[dict[int, Match]], pick: torch.Tensor) -> dict[int, Match]:
    """Per pair, the matches of the picked pose at every scale."""
    return {s: Match(**{f.name: per_pair([getattr(m[s], f.name) for m in match_sets], pick)
                        for f in dataclasses.fields(Match)})
            for s in match_sets[0]}


def map_flows(alignment, convert):
    """``alignment`` with every flow passed through ``convert(flow, cell)``: each scale's (``cell`` = the scale, in
    pixels) and the refined per-pixel one (``cell`` = 1)."""
    refined = alignment.refined
    return dataclasses.replace(
        alignment,
        flow={s: convert(f, s) for s, f in alignment.flow.items()},
        refined=None if refined is None else dataclasses.replace(refined, flow=convert(refined.flow, 1)),
    )


def in_style_coordinates(alignment, poses: list[Pose], pick: torch.Tensor):
    """An :class:`~coat_model.model.coat.Alignment` assembled from each pair's picked pose, its flows turned back
    into the style's own coordinates; ``mirrored`` and (when some pose is turned) ``rotation`` [B] say which pose
    each pair took."""
    turned = map_flows(alignment, lambda flow, cell: per_pair([p.to_style(flow) for p in poses], pick))
    rotation_searched = any(p.degrees for p in poses)
    return dataclasses.replace(
        turned,
        mirrored=torch.tensor([p.mirrored for p in poses], device=pick.device)[pick],
        rotation=torch.tensor([p.degrees for p in poses], device=pick.device)[pick] if rotation_searched else None,
    )


# -- the pose fitted to the matches ----------------------------------------------------------------------------


def canvas_scale(resolution: int, cell: int) -> float:
    """k with (a point in the [-1, 1] cell convention of a grid of ``cell``-pixel cells) x k = (the same point in
    the pixel convention of the canvas): the first cell's centre (-1) lies half a cell inside the first pixel."""
    return (resolution - cell) / (resolution - 1) if resolution > 1 else 1.0


MIN_FIT_MATCHES = 8          # a fit needs this many weighted matches ...
MIN_FIT_SPREAD = 0.1         # ... spread over this much of the canvas (their weighted RMS distance from their mean)
FIT_ZOOM = (0.5, 2.0)        # and a zoom in this range; other fits are not trusted


def fit_similarity(flow: torch.Tensor, weight: torch.Tensor, mirrored: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The similarity (scale, turn and shift; after a left-right flip for the ``mirrored`` pairs) that maps the
    content's cell centres closest to their matches, by weighted least squares (closed form: Umeyama's, in complex
    numbers, q = z p + t).

    Args:
        flow: [B, 2, h, w] matched style coordinates of every content cell (cell convention, x first).
        weight: [B, 1, h, w] >= 0, each match's weight (its confidence where trusted, 0 elsewhere).
        mirrored: [B] bool, pairs whose matches are mirrored (fitted as the flip followed by a similarity).
    Returns: (theta [B, 2, 3] with style point = theta[:, :, :2] p + theta[:, :, 2] in the same convention,
    fitted [B] bool). A pair is fitted when at least :data:`MIN_FIT_MATCHES` matches carry weight, spread over
    :data:`MIN_FIT_SPREAD` of the canvas, and the zoom |z| lies in :data:`FIT_ZOOM` (a few matches, or matches
    bunched in one spot, can give any map: a collapse to a point, a half turn); the others get the identity (or the
    flip).
    """
    b, _, h, w = flow.shape
    flip = torch.ones(b, device=flow.device) if mirrored is None else 1 - 2 * mirrored.float()  # x -> flip * x
    signs = torch.stack([flip, torch.ones_like(flip)], 1)                                  # [B, 2]: (flip, 1)
    q = flow.float().flatten(2) * signs[..., None]                                          # unflipped: [B, 2, N]
    p = coordinate_grid(h, w, flow.device).T[None]                                         # [1, 2, N]
    wt = weight.float().flatten(2)                                                          # [B, 1, N]
    total = wt.sum(-1)                                                                      # [B, 1]
    mean = lambda v: (v * wt).sum(-1, keepdim=True) / total.clamp_min(1e-12)[..., None]  # noqa: E731
    mp, mq = mean(p), mean(q)
    (px, py), (qx, qy) = (p - mp).unbind(1), (q - mq).unbind(1)
    norm = (wt[:, 0] * (px * px + py * py)).sum(-1).clamp_min(1e-12)
    re = (wt[:, 0] * (px * qx + py * qy)).sum(-1) / norm   # z = sum w conj(p) q / sum w |p|^2
    im = (wt[:, 0] * (px * qy - py * qx)).sum(-1) / norm
    zoom = torch.sqrt(re * re + im * im)
    spread = torch.sqrt(norm / total[:, 0].clamp_min(1e-12)) / 2  # RMS distance in canvas widths
    fitted = (((wt[:, 0] > 0).sum(-1) >= MIN_FIT_MATCHES) & (spread >= MIN_FIT_SPREAD)
              & (zoom >= FIT_ZOOM[0]) & (zoom <= FIT_ZOOM[1]))
    a = torch.stack([torch.stack([re, -im], -1), torch.stack([im, re], -1)], 1)            # [B, 2, 2]
    t = mq[..., 0] - (a @ mp[..., 0].expand(b, -1)[..., None])[..., 0]
    identity = torch.eye(2, device=flow.device).expand(b, -1, -1)
    a = torch.where(fitted[:, None, None], a, identity)
    t = torch.where(fitted[:, None], t, torch.zeros_like(t))
    a, t = a * signs[..., None], t * signs  # flip back: the x rows times flip
    return torch.cat([a, t[..., None]], -1), fitted


@dataclass(frozen=True)
class FittedPose:
    """A pose per pair: the posed image's pixel p shows the style's pixel ``A p + t`` (``theta`` [B, 2, 3] in the
    canvas's pixel convention, [-1, 1])."""

    theta: torch.Tensor

    @classmethod
    def from_cells(cls, theta: torch.Tensor, resolution: int, cell: int) -> "FittedPose":
        """The pose of a map fitted between grids of ``cell``-pixel cells (their cell convention)."""
        k = canvas_scale(resolution, cell)
        return cls(torch.cat([theta[:, :, :2], theta[:, :, 2:] * k], -1))

    def apply(self, image: torch.Tensor, fill: str = "border") -> torch.Tensor:
        """The posed image of ``image`` [B, C, R, R] (bilinear; outside the style: its border pixels, or 0 with
        ``fill="zeros"``)."""
        grid = F.affine_grid(self.theta.to(image.dtype), list(image.shape), align_corners=True)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode=fill, align_corners=True)

    def to_style(self, flow: torch.Tensor, resolution: int, cell: int = 1) -> torch.Tensor:
        """Flow [B, 2, h, w] into the posed image (the cell convention of ``cell``-pixel cells; 1: pixels) -> the
        same flow into the style as given, clamped to the canvas (``apply`` read the border there)."""
        k = canvas_scale(resolution, cell)
        a, t = self.theta[:, :, :2].to(flow.dtype), self.theta[:, :, 2].to(flow.dtype) / k
        return (torch.einsum("bij,bjhw->bihw", a, flow) + t[..., None, None]).clamp(-1, 1)


def pose_matrices(mirrored: torch.Tensor | None, rotation: torch.Tensor | None, batch: int, device=None) -> torch.Tensor:
    """[B, 2, 3] the maps of the searched poses each pair took (:meth:`Pose.matrix`, no shift): ``mirrored`` [B]
    bool and ``rotation`` [B] degrees, or None for the style as given."""
    flip = torch.ones(batch, device=device) if mirrored is None else 1 - 2 * mirrored.float().to(device)
    t = torch.zeros(batch, device=device) if rotation is None else torch.deg2rad(rotation.float().to(device))
    cos, sin = torch.cos(t), torch.sin(t)
    a = torch.stack([torch.stack([cos * flip, sin * flip], -1), torch.stack([-sin, cos], -1)], 1)
    return torch.cat([a, torch.zeros(batch, 2, 1, device=device)], -1)
