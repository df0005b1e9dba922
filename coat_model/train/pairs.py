"""Training batches of (content, style, target) pairs built from single images (docs/METHOD.md "Training").

Every sample of a global batch has its own random stream, seeded by ``(seed, global position)``: a batch split
over any number of processes holds exactly the same pairs, and a resumed run continues the same sequence.

Pair kinds, chosen per global position with fixed proportions:
- ``warp``: style = a random geometric warp of the image (ground-truth flow), content = a random colour remap of
  the image, target = the image. The only way to rebuild the target's colours is through the correspondence.
- ``self``: style = the image, content = its colour remap, target = the image.
- ``random``: content and style are different images; no target (CCL on confident matches, regularisation,
  adversarial loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.coords import (
    cells_to_flow, cells_to_index, cells_to_pixels, containing_cells, flow_to_cells, identity_flow,
)
from .data.warp import random_color_remap, random_warp
from .streams import mix_seed

KINDS = ("warp", "self", "random")


@dataclass
class PairBatch:
    """content, style: [B, 3, R, R] in [0, 1]; target: [B, 3, R, R] (zeros where there is none);
    has_target: [B] bool; flow: [B, 2, R, R] content pixel -> style location in [-1, 1] (identity for self
    pairs); has_flow: [B] bool; flow_valid: [B, 1, R, R] bool; kinds: per-sample kind; seeds: per-sample seeds of the
    loss sampling streams (:mod:`coat_model.train.streams`)."""

    content: torch.Tensor
    style: torch.Tensor
    target: torch.Tensor
    has_target: torch.Tensor
    flow: torch.Tensor
    has_flow: torch.Tensor
    flow_valid: torch.Tensor
    kinds: list[str]
    seeds: list[int]

    def to(self, device) -> "PairBatch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PairBatch(move(self.content), move(self.style), move(self.target), move(self.has_target),
                         move(self.flow), move(self.has_flow), move(self.flow_valid), self.kinds, self.seeds)


def pair_kind(position: int, mix: tuple[float, float, float]) -> str:
    """Deterministic kind of a global position: a low-discrepancy sequence with the given proportions."""
    u = (position * 0.6180339887498949) % 1.0
    edges = torch.tensor(mix, dtype=torch.float64).cumsum(0) / sum(mix)
    return KINDS[int((u >= edges[:-1]).sum())]


class GlobalSampler:
    """Indices of a dataset for any global position: a fresh permutation per epoch (finite datasets, like
    DistributedSampler with shuffling), so every position maps to one index however the batch is split."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed = length, seed
        self._epoch, self._perm = -1, None

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.length, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
            self._epoch = epoch
        return int(self._perm[offset])


def build_pairs(dataset, sampler: GlobalSampler, positions: list[int], seed: int,
                mix: tuple[float, float, float], colour_remap: bool = True) -> PairBatch:
    """The pairs at the given global positions (a rank's slice of a global batch).

    Rendering, colour remaps and warps run batched; every random draw of a sample comes from its own stream.
    """
    n = len(positions)
    images = _batch(dataset, [sampler(p) for p in positions])
    size = images.shape[-1]
    gens = [torch.Generator().manual_seed(mix_seed(seed, p, 7)) for p in positions]
    kinds = [pair_kind(p, mix) for p in positions]
    rand = [i for i, k in enumerate(kinds) if k == "random"]
    same = [i for i, k in enumerate(kinds) if k != "random"]
    warp = [i for i, k in enumerate(kinds) if k == "warp"]
    content, style, target = images.clone(), images.clone(), torch.zeros_like(images)
    flow = identity_flow(size).repeat(n, 1, 1, 1)
    valid = torch.ones(n, 1, size, size, dtype=torch.bool)
    if rand:  # another image of the dataset as the style
        jumps = [1 + int(torch.randint(1 << 30, (1,), generator=gens[i])) for i in rand]
        style[rand] = _batch(dataset, [sampler(positions[i] + j) for i, j in zip(rand, jumps)])
    if same:
        target[same] = images[same]
        if colour_remap:
            content[same] = random_color_remap(images[same], [gens[i] for i in same])
    if warp:
        warped, warp_flow, warp_valid = random_warp(images[warp], [gens[i] for i in warp])
        style[warp], flow[warp], valid[warp] = warped, warp_flow, warp_valid.bool().view(-1, 1, size, size)
    has = torch.tensor([k != "random" for k in kinds])
    return PairBatch(
        content=content.clamp(0, 1), style=style.clamp(0, 1), target=target, has_target=has, flow=flow,
        has_flow=has.clone(), flow_valid=valid, kinds=kinds, seeds=[mix_seed(seed, p, 8) for p in positions],
    )


def _batch(dataset, indices: list[int]) -> torch.Tensor:
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)
    return torch.stack([dataset[i] for i in indices])


def flow_targets(flow: torch.Tensor, valid: torch.Tensor, resolution: int, scale: int, style_cells: tuple[int, int]):
    """Ground-truth style cell of every content cell at one scale.

    Args:
        flow: [B, 2, R, R] content pixel -> style location in [-1, 1] (align_corners=True, pixel centres).
        valid: [B, 1, R, R] bool. scale: the divisor; style_cells: (hs, ws) of the style map.
    Returns: (target [B, h*w] long style cell index, ok [B, h*w] bool).
    """
    f = at_cell_centres(flow, scale)  # [B, 2, h, h] style location
    ok = at_cell_centres(valid.float(), scale, mode="nearest")[:, 0] > 0.5
    pixel = flow_to_cells(f, resolution, resolution)  # style pixels: the cells of scale 1
    cells = containing_cells(pixel, scale)
    hs, ws = style_cells
    inside = (cells[:, 0] >= 0) & (cells[:, 0] < ws) & (cells[:, 1] >= 0) & (cells[:, 1] < hs)
    target = cells_to_index(cells, hs, ws)
    return target.flatten(1), (ok & inside).flatten(1)


def at_cell_centres(maps: torch.Tensor, scale: int, mode: str = "bilinear") -> torch.Tensor:
    """Per-pixel maps [B, C, R, R] read at the centres of the cells of scale ``scale``: [B, C, R/scale, R/scale]."""
    resolution = maps.shape[-1]
    h = resolution // scale
    centre = cells_to_flow(cells_to_pixels(torch.arange(h, device=maps.device), scale), resolution, resolution)  # fp32
    gy, gx = torch.meshgrid(centre, centre, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].expand(maps.shape[0], -1, -1, -1)
    return F.grid_sample(maps, grid.to(maps.dtype), mode=mode, align_corners=True)
