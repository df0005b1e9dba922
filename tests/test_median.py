"""The content-guided weighted median of the per-pixel matches (``flow_median``, :mod:`coat_model.model.median`):
the fast path against its one-pixel-at-a-time oracle, flow edges moved onto the content's edges and stray matches
inside a part replaced (closed form), and the option through ``COAT.align``."""

import dataclasses
import json

import pytest
import torch

import coat_model.model.median as median
from coat_model import COAT, COATConfig
from coat_model.model.coords import identity_flow
from coat_model.model.gather import sample_at
from coat_model.model.inputs import COATInputError
from coat_model.model.matching import Match
from coat_model.model.median import guided_median, guided_median_reference


def _random(seed, b=2, c=2, h=9, w=11):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=g, dtype=torch.float64),
            torch.rand(b, 3, h, w, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("with_voters", [False, True])
def test_the_fast_median_equals_the_one_pixel_at_a_time_oracle(radius, with_voters, monkeypatch):
    flow, guide = _random(radius)
    voters = None
    if with_voters:  # some pixels may not vote (0), others a little (a soft mask's edge), one map for the batch
        voters = torch.rand(1, 1, 9, 11, generator=torch.Generator().manual_seed(9))
        voters = torch.where(voters < 0.3, torch.zeros_like(voters), voters)
    expected = guided_median_reference(flow, guide, radius, 40.0, voters)
    assert torch.equal(guided_median(flow, guide, radius, 40.0, voters), expected)
    monkeypatch.setattr(median, "BAND_ELEMENTS", 60)  # one row per band: the bands' seams change nothing
    assert torch.equal(guided_median(flow, guide, radius, 40.0, voters), expected)
    assert not torch.equal(expected, flow)  # (the oracle does something to compare)
    if with_voters:
        assert not torch.equal(expected, guided_median_reference(flow, guide, radius, 40.0))


def test_every_result_is_a_value_of_its_window_and_radius_0_is_the_flow_itself():
    flow, guide = _random(7, b=1, c=1, h=6, w=6)
    out = guided_median(flow, guide, 1, 1e6)  # no guide: the plain weighted (here: unweighted) lower median
    for y in range(6):
        for x in range(6):
            near = flow[0, 0, max(0, y - 1):y + 2, max(0, x - 1):x + 2].flatten().sort().values
            assert out[0, 0, y, x] == near[(len(near) - 1) // 2]
    assert guided_median(flow, guide, 0, 10.0) is flow


def _two_parts(edge=7, size=14):
    """A content of two flat parts, the left one up to column ``edge`` (excluded): [1, 3, size, size]."""
    guide = torch.empty(1, 3, size, size)
    guide[..., :edge] = torch.tensor([0.8, 0.2, 0.2])[:, None, None]
    guide[..., edge:] = torch.tensor([0.1, 0.3, 0.9])[:, None, None]
    return guide


def test_a_flow_edge_a_pixel_off_moves_onto_the_contents_edge():
    left, right = torch.tensor([0.3, -0.2]), torch.tensor([-0.4, 0.5])
    flow = torch.empty(1, 2, 14, 14)
    flow[..., :8] = left[:, None, None]  # the matches jump one column right of the part's edge
    flow[..., 8:] = right[:, None, None]
    out = guided_median(flow, _two_parts(edge=7), 3, 10.0)
    expected = flow.clone()
    expected[..., 7] = right[:, None]
    assert torch.equal(out, expected)
    # without the guide the edge stays where the matches put it
    assert torch.equal(guided_median(flow, _two_parts(edge=7), 3, 1e6), flow)


def test_over_matched_positions_a_pixel_by_a_parts_edge_reads_from_inside_its_part():
    # (over displacements an image matched to itself stays the identity: tests/test_teacher.py)
    itself = identity_flow(14)  # an image matched to itself; the content's left part ends after column 6
    guide = _two_parts(edge=7)
    out = guided_median(itself, guide, 3, 10.0)
    shift = (out - itself)[0] / (2 / 13)  # [2, 14, 14] in pixels; rows 3-10 are 3 or more from the canvas's edges
    assert shift[1, 3:11].abs().max() < 1e-4  # the part's edge is vertical: y stays
    assert (shift[0, 3:11, 6] < -0.5).all() and (shift[0, 3:11, 6] > -3.01).all()  # the last left column reads left
    assert (shift[0, 3:11, 7] > 0.5).all() and (shift[0, 3:11, 7] < 3.01).all()  # the first right one reads right
    assert shift[0, 3:11][:, [2, 3, 9, 10]].abs().max() < 1e-4  # 3 px or more from either edge: itself


def test_stray_matches_inside_a_part_take_the_parts_match():
    flow = torch.empty(1, 2, 14, 14)
    flow[:, 0], flow[:, 1] = 0.25, -0.5
    strays = [(2, 3), (5, 10), (9, 6), (12, 1)]
    for y, x in strays:
        flow[0, :, y, x] = torch.randn(2)
    out = guided_median(flow, _two_parts(edge=14), 2, 10.0)
    assert torch.equal(out[:, 0], torch.full((1, 14, 14), 0.25)) and torch.equal(out[:, 1], torch.full((1, 14, 14), -0.5))


def test_an_image_in_a_padded_canvas_whose_padding_does_not_vote_gets_what_the_image_alone_gets():
    g = torch.Generator().manual_seed(3)
    flow = torch.rand(1, 2, 14, 14, generator=g)
    flow[..., :3] = 0.9  # three columns of padding that look like the image's rim (edge replication)
    guide = torch.rand(1, 3, 14, 14, generator=g)
    guide[..., :3] = guide[..., 3:4]
    voters = torch.ones(1, 1, 14, 14)
    voters[..., :3] = 0
    alone = guided_median(flow[..., 3:], guide[..., 3:], 4, 40.0)
    assert torch.equal(guided_median(flow, guide, 4, 40.0, voters)[..., 3:], alone)
    assert not torch.equal(guided_median(flow, guide, 4, 40.0)[..., 3:], alone)  # voting padding pulls the rim


def _model(**kw):
    torch.manual_seed(0)
    return COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, **kw)).eval()


def _images(n, seed):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_align_takes_the_median_of_its_refined_matches_and_warps_the_style_along_it():
    model = _model()
    c, s = model.encode(_images(2, 1)), model.encode(_images(2, 2))
    with torch.no_grad():
        plain = model.align(c, s)
        smooth = model.align(c, s, flow_median=2, flow_median_sigma=12.0)
    assert plain.options.flow_median == 0 and plain.options.flow_median_sigma is None
    assert smooth.options.flow_median == 2 and smooth.options.flow_median_sigma == 12.0
    assert torch.equal(smooth.refined.flow, guided_median(plain.refined.flow, (c.image + 1) / 2, 2, 12.0))
    assert not torch.equal(smooth.refined.flow, plain.refined.flow)
    assert torch.equal(smooth.refined.mask, plain.refined.mask)  # the median moves matches, not their trust
    torch.testing.assert_close(smooth.warped, sample_at(s.image, smooth.refined.flow, mode="bilinear"))
    for scale in plain.flow:  # the cell matches (what the panel shows) are left as found
        assert torch.equal(smooth.flow[scale], plain.flow[scale])


def test_only_the_image_s_own_pixels_and_the_object_vote_on_a_letterboxed_canvas():
    model = _model()
    portrait = torch.rand(2, 3, 32, 16, generator=torch.Generator().manual_seed(11))
    mask = torch.zeros(2, 1, 32, 16)
    mask[..., 4:28, 2:14] = 1
    s = model.encode(_images(2, 12))
    with torch.no_grad():
        for content_mask in (None, mask):
            c = model.encode(portrait, content_mask)
            plain, smooth = model.align(c, s), model.align(c, s, flow_median=3)
            voters = c.frame.image_area()  # columns 8-23 of the 32 px canvas
            assert voters.sum() == 32 * 16 and voters[..., :, 8:24].all()
            voters = voters if content_mask is None else voters * c.mask
            guide = (c.image + 1) / 2
            assert torch.equal(smooth.refined.flow, guided_median(plain.refined.flow, guide, 3, 10.0, voters))
            assert not torch.equal(smooth.refined.flow, guided_median(plain.refined.flow, guide, 3, 10.0))


def test_a_model_without_per_pixel_matches_records_no_median():
    model = COAT(COATConfig.tiny()).eval()
    c, s = model.encode(_images(1, 13)), model.encode(_images(1, 14))
    with torch.no_grad():
        assert model.align(c, s, flow_median=3).options.flow_median == 0


def test_the_median_runs_in_the_picked_pose_s_coordinates_before_its_flows_are_mapped_back(monkeypatch):
    import coat_model.model.coat as coat_module
    from coat_model.model.pose import candidate_poses, in_style_coordinates

    model = _model(mirror_search=True, rotation_search=20.0)
    c, s = model.encode(_images(2, 3)), model.encode(_images(1, 4))
    poses = candidate_poses(True, 20.0)
    pick = torch.tensor([2, 5])  # +20 degrees as given, -20 degrees mirrored
    monkeypatch.setattr(coat_module, "winners", lambda *args: pick)
    with torch.no_grad():
        smooth = model.align(c, s, flow_median=2)
        assert torch.equal(smooth.rotation, torch.tensor([20.0, -20.0])) and torch.equal(smooth.mirrored, pick == 5)
        for i, k in enumerate(pick.tolist()):  # oracle: the content against the posed style, then mapped back
            posed, both = model.posed(s, poses[k]), torch.tensor([k, k])
            alone = model.align(c, posed, mirror_search=False, rotation_search=0.0, flow_median=2)
            back = in_style_coordinates(alone, poses, both).refined.flow[i]
            assert torch.allclose(smooth.refined.flow[i], back, atol=1e-6)
            raw = in_style_coordinates(model.align(c, posed, mirror_search=False, rotation_search=0.0), poses, both)
            after = guided_median(raw.refined.flow, (c.image + 1) / 2, 2, 10.0)[i]  # the median of mapped flows
            assert not torch.allclose(after, back, atol=1e-6)


def test_flow_median_is_off_by_default_checked_and_never_on_the_soft_path():
    model = _model()
    c, s = model.encode(_images(2, 5)), model.encode(_images(2, 6))
    with torch.no_grad():
        soft = model.align(c, s, mode="soft", flow_median=3)
        assert soft.options.flow_median is None
        assert torch.equal(soft.refined.flow, model.align(c, s, mode="soft").refined.flow)
        assert torch.equal(model.align(c, s, flow_median=0).refined.flow, model.align(c, s).refined.flow)
        for bad in (-1, 9, 1.5, float("nan"), float("inf"), True, "3"):
            with pytest.raises(COATInputError, match="flow_median is a window radius"):
                model.align(c, s, flow_median=bad)
        for bad in (0.0, 1e-30, float("inf"), float("nan")):
            with pytest.raises(COATInputError, match="flow_median_sigma is a colour difference"):
                model.align(c, s, flow_median=2, flow_median_sigma=bad)
    assert COATConfig().flow_median == 0 and COATConfig.small().flow_median == 3
    with pytest.raises(ValueError, match="flow_median is a window radius"):
        COATConfig.tiny(flow_median=-2)
    legacy = {k: v for k, v in dataclasses.asdict(COATConfig.tiny()).items() if not k.startswith("flow_median")}
    assert COATConfig.from_json(json.dumps(legacy)).flow_median == 0  # checkpoints from before the median


def test_the_bench_reports_the_defaults_without_the_median():
    from coat_model.bench.quality import evaluate

    plain = evaluate(_model(), n_pairs=4, split="hard", batch_size=4)
    smooth = evaluate(_model(flow_median=2), n_pairs=4, split="hard", batch_size=4)
    assert "coat_no_median" not in plain and smooth["coat_no_median"] == plain["coat"]
    assert smooth["coat_trusted_warp"] == plain["coat"] and smooth["coat_global"] == plain["coat_global"]
    assert smooth["coat"] != plain["coat"]


def test_given_matches_are_refined_and_smoothed_only_when_asked_as_align_does_its_own():
    model = _model(flow_median=2)
    c, s = model.encode(_images(2, 21)), model.encode(_images(2, 22))
    with torch.no_grad():
        own = model.align(c, s, flow_fill=0.0)
        cells = {sc: Match(flow=own.flow[sc], confidence=own.confidence[sc], mask=own.mask[sc]) for sc in own.scales}
        given = model.align_from_matches(c, s, cells, refine=True, flow_median=2)
        as_given = model.align_from_matches(c, s, cells)
    assert (given.options.refine, given.options.flow_median, given.options.flow_median_sigma) == (True, 2, 10.0)
    assert torch.equal(given.refined.flow, own.refined.flow)
    torch.testing.assert_close(given.warped, own.warped)
    for got, want in zip(given.maps, own.maps):
        torch.testing.assert_close(got, want)
    # by default the cell matches are interpolated as given: nothing searched again, nothing smoothed
    assert as_given.refined is None and as_given.options.flow_median == 0
    assert not torch.equal(as_given.warped, given.warped)
    with pytest.raises(COATInputError, match="flow_median is a window radius"):
        model.align_from_matches(c, s, cells, flow_median=-1)
    flat = COAT(COATConfig.tiny()).eval()  # no per-pixel matches: nothing to smooth, and none recorded
    fc, fs = flat.encode(_images(1, 23)), flat.encode(_images(1, 24))
    with torch.no_grad():
        plain = flat.align(fc, fs)
        cells = {sc: Match(flow=plain.flow[sc], confidence=plain.confidence[sc], mask=plain.mask[sc])
                 for sc in plain.scales}
        assert flat.align_from_matches(fc, fs, cells, refine=True, flow_median=3).options.flow_median == 0
