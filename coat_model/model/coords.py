"""Coordinate conventions, in one place (docs/COORDINATES.md).

Three frames describe a position on the model's square canvas of R x R pixels:

- **flow** (normalised): (x, y) in [-1, 1], ``align_corners=True``: -1 is the centre of the first cell (or pixel)
  of an axis, +1 the centre of the last. This is what ``grid_sample(..., align_corners=True)`` reads, what
  :class:`~coat_model.model.matching.Match` stores and what every flow tensor of the project holds.
- **cells**: (x, y) indices of the cells of one scale s (a grid of R/s cells per side); cell i covers pixels
  [i s, (i + 1) s), fractional values lie between cell centres.
- **pixels**: (x, y) pixel indices of the canvas (the cells of scale 1); pixel p's centre is at p.

A cell of scale s has its centre at pixel ``i s + (s - 1) / 2``. Flow tensors are [B, 2, h, w] (the (x, y)
channel on ``dim=1``) unless a function says otherwise; token layouts put (x, y) last (``dim=-1``).

Two grids of [-1, 1] coordinates exist and differ on axes of a single element only: :func:`centre_axis` (the
matcher's cell centres) puts a lone cell at 0, :func:`pixel_axis` (``torch.linspace``, the data pipeline's pixel
grids) at -1. Every conversion here repeats, operation for operation, the arithmetic the code used before it was
gathered here, so results are bit-identical on the CPU (divisors are Python numbers; on CUDA a division by one is a
multiplication by its reciprocal, which can move the refinement's flow, once divided by a tensor, by an ulp).
"""

from __future__ import annotations

import torch

# -- grids ------------------------------------------------------------------------------------------------------


def centre_axis(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[n] cell centres of one axis in [-1, 1]; a single cell sits at 0."""
    if n > 1:
        return torch.linspace(-1, 1, n, device=device, dtype=dtype)
    return torch.zeros(1, device=device, dtype=dtype)


def pixel_axis(n: int, device=None, dtype=None) -> torch.Tensor:
    """[n] pixel centres of one axis in [-1, 1] (``torch.linspace``: a single pixel sits at -1)."""
    return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)


def coordinate_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[h*w, 2] cell centres in [-1, 1], (x, y), row-major (token order)."""
    ys, xs = centre_axis(h, device, dtype), centre_axis(w, device, dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(h * w, 2)


def pixel_grid(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """[h, w, 2] pixel centres in [-1, 1], (x, y): the identity of ``grid_sample``."""
    ys, xs = pixel_axis(h, device, dtype), pixel_axis(w, device, dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)


def identity_flow(size: int, device=None, dtype=None) -> torch.Tensor:
    """[1, 2, size, size] the flow of every pixel to itself (pixel-centre grid, :func:`pixel_axis`)."""
    line = pixel_axis(size, device, dtype)
    gy, gx = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([gx, gy])[None]


def cell_indices(h: int, w: int, device=None) -> torch.Tensor:
    """[2, h, w] long: the (x, y) cell index of every cell."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows, cols], 0).flip(0)


# -- flow <-> cells <-> pixels -------------------------------------------------------------------------------------


def cell_size(h: int, w: int) -> torch.Tensor:
    """Size of one cell in normalised units, (x, y): [2] (a single cell counts as 2, the whole axis)."""
    return torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])


def cell_steps(h: int, w: int) -> tuple[float, float]:
    """:func:`cell_size` as Python numbers (its float32 values), for :func:`per_axis`."""
    sx, sy = cell_size(h, w).tolist()
    return sx, sy


def per_axis(op, t: torch.Tensor, x: float, y: float, dim: int = 1) -> torch.Tensor:
    """``op(t, x)`` on the x component (index 0 along ``dim``) and ``op(t, y)`` on the y component: Python numbers,
    so no constant tensor is copied to the device (on CUDA such a copy waits for the queue)."""
    if x == y:
        return op(t, x)
    return torch.cat([op(t.narrow(dim, 0, 1), x), op(t.narrow(dim, 1, 1), y)], dim)


def flow_to_cells(flow: torch.Tensor, h: int, w: int, dim: int = 1) -> torch.Tensor:
    """Flow in [-1, 1] -> fractional (x, y) cells of an h x w grid: ``(flow + 1) / 2 * (n - 1)``. A grid of one
    cell along an axis maps everything to 0 there."""
    if h == w:
        return (flow + 1) / 2 * (w - 1)
    return per_axis(torch.mul, (flow + 1) / 2, w - 1, h - 1, dim)


def cells_to_flow(cells: torch.Tensor, h: int, w: int, dim: int = 1) -> torch.Tensor:
    """Fractional (x, y) cells of an h x w grid -> flow: ``cells / max(n - 1, 1) * 2 - 1`` (the inverse of
    :func:`flow_to_cells` on grids of two cells or more)."""
    if h == w:
        return cells / max(w - 1, 1) * 2 - 1
    x, y = cells.narrow(dim, 0, 1), cells.narrow(dim, 1, 1)
    return torch.cat([x / max(w - 1, 1), y / max(h - 1, 1)], dim) * 2 - 1


def cell_centres_to_flow(cells: torch.Tensor, h: int, w: int, dim: int = 1) -> torch.Tensor:
    """Whole (x, y) cells of an h x w grid -> the flow of their centres: ``cells * cell_size - 1`` (the hard
    matcher's form; within an ulp of :func:`cells_to_flow`). An axis of a single cell gives 0, as in
    :func:`coordinate_grid`."""
    flow = per_axis(torch.mul, cells, *cell_steps(h, w), dim) - 1.0
    if w == 1 or h == 1:
        flow = per_axis(torch.mul, flow.clamp(-1, 1), float(w > 1), float(h > 1), dim)
    return flow


def cells_to_pixels(cells: torch.Tensor, scale: int) -> torch.Tensor:
    """Cells of scale ``scale`` -> canvas pixels of their centres: ``cells * scale + (scale - 1) / 2``."""
    return cells * scale + (scale - 1) / 2


def pixels_to_cells(pixels: torch.Tensor, scale: int) -> torch.Tensor:
    """Canvas pixels -> fractional cells of scale ``scale`` (the inverse of :func:`cells_to_pixels`)."""
    return (pixels - (scale - 1) / 2) / scale


def containing_cells(pixels: torch.Tensor, scale: int) -> torch.Tensor:
    """Canvas pixels -> the (long) cells of scale ``scale`` that contain them: ``floor(pixels / scale)``."""
    return torch.div(pixels, scale, rounding_mode="floor").long()


def cell_centre_offsets(cells: torch.Tensor, cell: float) -> torch.Tensor:
    """Cells -> the distance of their centres from the canvas's top-left corner, in pixel widths (``cell`` pixels
    per cell): ``(cells + 0.5) * cell``. Pixel centres of :func:`cells_to_pixels` plus half a pixel."""
    return (cells + 0.5) * cell


def index_to_cells(index: torch.Tensor, w: int) -> torch.Tensor:
    """Row-major cell indices [B, N] of a grid ``w`` cells wide -> float (x, y) cells [B, 2, N]."""
    return torch.stack([index % w, index // w], dim=1).float()


def cells_to_index(cells: torch.Tensor, h: int, w: int, dim: int = 1) -> torch.Tensor:
    """Integer (x, y) cells (``dim`` holds x, y) -> row-major indices, each axis clamped into the grid (the
    ``dim`` axis is removed)."""
    x, y = cells.select(dim, 0), cells.select(dim, 1)
    return y.clamp(0, h - 1) * w + x.clamp(0, w - 1)


def flow_to_index(flow: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flow [B, 2, ...] -> [B, N] row-major index of the nearest cell of an h x w grid (clamped into it)."""
    cells = flow_to_cells(flow, h, w).round().long()
    return cells_to_index(cells, h, w).flatten(1)
