"""Mirror search (``mirror_search``, :mod:`coat_model.model.mirror`): the style's mirror image is aligned too and
kept for the pairs whose finest matches it makes surer by more than ``mirror_margin``, its flows given in the
style's own coordinates."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from coat_model import COAT, COATConfig
from coat_model.bench.quality import evaluate
from coat_model.model.inputs import COATInputError
from coat_model.model.mirror import choose, mirror_flow, object_confidence


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
    assert COATConfig.small().mirror_search is True
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


def test_choose_takes_every_field_of_the_picked_side():
    model = _model()
    with torch.no_grad():
        c = model.encode(_images(2, 8))
        a, b = model.align(c, model.encode(_images(2, 9))), model.align(c, model.encode(_images(2, 10)))
    both = choose(a, b, torch.tensor([True, False]))
    assert torch.equal(both.flow[2][0], mirror_flow(b.flow[2])[0]) and torch.equal(both.flow[2][1], a.flow[2][1])
    assert torch.equal(both.maps[-1][0], b.maps[-1][0]) and torch.equal(both.maps[-1][1], a.maps[-1][1])
    assert torch.equal(both.refined.confidence[0], b.refined.confidence[0])
    assert both.options == a.options and both.mode == a.mode
    none = choose(a, b, torch.tensor([False, False]))
    for field in ("maps", "warped", "trust"):
        x, y = getattr(none, field), getattr(a, field)
        assert all(torch.equal(u, v) for u, v in zip(x, y)) if isinstance(x, list) else torch.equal(x, y)


def test_latents_without_their_image_say_how_to_get_one():
    model = _model()
    with torch.no_grad():
        c, s = model.encode(_images(1, 11)), model.encode(_images(1, 12))
        with pytest.raises(COATInputError, match="COAT.encode"):
            model.align(c, dataclasses.replace(s, image=None), mirror_search=True)
        assert model.align(c, dataclasses.replace(s, image=None)).mirrored is None  # off: not needed


def test_the_bench_reports_the_mirror_search_alone_and_the_network_as_trained():
    plain = evaluate(_model(), n_pairs=4, split="hard", batch_size=4)
    tuned = evaluate(_model(mirror_search=True), n_pairs=4, split="hard", batch_size=4)
    assert "coat_no_mirror" not in plain and tuned["coat_no_mirror"] == plain["coat"]
    assert tuned["coat_trusted_warp"] == plain["coat"] and tuned["coat_global"] == plain["coat_global"]


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
