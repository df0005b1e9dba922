"""The coordinate conventions of coat_model.model.coords: closed-form round trips flow <-> cells <-> pixels, the grids,
and the exact arithmetic the code used before the conversions were gathered (oracles written out here)."""

import pytest
import torch
import torch.nn.functional as F

from coat_model.model import coords
from coat_model.train.streams import mix_seed


@pytest.mark.parametrize("n", [2, 3, 7, 8, 33])
def test_cell_centres_are_minus_one_to_one_and_round_trip(n):
    cells = torch.arange(n, dtype=torch.float32)
    flow = coords.cells_to_flow(torch.stack([cells, cells]).view(1, 2, 1, n), n, n)
    assert flow[0, :, 0, 0].tolist() == [-1.0, -1.0] and flow[0, :, 0, -1].tolist() == [1.0, 1.0]
    torch.testing.assert_close(flow[0, 0, 0], coords.centre_axis(n))
    torch.testing.assert_close(coords.flow_to_cells(flow, n, n)[0, 0, 0], cells)
    whole = coords.cell_centres_to_flow(torch.stack([cells, cells]).view(1, 2, n), n, n)
    torch.testing.assert_close(whole.view(1, 2, 1, n), flow)  # within an ulp of the division form


def test_rectangular_grids_convert_each_axis_with_its_own_size():
    h, w = 3, 5
    grid = coords.coordinate_grid(h, w)  # [h*w, 2] tokens, (x, y) last
    cells = coords.flow_to_cells(grid, h, w, dim=-1)
    assert cells[:, 0].tolist() == [float(x) for _ in range(h) for x in range(w)]
    assert cells[:, 1].tolist() == [float(y) for y in range(h) for _ in range(w)]
    torch.testing.assert_close(coords.cells_to_flow(cells, h, w, dim=-1), grid)
    index = coords.cells_to_index(cells.long().T[None], h, w)  # [1, h*w]
    assert index[0].tolist() == list(range(h * w))
    torch.testing.assert_close(coords.index_to_cells(index, w)[0].T, cells)
    indices = coords.cell_indices(h, w)
    assert indices.shape == (2, h, w) and indices[:, 2, 4].tolist() == [4, 2]


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_cells_pixels_round_trip_and_the_cell_centre_pixel(scale):
    resolution = 32
    h = resolution // scale
    cells = torch.arange(h, dtype=torch.float32)
    pixels = coords.cells_to_pixels(cells, scale)
    # the centre of cell i is the midpoint of its first and last pixel: i s and i s + s - 1
    torch.testing.assert_close(pixels, cells * scale + (scale - 1) / 2)
    torch.testing.assert_close(coords.pixels_to_cells(pixels, scale), cells)
    assert coords.containing_cells(pixels, scale).tolist() == list(range(h))
    # a cell's centre in flow is the same point whether read on its own grid or on the pixel grid
    on_cells = coords.cells_to_flow(cells, h, h)
    on_pixels = coords.cells_to_flow(pixels, resolution, resolution)
    if h > 1:
        torch.testing.assert_close(on_cells * (h - 1) / h, on_pixels * (resolution - 1) / resolution,
                                   atol=1e-6, rtol=0)
    # a cell's centre from the canvas's top-left corner: its centre pixel plus half a pixel
    torch.testing.assert_close(coords.cell_centre_offsets(cells, scale), pixels + 0.5)


def test_random_flows_round_trip_through_cells_and_pixels():
    g = torch.Generator().manual_seed(0)
    flow = torch.rand(2, 2, 8, 8, generator=g) * 2 - 1
    for h, w in [(8, 8), (4, 16)]:
        back = coords.cells_to_flow(coords.flow_to_cells(flow, h, w), h, w)
        torch.testing.assert_close(back, flow)
    pixels = coords.cells_to_pixels(coords.flow_to_cells(flow, 8, 8), 4)  # cells of scale 4 on a 32 px canvas
    torch.testing.assert_close(coords.cells_to_flow(coords.pixels_to_cells(pixels, 4), 8, 8), flow)


def test_flow_to_index_picks_the_nearest_cell_and_clamps():
    flow = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-0.2, 0.9], [3.0, -7.0]]).T.reshape(1, 2, 1, 4)
    # 5 x 5 grid: cells at -1, -0.5, 0, 0.5, 1
    assert coords.flow_to_index(flow, 5, 5)[0].tolist() == [0, 24, 4 * 5 + 2, 4]


def test_grids_keep_their_behaviour_on_single_element_axes():
    assert coords.centre_axis(1).tolist() == [0.0]
    assert coords.pixel_axis(1).tolist() == [-1.0]
    assert coords.coordinate_grid(1, 3).tolist() == [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    assert coords.identity_flow(1).tolist() == [[[[-1.0]], [[-1.0]]]]
    single = coords.cell_centres_to_flow(torch.tensor([[[0.0], [2.0]]]), 3, 1)
    assert single.flatten().tolist() == [0.0, 1.0]


def test_identity_flow_is_grid_sample_identity():
    image = torch.rand(1, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    flow = coords.identity_flow(9)
    assert flow.shape == (1, 2, 9, 9) and flow.is_contiguous()
    torch.testing.assert_close(coords.pixel_grid(9, 9), flow[0].permute(1, 2, 0))
    out = F.grid_sample(image, flow.permute(0, 2, 3, 1), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, image)


# -- the arithmetic the code used before (oracles: each conversion must stay bit-identical) -----------------------


def test_conversions_are_bit_identical_to_the_formulas_they_replace():
    g = torch.Generator().manual_seed(3)
    flow = torch.rand(2, 2, 8, 8, generator=g) * 2 - 1
    h, w, scale, to_scale, r = 8, 8, 4, 2, 32
    # matching.resample_flow
    old_pixels = (flow + 1) / 2 * max(h - 1, 1) * scale + (scale - 1) / 2
    h_to = r // to_scale
    old_values = (old_pixels - (to_scale - 1) / 2) / to_scale / max(h_to - 1, 1) * 2 - 1
    new_pixels = coords.cells_to_pixels(coords.flow_to_cells(flow, h, h), scale)
    assert torch.equal(new_pixels, old_pixels)
    assert torch.equal(coords.cells_to_flow(coords.pixels_to_cells(new_pixels, to_scale), h_to, h_to), old_values)
    # gather.style_hits / trainer._confident_targets
    cells = ((flow + 1) / 2 * torch.tensor([w - 1, h - 1]).view(1, 2, 1, 1)).round().long()
    old_index = (cells[:, 1].clamp(0, h - 1) * w + cells[:, 0].clamp(0, w - 1)).flatten(1)
    assert torch.equal(coords.flow_to_index(flow, h, w), old_index)
    # bench.quality.cell_flow_to_pixels
    old_image = ((flow + 1) / 2 * torch.tensor([w - 1, h - 1], dtype=flow.dtype).view(1, 2, 1, 1) * scale
                 + (scale - 1) / 2) / (r - 1) * 2 - 1
    new_image = coords.cells_to_flow(coords.cells_to_pixels(coords.flow_to_cells(flow, h, w), scale), r, r)
    assert torch.equal(new_image, old_image)
    # pairs.at_cell_centres
    old_centre = (torch.arange(h) * scale + (scale - 1) / 2) / (r - 1) * 2 - 1
    assert torch.equal(coords.cells_to_flow(coords.cells_to_pixels(torch.arange(h), scale), r, r), old_centre)
    # matching.hard_match (whole cells through the cell size)
    index = torch.randint(0, h * w, (2, 20), generator=g)
    style_cells = torch.stack([index % w, index // w], dim=1).float()
    old_flow = style_cells * torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])[None, :, None] - 1.0
    assert torch.equal(coords.index_to_cells(index, w), style_cells)
    assert torch.equal(coords.cell_centres_to_flow(style_cells, h, w), old_flow)
    # matching.refine_match (pixel coordinates of the full-resolution map)
    size = torch.tensor([w - 1, h - 1], dtype=flow.dtype).view(1, 2, 1, 1)
    pixel = (flow + 1) / 2 * size
    assert torch.equal(coords.flow_to_cells(flow, h, w), pixel)
    refined = pixel.round() + 0.25
    assert torch.equal(coords.cells_to_flow(refined, h, w), refined / size * 2 - 1)  # on the CPU
    # pairs.identity_flow / data.warp / data.faces / baselines: torch.linspace
    line = torch.linspace(-1, 1, 5)
    gy, gx = torch.meshgrid(line, line, indexing="ij")
    assert torch.equal(coords.identity_flow(5), torch.stack([gx, gy])[None])


def test_mix_seed_keeps_the_values_of_the_renderer_seed():
    # values of data.faces._seed before it moved to streams.mix_seed (every dataset item and pair depends on them)
    assert mix_seed(0) == 2576698056503768251
    assert mix_seed(1, 2) == 8223792388187916959
    assert mix_seed(987654321, 5, 7) == 6876244815708757996
    assert mix_seed(-3, 2**70, 8) == 1893988419916706764
    assert mix_seed() == 5700357409661599242
    assert 0 <= mix_seed(12345, 6) < 2**63
