"""Pose search: align the style in a few poses too (its mirror image, small rotations) and keep, per pair, the pose
whose matches are surest (docs/CORRESPONDENCE.md section 6).

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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def in_style_coordinates(alignment, poses: list[Pose], pick: torch.Tensor):
    """An :class:`~coat_model.model.coat.Alignment` assembled from each pair's picked pose, its flows turned back
    into the style's own coordinates; ``mirrored`` and (when some pose is turned) ``rotation`` [B] say which pose
    each pair took."""
    turn = lambda flow: per_pair([p.to_style(flow) for p in poses], pick)  # noqa: E731
    rotation_searched = any(p.degrees for p in poses)
    refined = alignment.refined
    return dataclasses.replace(
        alignment,
        flow={s: turn(f) for s, f in alignment.flow.items()},
        refined=None if refined is None else dataclasses.replace(refined, flow=turn(refined.flow)),
        mirrored=torch.tensor([p.mirrored for p in poses], device=pick.device)[pick],
        rotation=torch.tensor([p.degrees for p in poses], device=pick.device)[pick] if rotation_searched else None,
    )
