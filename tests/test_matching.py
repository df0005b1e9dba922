"""Correspondence and confidence (docs/CORRESPONDENCE.md): known shifts, destroyed regions, outliers."""

import pytest
import torch
import torch.nn.functional as F

from coat_model.model.matching import coordinate_grid, geometric_consistency, hard_match, soft_match


def _descriptors(seed, b=1, c=32, h=12, w=12):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, c, h, w, generator=g), dim=1)


def _shift_cells(flow, h, w):
    """Matched style cell minus own cell, in cells (x, y)."""
    cells = (flow + 1) / 2 * torch.tensor([w - 1, h - 1]).view(1, 2, 1, 1)
    own = (coordinate_grid(h, w).T.reshape(1, 2, h, w) + 1) / 2 * torch.tensor([w - 1, h - 1]).view(1, 2, 1, 1)
    return cells - own


def test_identical_features_give_identity_with_full_confidence():
    d = _descriptors(0)
    m = hard_match(d, d)
    torch.testing.assert_close(m.flow, coordinate_grid(12, 12).T.reshape(1, 2, 12, 12))
    assert m.mask.all() and (m.confidence > 0.99).all()


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_known_shift_is_recovered_in_the_interior(mode):
    d = _descriptors(1, h=24, w=24)
    style = torch.roll(d, shifts=(2, -3), dims=(2, 3))  # content cell (y, x) sits at style (y+2, x-3)
    if mode == "hard":
        m = hard_match(d, style)
    else:
        m = soft_match(d, style, temperature=0.02, backend="sdpa")
    # The interior: away from the wrap-around seams by more than the geometric check's radius (3 cells).
    interior = (slice(None), slice(0, 18), slice(7, 24))
    shift = _shift_cells(m.flow, 24, 24)[0][interior]
    torch.testing.assert_close(shift[0], torch.full_like(shift[0], -3.0), atol=0.05, rtol=0)
    torch.testing.assert_close(shift[1], torch.full_like(shift[1], 2.0), atol=0.05, rtol=0)
    assert m.confidence[0][interior].min() > 0.9
    assert m.mask[0][interior].all()


@pytest.mark.parametrize("backend", ["naive", "chunked", "sdpa"])
def test_soft_cycle_confidence_drops_over_a_destroyed_region(backend):
    d = _descriptors(2, h=16, w=16)
    style = d.clone()
    style[..., :, 10:] = _descriptors(99, h=16, w=6)  # columns 10+ of the style replaced by noise
    m = soft_match(d, style, temperature=0.02, backend=backend)
    assert m.confidence[..., :, 10:].mean() < 0.3
    assert m.confidence[..., :, :8].mean() > 0.95


def test_soft_backends_agree():
    d, s = _descriptors(3, h=10, w=10), _descriptors(4, h=10, w=10)
    values = torch.randn(1, 7, 10, 10)
    ref = soft_match(d, s, values, temperature=0.05, backend="naive")
    for backend in ("chunked", "sdpa"):
        m = soft_match(d, s, values, temperature=0.05, backend=backend)
        torch.testing.assert_close(m.flow, ref.flow, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.aligned, ref.aligned, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.confidence, ref.confidence, atol=1e-4, rtol=1e-4)


def test_soft_match_is_differentiable():
    d = _descriptors(5, h=8, w=8).requires_grad_()
    s = _descriptors(6, h=8, w=8)
    values = torch.randn(1, 3, 8, 8, requires_grad=True)
    m = soft_match(d, s, values, temperature=0.05, backend="sdpa")
    (m.aligned.sum() + m.flow.sum()).backward()
    assert d.grad.abs().sum() > 0 and values.grad.abs().sum() > 0


def test_hard_matching_rejects_injected_random_descriptors():
    d = _descriptors(7, h=20, w=20)
    style = d.clone()
    g = torch.Generator().manual_seed(8)
    bad = torch.rand(20, 20, generator=g) < 0.1
    style[0, :, bad] = F.normalize(torch.randn(32, int(bad.sum()), generator=g), dim=0)
    m = hard_match(d, style)
    rejected = (~m.mask[0, 0][bad]).float().mean()
    kept = m.mask[0, 0][~bad].float().mean()
    assert rejected >= 0.9, rejected
    assert kept >= 0.9, kept


def test_geometric_check_keeps_inliers_and_drops_outliers():
    h = w = 24
    g = torch.Generator().manual_seed(9)
    content = coordinate_grid(h, w).T.reshape(1, 2, h, w)
    content_cells = (content + 1) / 2 * (w - 1)
    style_cells = content_cells * 0.8 + 2.0  # a similarity transform: all pair-wise distances scale by 0.8
    outlier = torch.rand(1, 1, h, w, generator=g) < 0.2
    random_cells = torch.rand(1, 2, h, w, generator=g) * (w - 1)
    style_cells = torch.where(outlier, random_cells, style_cells)
    valid = torch.ones(1, 1, h, w, dtype=torch.bool)
    score = geometric_consistency(content_cells, style_cells, valid, radius=3, sigma=1.5)
    score = geometric_consistency(content_cells, style_cells, score >= 0.5, radius=3, sigma=1.5)
    keep = score >= 0.5
    assert keep[~outlier].float().mean() >= 0.95
    assert (~keep[outlier]).float().mean() >= 0.8


def test_coarse_to_fine_restricts_the_search():
    d = _descriptors(10, h=16, w=16)
    coarse = hard_match(d[..., ::2, ::2], d[..., ::2, ::2])
    style = d.clone()
    style[..., 14, 14] = d[..., 1, 1]  # a perfect decoy far away
    style[..., 1, 1] = F.normalize(d[..., 1, 1] + 0.3 * _descriptors(11, h=1, w=1)[..., 0, 0], dim=1)
    cell = lambda m: ((m.flow[0, :, 1, 1] + 1) / 2 * 15).round().tolist()  # noqa: E731
    assert cell(hard_match(d, style)) == [14, 14]  # a global search takes the decoy
    assert cell(hard_match(d, style, prior=coarse, search_radius=2)) == [1, 1]


def _window(shape, seed=1, radius=1, batch=2):
    """A search window around random coarse matches, some centres outside the image, some cells unconfident."""
    from coat_model.model.matching import Match, SearchWindow

    h, w, hs, ws = shape
    g = torch.Generator().manual_seed(seed)
    ph, pw = max(1, h // 2), max(1, w // 2)
    prior = Match(flow=torch.rand(batch, 2, ph, pw, generator=g) * 2.2 - 1.1, confidence=None,
                  mask=torch.rand(batch, 1, ph, pw, generator=g) > 0.3)
    return prior, SearchWindow.around(prior, h, w, hs, ws, radius=radius)


@pytest.mark.parametrize("shape", [(6, 6, 8, 8), (5, 7, 9, 4)])
def test_the_coarse_to_fine_window_is_the_chebyshev_window_of_each_confident_cell(shape):
    """The per-axis window (outer AND) equals the window written as a Chebyshev distance over [rows, Ls, 2]."""
    from coat_model.model.coords import flow_to_cells
    from coat_model.model.matching import tokens

    h, w, hs, ws = shape
    prior, window = _window(shape)
    prior_flow = F.interpolate(prior.flow, size=(h, w), mode="nearest")
    prior_mask = F.interpolate(prior.mask.float(), size=(h, w), mode="nearest")
    centres = flow_to_cells(tokens(prior_flow), hs, ws, dim=-1)                       # [B, L, 2]
    cells = flow_to_cells(coordinate_grid(hs, ws), hs, ws, dim=-1)                    # [Ls, 2]
    chebyshev = (cells[None, None] - centres[:, :, None]).abs().amax(-1)              # [B, L, Ls]
    expected = (chebyshev <= 1.5) | ~tokens(prior_mask)[..., 0, None].bool()
    rows = slice(2, h * w - 1)
    allowed = window.allowed(rows)
    assert torch.equal(allowed, expected[:, rows])
    assert allowed.any(-1).all() and not allowed.all()


@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("shape", [(6, 6, 8, 8), (5, 7, 9, 4), (16, 16, 16, 16), (12, 10, 3, 20)])
def test_window_argmax_equals_the_masked_full_search(shape, radius):
    """The gathered window search gives the masked full search's argmaxes (oracle: ``chunked_argmax`` with the
    window's mask), including unconfident rows, windows partly or wholly outside the grid and centres between
    cells; the scores agree to float rounding."""
    from coat_model.model.attention import chunked_argmax
    from coat_model.model.matching import window_argmax

    h, w, hs, ws = shape
    _, window = _window(shape, seed=h * w + radius, radius=radius, batch=3)
    window.centre[:, 0] = torch.tensor([ws + radius + 0.1, 0.0])  # a window wholly right of the grid
    window.centre[:, 1] = torch.tensor([1.0, -radius - 0.6])       # one wholly above it
    window.centre[:, 2] = torch.tensor([1.5, 2.5])                  # one between four cells: (2r+2)^2 of them
    window.confident[:, :3] = True
    g = torch.Generator().manual_seed(radius)
    q = F.normalize(torch.randn(3, h * w, 8, generator=g), dim=-1)
    k = F.normalize(torch.randn(3, hs * ws, 8, generator=g), dim=-1)
    ref_values, ref_index = chunked_argmax(q, k, allowed=window.allowed, chunk=7)
    values, index = window_argmax(q, k, window)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(values, ref_values, atol=1e-6, rtol=0)
    assert (~window.confident).any()


def test_window_argmax_breaks_ties_like_max():
    """Equal keys tie exactly: both searches take the lowest style index."""
    from coat_model.model.attention import chunked_argmax
    from coat_model.model.matching import window_argmax

    _, window = _window((8, 8, 8, 8), seed=4, radius=2, batch=2)
    g = torch.Generator().manual_seed(5)
    q = F.normalize(torch.randn(2, 64, 4, generator=g), dim=-1)
    k = F.normalize(torch.randn(2, 4, 4, generator=g), dim=-1).repeat_interleave(16, dim=1)  # runs of 16 equal keys
    ref_values, ref_index = chunked_argmax(q, k, allowed=window.allowed)
    values, index = window_argmax(q, k, window)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(values, ref_values, atol=1e-6, rtol=0)
    assert (index % 16 != 0).any()  # windows that start inside a run: the tie is broken inside the window
