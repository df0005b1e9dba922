"""Inference defaults of the hard path: untrusted pixel matches filled from their trusted neighbours' flow
(``flow_fill``, :func:`coat_model.model.gather.fill_matches`) and the warped style offered to the gate on the whole
object (``warp_everywhere``). Training (the soft path) and checkpoints without them are unchanged."""

import math

import pytest
import torch
import torch.nn.functional as F

from coat_model import COAT, COATConfig
from coat_model.bench.quality import evaluate
from coat_model.model.inputs import COATInputError
from coat_model.model.gather import fill_matches
from coat_model.model.matching import Match
from coat_model.train.pairs import identity_flow


def _match(flow, mask):
    return Match(flow=flow, confidence=mask.float() * 0.7, mask=mask)


def _fill_reference(flow, mask, sigma):
    """The normalised convolution written out pixel by pixel: W = sum_q k(p - q) M(q) F(q) / sum_q k(p - q) M(q)
    with the separable truncated Gaussian k at sigma, 2 sigma, 4 sigma (the first with any weight wins); pixels
    no trusted match reaches keep their flow."""
    b, _, h, w = flow.shape
    out = flow.clone()
    m = mask.float()
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if mask[i, 0, y, x]:
                    continue
                for s in (sigma, 2 * sigma, 4 * sigma):
                    radius = max(1, math.ceil(3 * s))
                    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / s) ** 2)
                    taps = taps / taps.sum()
                    num, den = torch.zeros(2, dtype=torch.float64), 0.0
                    for dy in range(-radius, radius + 1):
                        for dx in range(-radius, radius + 1):
                            yy, xx = y + dy, x + dx
                            if 0 <= yy < h and 0 <= xx < w and m[i, 0, yy, xx]:
                                k = float(taps[dy + radius] * taps[dx + radius])
                                num += k * flow[i, :, yy, xx].double()
                                den += k
                    if den > 1e-3:
                        out[i, :, y, x] = (num / den).float()
                        break
    return out


def test_fill_gives_untrusted_pixels_the_match_their_trusted_neighbours_agree_on():
    g = torch.Generator().manual_seed(0)
    flow = torch.tensor([0.3, -0.2]).view(1, 2, 1, 1).repeat(1, 1, 24, 24)  # every trusted match: one style point
    mask = torch.ones(1, 1, 24, 24, dtype=torch.bool)
    mask[..., 8:15, 6:13] = False  # a hole of untrusted matches pointing anywhere
    flow[..., 8:15, 6:13] = torch.rand(1, 2, 7, 7, generator=g) * 2 - 1
    filled = fill_matches(_match(flow, mask), sigma=3.0)
    trusted = mask.expand(-1, 2, -1, -1)
    assert torch.equal(filled.flow[trusted], flow[trusted])  # trusted: as they were
    assert torch.equal(filled.mask, mask) and torch.equal(filled.confidence, mask.float() * 0.7)
    assert torch.allclose(filled.flow[..., 8:15, 6:13], torch.tensor([0.3, -0.2]).view(1, 2, 1, 1).expand(1, 2, 7, 7),
                          atol=1e-6)
    assert (flow[..., 8:15, 6:13] - filled.flow[..., 8:15, 6:13]).abs().max() > 0.5  # where they pointed before


def test_fill_equals_the_normalised_convolution_written_out_and_keeps_unreachable_pixels():
    g = torch.Generator().manual_seed(1)
    flow = torch.rand(2, 2, 14, 14, generator=g) * 2 - 1
    mask = torch.rand(2, 1, 14, 14, generator=g) < 0.3
    mask[1] = False
    mask[1, 0, 0, 0] = True  # one trusted match in a corner: 4 sigma = 4 px reaches the near pixels only
    filled = fill_matches(_match(flow, mask), sigma=1.0)
    assert torch.allclose(filled.flow, _fill_reference(flow, mask, 1.0), atol=1e-5)
    assert torch.equal(filled.flow[1, :, 13, 13], flow[1, :, 13, 13])  # nothing trusted within reach: its own


def _model(**kw):
    torch.manual_seed(0)
    return COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, **kw)).eval()


def _pair(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def test_the_fill_moves_only_untrusted_matches_and_the_refinement_searches_around_it():
    model = _model()
    content, style = _pair()
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        plain = model.align(c, s)
        filled = model.align(c, s, flow_fill=2.0)
    trusted = plain.refined.mask.expand(-1, 2, -1, -1)
    assert 0 < trusted.float().mean() < 1
    assert torch.equal(filled.refined.flow[trusted], plain.refined.flow[trusted])
    assert not torch.equal(filled.refined.flow[~trusted], plain.refined.flow[~trusted])
    assert torch.equal(filled.refined.mask, plain.refined.mask)  # still untrusted: the fill is not a match
    for key in plain.flow:  # the cell matches themselves are untouched
        assert torch.equal(filled.flow[key], plain.flow[key]) and torch.equal(filled.mask[key], plain.mask[key])
    assert filled.options.flow_fill == 2.0 and plain.options.flow_fill == 0.0


def test_warp_everywhere_offers_the_warped_style_on_the_whole_object_and_the_open_gate_takes_it():
    model = _model()
    model.decoder.style_gate.bias.data.fill_(60.0)  # a fully open gate
    content, style = _pair(4)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 4:28, 6:26] = 1
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        trusted_only = model.align(c, s)
        everywhere = model.align(c, s, warp_everywhere=True)
        out = model.decode(c, everywhere)
        masked = model.align(model.encode(content, mask=mask), s, warp_everywhere=True)
    assert trusted_only.trust.min() == 0 and everywhere.trust.min() == 1
    grid = everywhere.refined.flow.permute(0, 2, 3, 1)
    assert torch.allclose(out, F.grid_sample(style, grid, mode="bilinear", align_corners=True).clamp(0, 1), atol=1e-5)
    assert torch.equal(masked.trust, mask)  # the content's background keeps its own colours


def test_inference_defaults_come_from_the_config_and_leave_the_soft_path_alone():
    content, style = _pair(5)
    base, tuned = _model(), _model(flow_fill=2.0, warp_everywhere=True)
    assert tuned.config == COATConfig.from_json(tuned.config.to_json())
    with torch.no_grad():
        cb, sb = base.encode(content), base.encode(style)
        ct, st = tuned.encode(content), tuned.encode(style)
        hard_base, hard_tuned = base.align(cb, sb, flow_fill=2.0, warp_everywhere=True), tuned.align(ct, st)
        soft_base, soft_tuned = base.align(cb, sb, mode="soft"), tuned.align(ct, st, mode="soft")
        assert torch.equal(base.decode(cb, hard_base), tuned.decode(ct, hard_tuned))
        assert torch.equal(base.decode(cb, soft_base), tuned.decode(ct, soft_tuned))  # training sees no change
    assert soft_tuned.options.flow_fill is None and soft_tuned.options.warp_everywhere is None
    assert torch.equal(soft_base.trust, soft_tuned.trust)
    with torch.no_grad():
        off = tuned.align(ct, st, flow_fill=0.0, warp_everywhere=False)
        assert torch.equal(tuned.decode(ct, off), base.decode(cb, base.align(cb, sb)))


def test_bad_inference_defaults_say_what_to_set():
    with pytest.raises(ValueError, match="flow_fill"):
        COATConfig.tiny(flow_fill=-1.0)
    with pytest.raises(ValueError, match="warp_style=True"):
        COATConfig.tiny(pixel_latents=True, warp_everywhere=True)
    model = _model()
    content, style = _pair()
    with torch.no_grad(), pytest.raises(COATInputError, match="flow_fill"):
        model.align(model.encode(content), model.encode(style), flow_fill=float("nan"))


def test_the_bench_reports_the_network_without_its_inference_defaults_beside_it():
    plain = evaluate(_model(), n_pairs=4, split="easy", batch_size=4)
    tuned = evaluate(_model(flow_fill=2.0, warp_everywhere=True), n_pairs=4, split="easy", batch_size=4)
    assert "coat_trusted_warp" not in plain and "coat_trusted_warp" in tuned
    assert tuned["coat_trusted_warp"] == plain["coat"]  # the same weights, run as trained
    assert tuned["coat_global"] == plain["coat_global"]  # still no correspondence: no warped colours either
    assert tuned["coat"]["paa"] != plain["coat"]["paa"]


def test_a_displacement_fill_continues_a_shift_to_the_frames_edge_where_a_position_fill_pulls_back():
    size = 24
    shift = torch.tensor([0.10, -0.05]).view(1, 2, 1, 1)
    flow = (identity_flow(size) + shift).clamp(-1, 1)  # every pixel matched 1.15 px right and 0.6 px up
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., 2:14, 2:14] = True  # trusted inside; the rows and columns beyond it (to the frame's edge) are not
    flow[~mask.expand(-1, 2, -1, -1)] = 0.9  # untrusted: pointing anywhere
    truth = (identity_flow(size) + shift).clamp(-1, 1)
    by_shift = fill_matches(_match(flow, mask), sigma=2.0, displacement=True)
    by_position = fill_matches(_match(flow, mask), sigma=2.0)
    inside = (truth > -1) & (truth < 1)  # where the clamp to the frame does not bite
    assert torch.allclose(by_shift.flow[inside], truth[inside], atol=1e-5)
    pixel = 2 / (size - 1)
    edge = by_position.flow[0, 1, 20:, 4:10] - truth[0, 1, 20:, 4:10]  # the bottom rows, below the trusted block
    assert (edge < -3 * pixel).all()  # a position fill sends them back to where the block's last rows look
    trusted = mask.expand(-1, 2, -1, -1)
    assert torch.equal(by_shift.flow[trusted], flow[trusted]) and torch.equal(by_shift.mask, mask)


def test_a_displacement_fill_is_the_normalised_convolution_of_the_displacements_written_out():
    g = torch.Generator().manual_seed(2)
    flow = torch.rand(2, 2, 14, 14, generator=g) * 2 - 1
    mask = torch.rand(2, 1, 14, 14, generator=g) < 0.3
    ident = identity_flow(14)
    filled = fill_matches(_match(flow, mask), sigma=1.0, displacement=True)
    expected = (_fill_reference(flow - ident, mask, 1.0) + ident).clamp(-1, 1)
    expected = torch.where(mask.expand(-1, 2, -1, -1), flow, expected)
    assert torch.allclose(filled.flow, expected, atol=1e-5)


def test_the_displacement_fill_is_an_inference_default_that_needs_the_fill():
    content, style = _pair(6)
    base, tuned = _model(flow_fill=2.0), _model(flow_fill=2.0, fill_displacement=True)
    assert tuned.config == COATConfig.from_json(tuned.config.to_json())
    with torch.no_grad():
        cb, sb = base.encode(content), base.encode(style)
        by_position, by_shift = base.align(cb, sb), tuned.align(cb, sb)
        assert torch.equal(base.align(cb, sb, fill_displacement=True).refined.flow, by_shift.refined.flow)
        off = tuned.align(cb, sb, flow_fill=0.0)
    trusted = by_position.refined.mask.expand(-1, 2, -1, -1)
    assert torch.equal(by_shift.refined.flow[trusted], by_position.refined.flow[trusted])
    assert not torch.equal(by_shift.refined.flow[~trusted], by_position.refined.flow[~trusted])
    assert by_position.options.fill_displacement is False and by_shift.options.fill_displacement is True
    assert off.options.fill_displacement is None  # no fill: nothing to average
    assert "coat_no_displacement" in evaluate(tuned, n_pairs=2, split="easy", batch_size=2)
