"""Training batches of (content, style, target) pairs built from single images (docs/METHOD.md "Training").

Every sample of a global batch has its own random stream, seeded by ``(seed, global position)``: a batch split
over any number of processes holds exactly the same pairs, and a resumed run continues the same sequence.

Making a batch is two steps: :func:`draw_pairs` makes every random number on the CPU (procedural images stay
parameters; files are decoded), which batch workers do ahead of the step, and :meth:`PairRecipe.build` makes the
pixels on the model's device with batched tensor ops and no host synchronisation (rendering, warps, flows,
validity, appearance changes). On a CPU trainer the workers do both.

Pair kinds, chosen per global position with fixed proportions:
- ``warp``: style = a random geometric warp of the image (ground-truth flow), content = a random appearance change
  of the image, target = the image. The only way to rebuild the target's colours is through the correspondence.
- ``self``: style = the image, content = its appearance change, target = the image.
- ``random``: content and style are different images; no target (CCL on confident matches, regularisation,
  adversarial loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..model.coords import (
    cells_to_flow, cells_to_index, cells_to_pixels, containing_cells, flow_to_cells, identity_flow,
)
from .data.warp import (
    WarpDraw, apply_blur, apply_color_remap, apply_palette, apply_warp, draw_blur, draw_color_remap, draw_palette,
    draw_warp,
)
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
    total, edge = sum(mix), 0.0
    for kind, share in zip(KINDS, mix[:-1]):  # plain floats: the step never makes a tensor to count rows
        edge += share
        if u < edge / total:
            return kind
    return KINDS[-1]


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


class Rendered(NamedTuple):
    """Images already made on the CPU (an image folder's decoded files): moved to the device as they are."""

    images: torch.Tensor  # [N, 3, R, R]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def render(self, device=None) -> torch.Tensor:
        return self.images.to(device or "cpu", non_blocking=True)


class AppearanceDraw(NamedTuple):
    """The random draws of :func:`appearance_change` for a batch (CPU tensors; ``None``: that change is off)."""

    remap: tuple[torch.Tensor, torch.Tensor] | None   # (K [B, 3, 3], o [B, 3]) of the global colour remap
    palette: tuple[torch.Tensor, torch.Tensor] | None  # (picked [B] bool, lattices [B, 3, L, L, L])
    blur: tuple[torch.Tensor, torch.Tensor] | None     # (picked [B] bool, sigma [B] pixels)


def draw_appearance(generators: list[torch.Generator], width: int, colour_remap: bool = True,
                    palette_share: float = 0.0, blur_share: float = 0.0) -> AppearanceDraw:
    """What :func:`appearance_change` draws, per sample from its own generator (the same draws whatever the other
    samples pick; with both shares 0, exactly the colour remap's draws, as runs from before these shares had)."""
    n = len(generators)
    pick = lambda share: torch.stack([torch.rand((), generator=g) < share for g in generators])  # noqa: E731
    remap = draw_color_remap(generators, n) if colour_remap else None
    palette = (pick(palette_share), draw_palette(generators, n)) if palette_share > 0 else None
    blur = (pick(blur_share), draw_blur(generators, n, width)) if blur_share > 0 else None
    return AppearanceDraw(remap, palette, blur)


def apply_appearance(images: torch.Tensor, draw: AppearanceDraw) -> torch.Tensor:
    """The appearance change of ``draw`` made where ``images`` are, with tensor ops only."""
    out = images if draw.remap is None else apply_color_remap(images, *draw.remap)
    if draw.palette is not None:
        picked, lattices = draw.palette
        picked = picked.to(images.device, non_blocking=True)[:, None, None, None]
        out = torch.where(picked, apply_palette(images, lattices), out)
    if draw.blur is not None:
        picked, sigma = draw.blur
        picked = picked.to(images.device, non_blocking=True)[:, None, None, None]
        out = torch.where(picked, apply_blur(out, sigma), out)
    return out


def appearance_change(images: torch.Tensor, generators: list[torch.Generator], colour_remap: bool = True,
                      palette_share: float = 0.0, blur_share: float = 0.0) -> torch.Tensor:
    """A same-image pair's content: the image under a random global colour remap (``colour_remap``), then for a
    ``palette_share`` of the samples a random colour lattice instead (parts recoloured independently), then for a
    ``blur_share`` a random blur (textures stop matching). What differs between two instances of a category, in
    generic form: the descriptors learn to match parts, not colours or texture patterns.
    (:func:`draw_appearance` then :func:`apply_appearance`.)
    """
    draw = draw_appearance(generators, images.shape[-1], colour_remap, palette_share, blur_share)
    return apply_appearance(images, draw)


@dataclass
class PairRecipe:
    """Everything random about the pairs at some global positions, drawn on the CPU by :func:`draw_pairs` (batch
    workers do it ahead of the step); :meth:`build` makes their pixels on the model's device with batched tensor
    ops and no host synchronisation: rendering, warps, flows, validity and appearance changes."""

    images: object               # .render(device) -> [N, 3, R, R] and .size (R): each position's own image
    styles: object | None        # .render(device): the other image of each random pair
    kinds: list[str]
    seeds: list[int]
    rows: dict[str, torch.Tensor]  # "random", "same", "warp": row indices (long)
    look: AppearanceDraw | None  # the same-image rows' appearance change
    warp: WarpDraw | None        # the warp rows' warps

    def build(self, device=None) -> PairBatch:
        device = torch.device(device or "cpu")
        images = self.images.render(device)
        n, size = images.shape[0], images.shape[-1]
        rows = {k: v.to(device, non_blocking=True) for k, v in self.rows.items()}
        content, style, target = images.clone(), images.clone(), torch.zeros_like(images)
        flow = identity_flow(size, device).repeat(n, 1, 1, 1)
        valid = torch.ones(n, 1, size, size, dtype=torch.bool, device=device)
        if self.styles is not None:  # another image of the dataset as the style
            style[rows["random"]] = self.styles.render(device)
        if self.look is not None:
            same = images[rows["same"]]
            target[rows["same"]] = same
            content[rows["same"]] = apply_appearance(same, self.look)
        if self.warp is not None:
            warped, warp_flow, warp_valid = apply_warp(images[rows["warp"]], self.warp)
            style[rows["warp"]], flow[rows["warp"]] = warped, warp_flow
            valid[rows["warp"]] = warp_valid.view(-1, 1, size, size)
        has = torch.tensor([k != "random" for k in self.kinds]).to(device, non_blocking=True)
        return PairBatch(
            content=content.clamp(0, 1), style=style.clamp(0, 1), target=target, has_target=has, flow=flow,
            has_flow=has.clone(), flow_valid=valid, kinds=self.kinds, seeds=self.seeds,
        )


def draw_pairs(dataset, sampler: GlobalSampler, positions: list[int], seed: int, mix: tuple[float, float, float],
               colour_remap: bool = True, palette_share: float = 0.0, blur_share: float = 0.0,
               warp_strength: float = 1.0, local_warp: float = 0.0, local_grid: int = 8) -> PairRecipe:
    """The random part of the pairs at the given global positions (a rank's slice of a global batch), on the CPU.

    Every random draw of a sample comes from its own stream (``(seed, position)``), in a fixed order: the other
    image of a random pair, the appearance change, the warp (a flipping image set's flip bits come from streams
    of their own).
    """
    gens = [torch.Generator().manual_seed(mix_seed(seed, p, 7)) for p in positions]
    kinds = [pair_kind(p, mix) for p in positions]
    rows = {"random": [i for i, k in enumerate(kinds) if k == "random"],
            "same": [i for i, k in enumerate(kinds) if k != "random"],
            "warp": [i for i, k in enumerate(kinds) if k == "warp"]}
    images = _draw(dataset, [sampler(p) for p in positions], _Flips(seed, positions, 9))
    styles = look = warp = None
    if rows["random"]:
        jumps = [1 + int(torch.randint(1 << 30, (1,), generator=gens[i])) for i in rows["random"]]
        styles = _draw(dataset, [sampler(positions[i] + j) for i, j in zip(rows["random"], jumps)],
                       _Flips(seed, [positions[i] for i in rows["random"]], 10))
    if rows["same"]:
        look = draw_appearance([gens[i] for i in rows["same"]], images.size, colour_remap, palette_share,
                               blur_share)
    if rows["warp"]:
        warp = draw_warp([gens[i] for i in rows["warp"]], len(rows["warp"]), strength=warp_strength,
                          local=local_warp, local_grid=local_grid)
    return PairRecipe(images, styles, kinds, [mix_seed(seed, p, 8) for p in positions],
                      {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}, look, warp)


def build_pairs(dataset, sampler: GlobalSampler, positions: list[int], seed: int,
                mix: tuple[float, float, float], device=None, **options) -> PairBatch:
    """The pairs at the given global positions, made on ``device`` (:func:`draw_pairs` with ``options``, then
    :meth:`PairRecipe.build`).

    The content of a same-image pair (``warp``, ``self``) is the image with its appearance changed
    (:func:`appearance_change`).
    """
    return draw_pairs(dataset, sampler, positions, seed, mix, **options).build(device)


class _Flips(NamedTuple):
    """Where a flipping dataset's flip bits come from: a stream per position apart from the pair's other draws
    (datasets without flips keep every other draw), so the bits do not depend on the batch a position is in."""

    seed: int
    positions: list[int]
    salt: int

    def bits(self) -> list[bool]:
        return [bool(torch.randint(2, (1,), generator=torch.Generator().manual_seed(mix_seed(self.seed, p, self.salt))))
                for p in self.positions]


def _draw(dataset, indices: list[int], flips: _Flips):
    """The dataset's items as something to render later on the device: its own draw (procedural data renders
    there; files are decoded here, by the batch workers when there are some, and resized and flipped there), or,
    for a dataset with neither ``draw`` nor ``batch``, its images made now."""
    if hasattr(dataset, "draw"):
        return dataset.draw(indices, flips.bits()) if getattr(dataset, "flip", False) else dataset.draw(indices)
    if hasattr(dataset, "batch"):
        return Rendered(dataset.batch(indices))
    return Rendered(torch.stack([dataset[i] for i in indices]))


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
