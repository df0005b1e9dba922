"""The content-guided local affine fit of the per-pixel matches (``flow_affine``, :mod:`coat_model.model.affine`):
the fast path against its one-pixel-at-a-time oracle, affine fields reproduced exactly also beside a part's edge,
stray and noisy matches pulled onto their part's map (closed form), and the option through ``COAT.align`` and the
bench."""

import dataclasses
import json

import pytest
import torch

import coat_model.model.affine as affine
from coat_model import COAT, COATConfig
from coat_model.model.affine import guided_affine, guided_affine_reference, window_offsets, window_step
from coat_model.model.coords import identity_flow
from coat_model.model.inputs import COATInputError
from coat_model.model.matching import Match
from coat_model.model.median import guided_median


def _random(seed, b=2, c=2, h=9, w=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)


@pytest.mark.parametrize("radius", [1, 3, 9])
@pytest.mark.parametrize("with_voters", [False, True])
def test_the_fast_fit_equals_the_one_pixel_at_a_time_oracle(radius, with_voters, monkeypatch):
    flow, guide = _random(radius)
    voters = None
    if with_voters:  # some pixels may not vote (0), others a little (a soft mask's edge), one map for the batch
        voters = torch.rand(1, 1, 9, 11, generator=torch.Generator().manual_seed(9))
        voters = torch.where(voters < 0.3, torch.zeros_like(voters), voters)
    expected = guided_affine_reference(flow, guide, radius, 40.0, voters)
    torch.testing.assert_close(guided_affine(flow, guide, radius, 40.0, voters), expected, atol=2e-5, rtol=1e-4)
    monkeypatch.setattr(affine, "BAND_ELEMENTS", 60)  # one row per band: the bands' seams change nothing
    torch.testing.assert_close(guided_affine(flow, guide, radius, 40.0, voters), expected, atol=2e-5, rtol=1e-4)
    assert (expected - flow).abs().max() > 0.1  # (the oracle does something to compare)
    if with_voters:
        assert (expected - guided_affine_reference(flow, guide, radius, 40.0)).abs().max() > 1e-3


def test_the_window_is_sampled_at_most_15_a_side_and_radius_0_is_the_flow_itself():
    assert [window_step(r) for r in (1, 7, 8, 14, 15, 21, 28, 32)] == [1, 1, 2, 2, 3, 3, 4, 5]
    for radius in (1, 7, 14, 28, 32):
        offsets = window_offsets(radius)
        side = int(len(offsets) ** 0.5)
        assert side * side == len(offsets) and side <= 15 and [0, 0] in offsets.tolist()
        assert offsets.abs().max() <= radius and offsets.abs().max() > radius - window_step(radius)
    flow, guide = _random(1)
    assert guided_affine(flow, guide, 0, 10.0) is flow


def _two_parts(edge=12, size=24):
    """A content of two flat parts, the left one up to column ``edge`` (excluded): [1, 3, size, size]."""
    guide = torch.empty(1, 3, size, size)
    guide[..., :edge] = torch.tensor([0.8, 0.2, 0.2])[:, None, None]
    guide[..., edge:] = torch.tensor([0.1, 0.3, 0.9])[:, None, None]
    return guide


def _affine_field(size, a, b):
    """flow(p) = a @ p + b over a size x size canvas (p in canvas units): [1, 2, size, size]."""
    p = identity_flow(size)[0]                                                   # [2, H, W]
    return (torch.einsum("ij,jhw->ihw", torch.tensor(a), p) + torch.tensor(b)[:, None, None])[None]


def test_an_affine_map_per_part_is_reproduced_exactly_also_beside_the_parts_edge():
    # two parts, each matched by its own affine map (a part scaled, sheared and shifted against the other):
    # the fit gives back each part's map at every pixel, where the median over positions moves the pixels by the edge
    left = _affine_field(24, [[0.9, 0.1], [0.0, 1.1]], [0.05, -0.1])
    right = _affine_field(24, [[1.2, 0.0], [-0.1, 0.8]], [-0.2, 0.15])
    flow = torch.cat([left[..., :12], right[..., 12:]], -1)
    out = guided_affine(flow, _two_parts(), 6, 2.0)
    torch.testing.assert_close(out, flow, atol=3e-3, rtol=0)  # to within the slope ridge's pull: 1/30 px here
    assert (guided_median(flow, _two_parts(), 6, 2.0) - flow).abs().max() > 0.05


def test_noisy_and_stray_matches_inside_a_part_are_pulled_onto_its_map():
    g = torch.Generator().manual_seed(4)
    truth = _affine_field(24, [[0.95, 0.05], [-0.05, 1.05]], [0.1, 0.0])
    noisy = truth + 0.02 * torch.randn(truth.shape, generator=g)  # about a pixel and a bit of noise everywhere
    strays = [(3, 5), (10, 18), (17, 8), (21, 21)]
    for y, x in strays:
        noisy[0, :, y, x] = torch.rand(2, generator=g) * 2 - 1  # matches far off: the reweighting drops them
    out = guided_affine(noisy, _two_parts(edge=24), 8, 10.0)
    error = lambda f: (f - truth).norm(dim=1)  # noqa: E731
    assert error(out).mean() < 0.3 * error(noisy).mean()
    assert max(error(out)[0, y, x] for y, x in strays) < 0.03
    median = guided_median(noisy, _two_parts(edge=24), 4, 10.0)
    assert error(out).mean() < 0.6 * error(median).mean()  # an average of many beats one of them


def test_an_image_in_a_padded_canvas_whose_padding_does_not_vote_gets_what_the_image_alone_gets():
    g = torch.Generator().manual_seed(3)
    flow = torch.rand(1, 2, 20, 20, generator=g)
    flow[..., :4] = 0.9  # four columns of padding that look like the image's rim (edge replication)
    guide = torch.rand(1, 3, 20, 20, generator=g)
    guide[..., :4] = guide[..., 4:5]
    voters = torch.ones(1, 1, 20, 20)
    voters[..., :4] = 0
    alone = guided_affine(flow[..., 4:], guide[..., 4:], 5, 40.0)
    # (the offsets are normalised by the window, not the canvas: the same fit wherever the image sits)
    torch.testing.assert_close(guided_affine(flow, guide, 5, 40.0, voters)[..., 4:], alone, atol=1e-5, rtol=0)
    assert (guided_affine(flow, guide, 5, 40.0)[..., 4:] - alone).abs().max() > 1e-3  # voting padding pulls the rim


def _model(**kw):
    torch.manual_seed(0)
    return COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, **kw)).eval()


def _images(n, seed):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _encoded(model, content_seed, style_seed):
    """Two contents and two styles of random pixels, encoded."""
    return model.encode(_images(2, content_seed)), model.encode(_images(2, style_seed))


def test_align_fits_its_refined_matches_before_the_median():
    model = _model()
    c, s = _encoded(model, 1, 2)
    with torch.no_grad():
        plain = model.align(c, s)
        fitted = model.align(c, s, flow_affine=5, flow_median_sigma=12.0)
        both = model.align(c, s, flow_affine=5, flow_median=2)
    assert plain.options.flow_affine == 0 and plain.options.flow_median_sigma is None
    assert (fitted.options.flow_affine, fitted.options.flow_median, fitted.options.flow_median_sigma) == (5, 0, 12.0)
    guide = (c.image + 1) / 2
    assert torch.equal(fitted.refined.flow, guided_affine(plain.refined.flow, guide, 5, 12.0))
    assert torch.equal(both.refined.flow, guided_median(guided_affine(plain.refined.flow, guide, 5, 10.0), guide, 2,
                                                        10.0))
    assert torch.equal(fitted.refined.mask, plain.refined.mask)  # the fit moves matches, not their trust
    for scale in plain.flow:  # the cell matches (what the panel shows) are left as found
        assert torch.equal(fitted.flow[scale], plain.flow[scale])


def test_flow_affine_is_off_by_default_checked_never_on_the_soft_path_and_absent_from_old_checkpoints():
    model = _model()
    c, s = _encoded(model, 5, 6)
    with torch.no_grad():
        soft = model.align(c, s, mode="soft", flow_affine=5)
        assert soft.options.flow_affine is None
        assert torch.equal(soft.refined.flow, model.align(c, s, mode="soft").refined.flow)
        assert torch.equal(model.align(c, s, flow_affine=0).refined.flow, model.align(c, s).refined.flow)
        for bad in (-1, 33, 1.5, float("nan"), True, "3"):
            with pytest.raises(COATInputError, match="flow_affine is a window radius"):
                model.align(c, s, flow_affine=bad)
        flat = COAT(COATConfig.tiny()).eval()  # no per-pixel matches: nothing to fit, and none recorded
        fc, fs = flat.encode(_images(1, 13)), flat.encode(_images(1, 14))
        assert flat.align(fc, fs, flow_affine=5).options.flow_affine == 0
    assert COATConfig().flow_affine == 0 and COATConfig.small().flow_affine == 0
    with pytest.raises(ValueError, match="flow_affine is a window radius"):
        COATConfig.tiny(flow_affine=-2)
    legacy = {k: v for k, v in dataclasses.asdict(COATConfig.tiny()).items() if k != "flow_affine"}
    assert COATConfig.from_json(json.dumps(legacy)).flow_affine == 0  # checkpoints from before the fit


def test_given_matches_are_fitted_only_when_asked_as_align_does_its_own():
    model = _model(flow_affine=5)
    c, s = _encoded(model, 21, 22)
    with torch.no_grad():
        own = model.align(c, s, flow_fill=0.0)
        cells = {sc: Match(flow=own.flow[sc], confidence=own.confidence[sc], mask=own.mask[sc]) for sc in own.scales}
        given = model.align_from_matches(c, s, cells, refine=True, flow_affine=5)
        as_given = model.align_from_matches(c, s, cells, refine=True)
    assert (given.options.flow_affine, given.options.flow_median_sigma) == (5, 10.0)
    assert torch.equal(given.refined.flow, own.refined.flow)
    assert as_given.options.flow_affine == 0 and not torch.equal(as_given.refined.flow, given.refined.flow)


def test_the_bench_reports_the_defaults_without_the_fit():
    from coat_model.bench.quality import evaluate

    plain = evaluate(_model(), n_pairs=4, split="hard", batch_size=4)
    fitted = evaluate(_model(flow_affine=5), n_pairs=4, split="hard", batch_size=4)
    assert "coat_no_affine" not in plain and fitted["coat_no_affine"] == plain["coat"]
    assert fitted["coat_trusted_warp"] == plain["coat"] and fitted["coat_global"] == plain["coat_global"]
    assert fitted["coat"] != plain["coat"]


# The wide fit inside large parts (``flow_affine_wide``)

@pytest.mark.parametrize("wide", [4, 9])
def test_the_wide_fit_equals_its_oracle_and_is_off_unless_wider(wide, monkeypatch):
    flow, guide = _random(10 + wide, h=12, w=13)
    guide[..., :6] = torch.tensor([0.3, 0.6, 0.2])[:, None, None]  # a flat part: windows that look like their pixel
    voters = (torch.rand(1, 1, 12, 13, generator=torch.Generator().manual_seed(wide)) > 0.2).float()
    expected = guided_affine_reference(flow, guide, 2, 30.0, voters, wide=wide)
    torch.testing.assert_close(guided_affine(flow, guide, 2, 30.0, voters, wide=wide), expected, atol=2e-5, rtol=1e-4)
    monkeypatch.setattr(affine, "BAND_ELEMENTS", 60)
    torch.testing.assert_close(guided_affine(flow, guide, 2, 30.0, voters, wide=wide), expected, atol=2e-5, rtol=1e-4)
    narrow = guided_affine(flow, guide, 2, 30.0, voters)
    assert (expected - narrow).abs().max() > 0.05  # (the wide fit takes over somewhere)
    for off in (0, 1, 2):  # not wider than the fit: the fit alone
        assert torch.equal(guided_affine(flow, guide, 2, 30.0, voters, wide=off), narrow)


def test_a_large_part_takes_the_wide_fit_and_a_thin_one_keeps_the_narrow_fit():
    # a flat field of one colour with a one-pixel dot of another: the field's windows look like their pixel (share 1
    # far from the dot: the wide fit alone), the dot's does not (1/25 at radius 2, under WIDE_SHARE: the narrow fit)
    g = torch.Generator().manual_seed(8)
    guide = torch.full((1, 3, 40, 40), 0.5)
    guide[0, :, 6, 6] = torch.tensor([0.9, 0.1, 0.1])  # a dot: 1 of 25 in its window
    flow = identity_flow(40) + 0.02 * torch.randn(1, 2, 40, 40, generator=g)  # noise of 0.4 px
    narrow = guided_affine(flow, guide, 2, 5.0)
    wide_fit = guided_affine(flow, guide, 8, 5.0)
    out = guided_affine(flow, guide, 2, 5.0, wide=8)
    assert torch.equal(out[..., 6, 6], narrow[..., 6, 6])  # the dot's share 1/25 < 0.1
    far = (slice(None), slice(None), slice(14, 26), slice(14, 26))  # the field far from the dot and the edges
    torch.testing.assert_close(out[far], wide_fit[far], atol=1e-6, rtol=0)
    truth = identity_flow(40)
    assert (out[far] - truth[far]).abs().mean() < 0.5 * (narrow[far] - truth[far]).abs().mean()  # more averaged


def test_align_takes_the_wide_fit_only_with_a_narrower_one_on_and_checks_it():
    model = _model()
    c, s = _encoded(model, 31, 32)
    guide = (c.image + 1) / 2
    with torch.no_grad():
        wide, plain = model.align(c, s, flow_affine=3, flow_affine_wide=9), model.align(c, s)
        assert wide.options.flow_affine_wide == 9
        assert torch.equal(wide.refined.flow, guided_affine(plain.refined.flow, guide, 3, 10.0, wide=9))
        for narrow_only in (dict(flow_affine=3, flow_affine_wide=3), dict(flow_affine=0, flow_affine_wide=9)):
            assert model.align(c, s, **narrow_only).options.flow_affine_wide == 0
        assert torch.equal(model.align(c, s, flow_affine_wide=9).refined.flow, plain.refined.flow)
        for bad in (-1, 33, 2.5):
            with pytest.raises(COATInputError, match="flow_affine_wide is a window radius"):
                model.align(c, s, flow_affine=3, flow_affine_wide=bad)
        cells = {sc: Match(flow=wide.flow[sc], confidence=wide.confidence[sc], mask=wide.mask[sc])
                 for sc in wide.scales}
        given = model.align_from_matches(c, s, cells, refine=True, flow_affine=3, flow_affine_wide=9)
        assert given.options.flow_affine_wide == 9
    assert COATConfig().flow_affine_wide == 0
    with pytest.raises(ValueError, match="flow_affine_wide is a window radius"):
        COATConfig.tiny(flow_affine_wide=40)
    legacy = {k: v for k, v in dataclasses.asdict(COATConfig.tiny()).items() if k != "flow_affine_wide"}
    assert COATConfig.from_json(json.dumps(legacy)).flow_affine_wide == 0  # checkpoints from before it


def test_the_bench_reports_the_defaults_without_the_wide_fit():
    from coat_model.bench.quality import evaluate

    narrow = evaluate(_model(flow_affine=3), n_pairs=4, split="hard", batch_size=4)
    wide = evaluate(_model(flow_affine=3, flow_affine_wide=9), n_pairs=4, split="hard", batch_size=4)
    assert "coat_no_wide" not in narrow and wide["coat_no_wide"] == narrow["coat"]
    assert wide["coat_no_affine"] == narrow["coat_no_affine"]
    assert wide["coat"] != narrow["coat"]
