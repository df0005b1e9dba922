"""Pose search (``mirror_search``, ``rotation_search``, :mod:`coat_model.model.pose`): the style's mirror image and
the style turned are aligned too, and per pair the pose whose finest matches are surest, less its margin, is kept,
its flows given in the style's own coordinates."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from coat_model import COAT, COATConfig
from coat_model.bench.quality import evaluate
from coat_model.model.inputs import COATInputError
from coat_model.model.coat import Latents
from coat_model.model.pose import Pose, candidate_poses, in_style_coordinates, object_confidence

mirror_flow = Pose(mirrored=True).to_style


def _model(**kw):
    torch.manual_seed(0)
    return COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, **kw)).eval()


def _images(n, seed):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _finest_confidence(alignment):
    return alignment.confidence[min(alignment.confidence)].float().flatten(1).mean(1)


def test_a_mirrored_flow_points_at_the_same_style_pixel_of_the_unmirrored_image():
    style = _images(1, 0)
    flow = torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sample = lambda image, f: F.grid_sample(image, f.permute(0, 2, 3, 1), align_corners=True)  # noqa: E731
    assert torch.allclose(sample(style.flip(-1), flow), sample(style, mirror_flow(flow)), atol=1e-6)
    assert torch.equal(mirror_flow(mirror_flow(flow)), flow) and torch.equal(mirror_flow(flow)[:, 1], flow[:, 1])


def test_mirror_search_keeps_per_pair_the_surer_of_the_style_and_its_mirror_image():
    model = _model()
    content, style = _images(4, 2), _images(4, 3)
    with torch.no_grad():
        c = model.encode(content)
        searched = model.align(c, model.encode(style), mirror_search=True, mirror_margin=0.0)
        given = model.align(c, model.encode(style))
        mirror = model.align(c, model.encode(style.flip(-1)))  # the oracle: the mirror image encoded from scratch
        out = model.decode(c, searched)
        outs = model.decode(c, given), model.decode(c, mirror)
    expected = _finest_confidence(mirror) > _finest_confidence(given)
    assert 0 < expected.sum() < 4, "pick seeds where both sides win somewhere"
    assert searched.options.mirror_margin == 0.0
    assert torch.equal(searched.mirrored, expected) and given.mirrored is None
    for i, m in enumerate(expected.tolist()):
        src = mirror if m else given
        turn = mirror_flow if m else (lambda f: f)
        for s in given.flow:
            assert torch.equal(searched.flow[s][i:i + 1], turn(src.flow[s][i:i + 1]))
            assert torch.equal(searched.mask[s][i], src.mask[s][i])
            assert torch.equal(searched.confidence[s][i], src.confidence[s][i])
        assert torch.equal(searched.refined.flow[i:i + 1], turn(src.refined.flow[i:i + 1]))
        assert torch.equal(searched.warped[i], src.warped[i]) and torch.equal(searched.trust[i], src.trust[i])
        assert all(torch.equal(a[i], b[i]) for a, b in zip(searched.maps, src.maps))
        assert torch.allclose(out[i], outs[m][i], atol=1e-6)
    # the warped colours are the style's own pixels read at the reported flow
    grid = searched.refined.flow.permute(0, 2, 3, 1)
    assert torch.allclose((searched.warped + 1) / 2, F.grid_sample(style, grid, align_corners=True), atol=1e-5)


def test_one_style_for_a_batch_is_mirrored_once_and_the_content_mask_weighs_the_choice():
    model = _model()
    content, style = _images(3, 4), _images(1, 5)
    mask = torch.zeros(3, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1
    with torch.no_grad():
        c = model.encode(content, mask=mask)
        searched = model.align(c, model.encode(style), mirror_search=True, mirror_margin=0.0)
        given = model.align(c, model.encode(style))
        mirror = model.align(c, model.encode(style.flip(-1)))
    finest = min(given.confidence)
    score = lambda a: object_confidence(a.confidence[finest], c.mask)  # noqa: E731
    assert torch.equal(searched.mirrored, score(mirror) > score(given))
    weights = F.adaptive_avg_pool2d(mask, given.confidence[finest].shape[-2:])
    by_hand = (given.confidence[finest] * weights).flatten(1).sum(1) / weights.flatten(1).sum(1)
    assert torch.allclose(score(given), by_hand)


def test_the_config_default_turns_it_on_and_the_soft_path_and_old_models_never_search():
    content, style = _images(2, 6), _images(2, 7)
    base, tuned = _model(), _model(mirror_search=True)
    assert tuned.config == COATConfig.from_json(tuned.config.to_json())
    assert COATConfig.from_json(base.config.to_json()).mirror_search is False  # checkpoints without the field
    assert COATConfig.small().mirror_search is True and COATConfig.small().rotation_search == 20.0
    with torch.no_grad():
        cb, sb, ct, st = base.encode(content), base.encode(style), tuned.encode(content), tuned.encode(style)
        on, forced = tuned.align(ct, st), base.align(cb, sb, mirror_search=True)
        assert on.options.mirror_search is True and base.align(cb, sb).options.mirror_search is False
        assert torch.equal(tuned.decode(ct, on), base.decode(cb, forced))
        off = tuned.align(ct, st, mirror_search=False)
        assert off.mirrored is None and torch.equal(tuned.decode(ct, off), base.decode(cb, base.align(cb, sb)))
        soft = tuned.align(ct, st, mode="soft")
        assert soft.options.mirror_search is None and soft.mirrored is None
        assert torch.equal(tuned.decode(ct, soft), base.decode(cb, base.align(cb, sb, mode="soft")))


def test_each_pair_is_assembled_from_its_picked_pose_and_reported_in_the_style_s_coordinates():
    model = _model()
    with torch.no_grad():
        c = model.encode(_images(2, 8))
        a, b = model.encode(_images(2, 9)), model.encode(_images(2, 10))
        both = Latents.select([a, b], torch.tensor([1, 0]))
        alignment = model.align(c, a)
    assert torch.equal(both.maps[-1][0], b.maps[-1][0]) and torch.equal(both.maps[-1][1], a.maps[-1][1])
    assert torch.equal(both.descriptors[1][0], b.descriptors[1][0]) and torch.equal(both.image[1], a.image[1])
    poses = [Pose(), Pose(mirrored=True), Pose(20.0)]
    turned = in_style_coordinates(alignment, poses, torch.tensor([2, 1]))
    assert torch.equal(turned.mirrored, torch.tensor([False, True])) and torch.equal(turned.rotation,
                                                                                      torch.tensor([20.0, 0.0]))
    for s, f in alignment.flow.items():
        assert torch.allclose(turned.flow[s][:1], poses[2].to_style(f[:1]))
        assert torch.equal(turned.flow[s][1:], mirror_flow(f[1:]))
    assert torch.equal(turned.refined.flow[1:], mirror_flow(alignment.refined.flow[1:]))
    assert turned.maps is alignment.maps and turned.warped is alignment.warped  # already the picked pose's
    assert in_style_coordinates(alignment, poses[:2], torch.tensor([0, 0])).rotation is None  # no pose turned


def test_latents_without_their_image_say_how_to_get_one():
    model = _model()
    with torch.no_grad():
        c, s = model.encode(_images(1, 11)), model.encode(_images(1, 12))
        for search in (dict(mirror_search=True), dict(rotation_search=10)):
            with pytest.raises(COATInputError, match="COAT.encode"):
                model.align(c, dataclasses.replace(s, image=None), **search)
        assert model.align(c, dataclasses.replace(s, image=None)).mirrored is None  # off: not needed


def test_the_bench_reports_each_search_alone_and_the_network_as_trained():
    plain = evaluate(_model(), n_pairs=4, split="hard", batch_size=4)
    mirror = evaluate(_model(mirror_search=True), n_pairs=4, split="hard", batch_size=4)
    assert "coat_no_mirror" not in plain and mirror["coat_no_mirror"] == plain["coat"]
    assert mirror["coat_trusted_warp"] == plain["coat"] and mirror["coat_global"] == plain["coat_global"]
    both = evaluate(_model(mirror_search=True, rotation_search=20.0), n_pairs=4, split="hard", batch_size=4)
    turned = evaluate(_model(rotation_search=20.0), n_pairs=4, split="hard", batch_size=4)
    assert "coat_no_rotation" not in mirror and both["coat_no_rotation"] == mirror["coat"]
    assert both["coat_no_mirror"] == turned["coat"] and both["coat_trusted_warp"] == plain["coat"]


def test_the_mirror_needs_a_lead_of_the_margin_the_style_as_given_is_the_prior():
    model = _model()
    content, style = _images(4, 2), _images(4, 3)  # the pairs of the test above: the mirror wins some of them
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        lead = _finest_confidence(model.align(c, model.mirror(s))) - _finest_confidence(model.align(c, s))
        assert lead.max() > 0
        for margin in (0.0, float(lead.max()) / 2, float(lead.max())):
            searched = model.align(c, s, mirror_search=True, mirror_margin=margin)
            assert torch.equal(searched.mirrored, lead > margin) and searched.options.mirror_margin == margin
        default = model.align(c, s, mirror_search=True)
    assert default.options.mirror_margin == model.config.mirror_margin == 0.07
    assert torch.equal(default.mirrored, lead > 0.07)
    assert model.align(c, s).options.mirror_margin is None  # not searched: no margin used
    with pytest.raises(ValueError, match="mirror_margin"):
        COATConfig.tiny(mirror_margin=-0.1)
    with torch.no_grad(), pytest.raises(COATInputError, match="mirror_margin"):
        model.align(c, s, mirror_search=True, mirror_margin=float("nan"))


# -- rotations -----------------------------------------------------------------------------------------------------


def _pixel_grid(n):
    """The pixel centres of an n x n canvas as a flow [1, 2, n, n] (x first; the align_corners=True convention)."""
    t = torch.linspace(-1, 1, n)
    y, x = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x, y])[None]


def _pose_oracles(model, content_latents, style, poses):
    """Each pose's alignment, its posed style encoded from scratch (what the search must reproduce per pair)."""
    return [model.align(content_latents, model.encode(p.apply(style)), mirror_search=False) for p in poses]


def _assert_each_pair_took_its_pose(model, content_latents, searched, oracles, poses, pick, flow_atol=1e-8):
    """Pair i of the search is ``oracles[pick[i]]``: its pose reported, its flows turned back into the style's
    coordinates, its confidence and its transfer."""
    finest = min(searched.confidence)
    assert torch.equal(searched.rotation, torch.tensor([poses[k].degrees for k in pick]))
    assert torch.equal(searched.mirrored, torch.tensor([poses[k].mirrored for k in pick]))
    with torch.no_grad():
        out = model.decode(content_latents, searched)
        outs = [model.decode(content_latents, o) for o in oracles]
    for i, k in enumerate(pick.tolist()):
        src, turn = oracles[k], poses[k].to_style
        assert torch.allclose(searched.flow[finest][i:i + 1], turn(src.flow[finest][i:i + 1]), atol=flow_atol)
        assert torch.allclose(searched.refined.flow[i:i + 1], turn(src.refined.flow[i:i + 1]), atol=flow_atol)
        assert torch.equal(searched.confidence[finest][i], src.confidence[finest][i])
        assert torch.allclose(out[i], outs[k][i], atol=1e-5)


@pytest.mark.parametrize("pose", [Pose(20.0), Pose(-20.0, True), Pose(90.0), Pose(0.0, True), Pose()])
def test_a_posed_flow_points_at_the_style_pixel_the_posed_image_shows(pose):
    style = _images(2, 13)
    grid = _pixel_grid(32).expand(2, -1, -1, -1)
    sample = lambda image, f: F.grid_sample(image, f.permute(0, 2, 3, 1), align_corners=True)  # noqa: E731
    posed = pose.apply(style)
    flow = pose.to_style(grid)
    assert flow.abs().max() <= 1  # the corners a turn uncovers show the style's border pixels: there they point
    assert torch.allclose(sample(style, flow), posed, atol=1e-5)


def test_poses_turn_clockwise_on_screen_flip_exactly_and_uncover_nothing_of_a_mask():
    image = torch.zeros(1, 1, 32, 32)
    image[..., 0, 0] = 1  # the top-left pixel
    assert Pose(90.0).apply(image)[0, 0, 0, 31] == 1  # clockwise: top-left -> top-right
    assert Pose(90.0, True).apply(image)[0, 0, 31, 31] == 1  # flipped to the top-right, then turned: bottom-right
    assert Pose(-90.0, True).apply(image)[0, 0, 0, 0] == 1  # top-right, turned anticlockwise: top-left
    assert torch.equal(Pose(mirrored=True).apply(image), image.flip(-1)) and Pose().apply(image) is image
    mask = Pose(20.0).apply(torch.ones(1, 1, 32, 32), fill="zeros")
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 16, 16] == 1  # uncovered corners are background
    assert [p.prior(0.07, 0.03) for p in candidate_poses(True, 20)] == pytest.approx([0, 0.07, 0.03, 0.1, 0.03, 0.1])
    assert candidate_poses(False, 0) == [Pose()] and candidate_poses(False, 10) == [Pose(), Pose(10.0), Pose(-10.0)]


def test_rotation_search_keeps_per_pair_the_surest_pose_less_its_margin():
    model = _model()
    content, style = _images(6, 22), _images(6, 23)
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        searched = model.align(c, s, mirror_search=True, mirror_margin=0.01, rotation_search=20, rotation_margin=0.005)
        poses = candidate_poses(True, 20)
        oracles = _pose_oracles(model, c, style, poses)
    scores = torch.stack([_finest_confidence(o) - p.prior(0.01, 0.005) for o, p in zip(oracles, poses)])
    pick = scores.argmax(0)
    assert (pick >= 2).any(), "pick seeds where a turned style wins somewhere"
    assert searched.options.rotation_search == 20.0 and searched.options.rotation_margin == 0.005
    _assert_each_pair_took_its_pose(model, c, searched, oracles, poses, pick, flow_atol=1e-6)
    # the hard path's refined matches sit on the posed image's pixels: the warped colours are the style's own,
    # read once at the reported flow (a turned style is not resampled twice)
    grid = searched.refined.flow.permute(0, 2, 3, 1)
    assert torch.allclose((searched.warped + 1) / 2, F.grid_sample(style, grid, align_corners=True), atol=1e-5)


def test_one_style_for_a_batch_is_posed_once_and_the_content_mask_weighs_the_choice_of_turns():
    model = _model()
    content, style = _images(4, 18), _images(1, 19)
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., 6:26, 8:28] = 1
    poses = candidate_poses(True, 20)
    with torch.no_grad():
        c = model.encode(content, mask=mask)
        searched = model.align(c, model.encode(style), mirror_search=True, mirror_margin=0.0, rotation_search=20,
                               rotation_margin=0.0)
        oracles = _pose_oracles(model, c, style, poses)
    finest = min(searched.confidence)
    pick = torch.stack([object_confidence(o.confidence[finest], c.mask) for o in oracles]).argmax(0)
    assert (pick >= 2).any() and (pick < 2).any(), "pick seeds where turned and level styles both win"
    _assert_each_pair_took_its_pose(model, c, searched, oracles, poses, pick)


def test_rotation_search_is_off_by_default_checked_and_never_on_the_soft_path():
    model = _model(rotation_search=15.0)
    assert COATConfig.from_json(_model().config.to_json()).rotation_search == 0.0
    legacy = {k: v for k, v in dataclasses.asdict(model.config).items() if not k.startswith("rotation")}
    assert COATConfig(**legacy).rotation_search == 0.0 and COATConfig(**legacy).rotation_margin == 0.03
    with torch.no_grad():
        c, s = model.encode(_images(2, 16)), model.encode(_images(2, 17))
        on = model.align(c, s)
        assert on.options.rotation_search == 15.0 and on.options.rotation_margin == 0.03 and on.mirrored is not None
        assert on.rotation is not None and set(on.rotation.tolist()) <= {0.0, 15.0, -15.0}
        off = model.align(c, s, rotation_search=0)
        assert off.rotation is None and off.options.rotation_margin is None
        soft = model.align(c, s, mode="soft")
        assert soft.options.rotation_search is None and soft.rotation is None
        for bad in (dict(rotation_search=50.0), dict(rotation_search=-5.0), dict(rotation_margin=float("nan"))):
            with pytest.raises(COATInputError, match=next(iter(bad))):
                model.align(c, s, **bad)
            with pytest.raises(ValueError, match=next(iter(bad))):
                COATConfig.tiny(**bad)
