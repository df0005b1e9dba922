"""Mirror search: align the style's mirror image too and keep it for the pairs it matches clearly surer
(docs/CORRESPONDENCE.md section 6).

Objects of most categories are left-right symmetric and photographed from either side; a content facing left and a
style facing right match poorly (and the position input prefers the mirrored part on the same side). Aligning the
mirrored style as well costs one more style encoding and one more alignment; per pair, the mirror's alignment wins
when its finest matches are surer on average over the content's object by more than a margin. The style as given is
the prior: a symmetric object (a frontal face) matches its mirror about as well, part for mirrored part, and taking
the mirror on a coin toss would send the style's left side to the content's right. The winner is kept whole (latents
and warped colours read from the mirror image), and its flows are reported in the style's own coordinates: x -> -x
on the [-1, 1] canvas, which is where a mirrored pixel's source lies in the style as given.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .matching import Match


def mirror_flow(flow: torch.Tensor) -> torch.Tensor:
    """Flow [B, 2, h, w] into a mirrored image (x first) -> the same flow into the image itself."""
    return torch.cat([-flow[:, :1], flow[:, 1:]], 1)


def object_confidence(confidence: torch.Tensor, content_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean confidence [B] of the cells [B, 1, h, w] over the content's object (``content_mask`` [B, 1, R, R], the
    share of each cell it covers as weight; every cell without a mask)."""
    confidence = confidence.float()
    if content_mask is None:
        return confidence.flatten(1).mean(1)
    weight = F.adaptive_avg_pool2d(content_mask.float(), confidence.shape[-2:])
    return (confidence * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-6)


def mirror_wins(plain, mirrored, content_mask: torch.Tensor | None, margin: float = 0.0) -> torch.Tensor:
    """[B] bool: the pairs whose mirror alignment is surer at the finest matched scale by more than ``margin``
    (mean confidence over the content's object)."""
    finest = min(plain.confidence)
    return (object_confidence(mirrored.confidence[finest], content_mask)
            > object_confidence(plain.confidence[finest], content_mask) + margin)


def choose(plain, mirrored, pick: torch.Tensor):
    """One :class:`~coat_model.model.coat.Alignment` from two of the same content: ``mirrored``'s pairs where
    ``pick`` [B] holds (its flows turned back into the style's coordinates), ``plain``'s elsewhere, and ``mirrored``
    = ``pick``."""

    def where(a, b, flow=False):
        if a is None:
            return None
        b = mirror_flow(b) if flow else b
        return torch.where(pick.view(-1, *([1] * (a.dim() - 1))), b, a)

    def match(a: Match | None, b: Match | None) -> Match | None:
        if a is None:
            return None
        return Match(**{f.name: where(getattr(a, f.name), getattr(b, f.name), flow=f.name == "flow")
                        for f in dataclasses.fields(Match)})

    return dataclasses.replace(
        plain,
        flow={s: where(f, mirrored.flow[s], flow=True) for s, f in plain.flow.items()},
        confidence={s: where(c, mirrored.confidence[s]) for s, c in plain.confidence.items()},
        mask={s: where(m, mirrored.mask[s]) for s, m in plain.mask.items()},
        maps=[where(a, b) for a, b in zip(plain.maps, mirrored.maps)],
        refined=match(plain.refined, mirrored.refined),
        warped=where(plain.warped, mirrored.warped),
        trust=where(plain.trust, mirrored.trust),
        mirrored=pick,
    )
