"""Matches between different images from a teacher: the model's own inference pipeline as pseudo ground truth.

Warp and self pairs know their flow; random pairs (two different images of the category) do not, and they are what
a transfer meets. ``TrainConfig.teacher_flow`` gives them one: the EMA model aligns each random pair with its
inference path (hard argmax matches, the cycle and pair-wise distance checks, the fill, the per-pixel refinement, the
content-guided median of the displacements; no pose search and no pose fit, which pairs drawn from one training set
rarely need), and its per-pixel flow becomes the pair's flow where the teacher trusts it. Every contrastive term
then treats the pair as it treats a warp pair: the coarse scales through ``flow_targets``, the full-resolution
refinement descriptors through the fine term. No ground truth and no labels reach training: the teacher sees only
the two images.

The teacher is stricter than the soft path's bootstrap (``TrainConfig.bootstrap``), which trusts the student's own
differentiable matches: the hard path's checks decide what is trusted, and the inference steps the network does not
learn (the median's content edges, the fill) shape the targets. The teacher is inference code: its hard path reads
values back to the host, so a step with ``teacher_flow`` waits for the device (a step without it never does).
"""

from __future__ import annotations

import dataclasses

import torch

from ..model.coat import COAT
from ..model.coords import identity_flow
from ..model.gather import pixel_matches
from ..model.matching import Match
from ..model.median import guided_median
from .pairs import PairBatch

#: The teacher's inference options beyond the model's own defaults: no pose search and no pose fit (each costs one
#: more alignment per pose; pairs drawn from one training set are as posed as its images, and on the easy split,
#: whose pairs are like them, neither moved PAA: BENCHMARKS, Quality), and the refinement without its distance prior
#: (the teacher was measured before the prior existed).
TEACHER_OPTIONS = dict(mirror_search=False, rotation_search=0.0, pose_fit=False, refine_prior=0.0)


@torch.no_grad()
def teacher_matches(teacher: COAT, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's per-pixel matches of ``content`` in ``style`` ([B, 3, R, R] in [0, 1]): the flow [B, 2, R, R]
    (style locations in [-1, 1], the convention of :class:`~coat_model.train.pairs.PairBatch`) and where it is
    trusted [B, 1, R, R] bool (the finest cells the hard path trusts; the fill's other pixels are not).

    The content-guided median (the model's ``flow_median`` radius and sigma) is taken over the matches'
    *displacements* (each match less its own pixel), not over the matched positions as inference takes it: an image
    matched to itself then stays the identity. Over positions, a pixel near a part's edge takes a match from the
    part's inside (the colour gets cleaner, the geometry moves by up to the radius): on 100 easy validation pairs of
    the bundled checkpoint, positions gave PAA 0.697 and PCK@0.02 / 0.05 0.306 / 0.715, displacements 0.625 and
    0.353 / 0.730 (BENCHMARKS, Quality). The teacher teaches where things are."""
    c = teacher.encode(content, check_values=False)
    s = teacher.encode(style, check_values=False)
    alignment = teacher.align(c, s, mode="hard", flow_median=0, **TEACHER_OPTIONS)
    pixels = alignment.refined
    if pixels is None:  # no refinement: the finest cells' matches, interpolated to every pixel
        finest = alignment.scales[-1]
        pixels = pixel_matches(Match(alignment.flow[finest], alignment.confidence[finest], alignment.mask[finest]),
                               finest, teacher.config.resolution)
    flow = pixels.flow.float()
    cfg = teacher.config
    if cfg.flow_median and cfg.pixel_matches:
        itself = identity_flow(flow.shape[-1], device=flow.device)
        flow = itself + guided_median(flow - itself, content, cfg.flow_median, cfg.flow_median_sigma)
    return flow, pixels.mask.bool()


def with_teacher_flow(batch: PairBatch, teacher: COAT) -> PairBatch:
    """``batch`` with its random pairs given the teacher's flow (:func:`teacher_matches`): ``flow``, ``flow_valid``
    and ``has_flow`` replaced on those rows, every other row and field unchanged. Which rows are random is read from
    ``batch.kinds`` (Python), so nothing waits for the device."""
    rows = [i for i, kind in enumerate(batch.kinds) if kind == "random"]
    if not rows:
        return batch
    index = torch.tensor(rows, device=batch.content.device)
    flow, valid = teacher_matches(teacher, batch.content[index], batch.style[index])
    return dataclasses.replace(
        batch,
        flow=batch.flow.index_copy(0, index, flow.to(batch.flow.dtype)),
        flow_valid=batch.flow_valid.index_copy(0, index, valid),
        has_flow=batch.has_flow.index_fill(0, index, True),
    )
