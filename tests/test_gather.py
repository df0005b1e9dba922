"""The aligned latents as a composition of gather, content mask and fill steps (coat_model/model/gather.py).

The steps replaced one ``COAT._aligned_map`` (with the content mask applied in four places in their own ways):
:func:`_reference_align` below is that implementation, kept verbatim as the oracle. Without a content mask the
composition gives the same bits; with one, the single rule of coat_model/model/gather.py holds on the refined and the
unrefined path alike.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from coat_model import COAT, COATConfig
from coat_model.model.align_options import AlignOptions
from coat_model.model.coords import flow_to_index
from coat_model.model.fill import SIGMA as FILL_SIGMA
from coat_model.model.fill import fill_unconfident
from coat_model.model.gather import (
    cell_gather, keep_content_background, object_cells, restrict_to_object, soft_gather, style_hits,
)
from coat_model.model.matching import Match, hard_match, refine_match, resample_flow, sample_at, soft_match

# -- the implementation before the split (verbatim, model methods as functions), the oracle -----------------------


def _reference_align(model, content, style, *, mode="hard", fill=None, scales=None, refine=None, coarse_to_fine=None,
                     confidence_threshold=None):
    cfg = model.config
    style = style.expand(content.batch_size)
    scales = tuple(s for s in cfg.scales if s in (cfg.scales if scales is None else scales))
    options = AlignOptions.resolve(cfg, mode=mode, scales=scales, fill=fill, refine=refine,
                                   coarse_to_fine=coarse_to_fine, confidence_threshold=confidence_threshold)
    matches, prior = {}, None
    for s in scales:
        dc, ds = content.descriptors[s], style.descriptors[s]
        if mode == "soft":
            layers = [l for l in range(cfg.n_layers) if cfg.layer_scale(l) == s]
            values = torch.cat([style.maps[l] for l in layers], 1) if layers else None
            m = soft_match(dc, ds, values, temperature=options.temperature, cycle_sigma=options.cycle_sigma,
                           threshold=options.confidence_threshold, backend=options.backend,
                           center=cfg.center_descriptors)
        else:
            m = hard_match(
                dc, ds, sim_threshold=options.sim_threshold, cycle_tolerance=cfg.cycle_tolerance,
                cycle_sigma=options.cycle_sigma, geometric=options.geometric, geometric_radius=cfg.geometric_radius,
                geometric_sigma=cfg.geometric_sigma, geometric_threshold=cfg.geometric_threshold,
                confidence_threshold=options.confidence_threshold,
                prior=prior if options.coarse_to_fine else None, search_radius=cfg.search_radius,
                center=cfg.center_descriptors,
            )
        if content.mask is not None:
            fg = F.interpolate(content.mask, size=m.mask.shape[-2:], mode="area") > 0.5
            m.mask, m.confidence = m.mask & fg, m.confidence * fg
        matches[s] = prior = m
    return _reference_assemble(model, content, style, matches, options)


def _reference_assemble(model, content, style, matches, options):
    pixels = _reference_pixel_matches(model, content, style, matches, options)
    maps = [_reference_aligned_map(model, l, content, style, matches, options, pixels)
            for l in range(model.config.n_layers)]
    warped = trust = None
    if model.config.warp_style and pixels is not None and style.image is not None:
        warped = sample_at(style.image, pixels.flow, mode="bilinear")
        trust = (pixels.confidence.detach() if options.mode == "soft" else pixels.mask).to(warped.dtype)
        if content.mask is not None:
            trust = trust * content.mask
    return dict(maps=maps, refined=pixels if options.refine else None, warped=warped, trust=trust,
                flow={s: m.flow for s, m in matches.items()}, confidence={s: m.confidence for s, m in matches.items()},
                mask={s: m.mask for s, m in matches.items()})


def _reference_pixel_matches(model, content, style, matches, options):
    cfg = model.config
    if not (cfg.pixel_latents or cfg.warp_style):
        return None
    finest = min(matches)
    m, r = matches[finest], cfg.resolution
    flow = resample_flow(m.flow, finest, 1, r, trusted=m.mask)
    mask = F.interpolate(m.mask.float(), size=(r, r), mode="nearest") > 0.5
    confidence = F.interpolate(m.confidence.float(), size=(r, r), mode="bilinear", align_corners=False)
    pixels = Match(flow=flow, confidence=confidence.clamp(0, 1), mask=mask)
    if options.refine and 1 in content.descriptors and 1 in style.descriptors:
        pixels = refine_match(content.descriptors[1], style.descriptors[1], pixels, radius=max(1, cfg.refine_radius),
                              temperature=cfg.refine_temperature, mode=options.mode)
        if content.mask is not None:
            pixels.mask = pixels.mask & (content.mask > 0.5)
    return pixels


def _reference_aligned_map(model, layer, content, style, matches, options, pixels=None):
    cfg = model.config
    s = cfg.layer_scale(layer)
    content_map, style_map = content.maps[layer], style.maps[layer]
    reach = 1
    if s in matches and matches[s].aligned is not None:
        layers = [l for l in range(cfg.n_layers) if cfg.layer_scale(l) == s]
        i = layers.index(layer) * cfg.w_dim
        match = matches[s]
        matched = match.aligned[:, i : i + cfg.w_dim]
    else:
        nearest = min(matches, key=lambda m: abs(m.bit_length() - s.bit_length()))
        match = matches[nearest]
        size = content_map.shape[-2:]
        flow, mask = match.flow, match.mask
        sampling = "nearest" if options.mode == "hard" else "bilinear"
        if cfg.pixel_latents and s == 1:
            flow, mask, sampling = pixels.flow, pixels.mask, "bilinear"
            reach = nearest
        elif flow.shape[-2:] != size:
            flow = F.interpolate(flow, size=size, mode="nearest")
            mask = F.interpolate(mask.float(), size=size, mode="nearest") > 0.5
        match = Match(flow=flow, confidence=match.confidence, mask=mask)
        matched = sample_at(style_map, flow, mode=sampling)
    hits = None
    if options.fill in ("propagate", "global"):
        hits = _reference_hit_map(match.flow, match.mask, style_map.shape[-2:])
    mask = match.mask
    if content.mask is not None:
        fg = F.interpolate(content.mask, size=mask.shape[-2:], mode="area") > 0.5
        mask = mask & fg
    out = fill_unconfident(matched, mask, mode=options.fill, style_maps=style_map, style_hits=hits,
                           content_maps=content_map, average=model.w_avg, sigma=FILL_SIGMA * reach)
    if content.mask is not None:
        fg = F.interpolate(content.mask, size=out.shape[-2:], mode="bilinear", align_corners=False)
        out = fg * out + (1 - fg) * content_map
    return out


def _reference_hit_map(flow, mask, size):
    b = flow.shape[0]
    hs, ws = size
    index = flow_to_index(flow, hs, ws)
    hits = torch.zeros(b, hs * ws, device=flow.device)
    hits.scatter_add_(1, index, mask.flatten(1).float())
    return (hits > 0).view(b, 1, hs, ws)


# -- fixtures ---------------------------------------------------------------------------------------------------

CONFIGS = {
    "plain": dict(),
    "pixel": dict(pixel_latents=True),
    "refined": dict(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request):
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(**CONFIGS[request.param])).eval()
    g = torch.Generator().manual_seed(3)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        return model, model.encode(content), model.encode(style)


def _soft_mask():
    """A mask with soft edges and values on both sides of 0.5, not aligned with any cell grid."""
    g = torch.Generator().manual_seed(11)
    m = F.avg_pool2d(torch.rand(2, 1, 32, 32, generator=g), 5, 1, 2)
    return ((m - 0.5) * 6 + 0.5).clamp(0, 1)


def _assert_same(new, ref):
    for key in ("flow", "confidence", "mask"):
        for s in ref[key]:
            assert torch.equal(getattr(new, key)[s], ref[key][s]), (key, s)
    for l, (x, y) in enumerate(zip(new.maps, ref["maps"])):
        assert torch.equal(x, y), f"layer {l}"
    for key in ("warped", "trust"):
        x, y = getattr(new, key), ref[key]
        assert (x is None and y is None) or torch.equal(x, y), key
    if ref["refined"] is not None:
        for key in ("flow", "confidence", "mask"):
            assert torch.equal(getattr(new.refined, key), getattr(ref["refined"], key)), f"refined {key}"


RUNS = [dict(), dict(fill="global"), dict(fill="average"), dict(fill="content"), dict(fill="none"),
        dict(scales=(8,)), dict(scales=(8, 4), fill="global"), dict(confidence_threshold=0.3), dict(refine=False)]


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_the_composition_gives_the_bits_of_the_implementation_it_replaced(setup, mode):
    model, c, style = setup
    with torch.no_grad():
        for kw in RUNS:
            _assert_same(model.align(c, style, mode=mode, **kw), _reference_align(model, c, style, mode=mode, **kw))
        base = model.align(c, style, mode=mode)
        given = {s: Match(flow=base.flow[s], confidence=base.confidence[s], mask=base.mask[s]) for s in base.scales}
        for fill in ("propagate", "global"):
            ref = _reference_assemble(model, c, style, given, AlignOptions.given_matches(model.config, tuple(given), fill))
            _assert_same(model.align_from_matches(c, style, given, fill=fill), ref)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_masked_cell_latents_are_those_of_the_implementation_it_replaced(mode):
    """The rule changed nothing where the old code already applied it: every scale matched, no per-pixel path."""
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny()).eval()
    g = torch.Generator().manual_seed(5)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    binary = (_soft_mask() > 0.5).float()
    with torch.no_grad():
        s = model.encode(style)
        for mask in (binary, _soft_mask()):
            c = model.encode(content, mask)
            for kw in (dict(), dict(fill="global"), dict(coarse_to_fine=False)):
                _assert_same(model.align(c, s, mode=mode, **kw), _reference_align(model, c, s, mode=mode, **kw))


# -- the content mask rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_the_content_mask_rule_holds_alike_on_the_refined_and_the_unrefined_path(mode):
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(**CONFIGS["refined"])).eval()
    g = torch.Generator().manual_seed(4)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    mask = _soft_mask()
    assert ((mask > 0) & (mask <= 0.5)).any() and ((mask > 0.5) & (mask < 1)).any()
    inside = mask > 0.5  # the object, pixel by pixel
    with torch.no_grad():
        s, plain, masked = model.encode(style), model.encode(content), model.encode(content, mask)
        kw = dict(mode=mode, coarse_to_fine=False)  # scales matched independently: the unmasked matches compare
        free = model.align(plain, s, **kw)
        runs = {refine: model.align(masked, s, refine=refine, **kw) for refine in (True, False)}
    for refine, a in runs.items():
        # matches outside the object are untrusted with zero confidence; inside, they are the unmasked ones
        for sc in a.scales:
            cells = object_cells(mask, a.mask[sc].shape[-2:])
            assert torch.equal(a.flow[sc], free.flow[sc])
            assert torch.equal(a.mask[sc], free.mask[sc] & cells)
            assert torch.equal(a.confidence[sc], free.confidence[sc] * cells)
        if refine:
            assert not a.refined.mask[~inside].any() and (a.refined.confidence[~inside] == 0).all()
        # the warped colours: no trust outside the object, and never more than the mask
        assert (a.trust[~inside] == 0).all() and (a.trust <= mask).all()
        for l, (am, cm, fm) in enumerate(zip(a.maps, masked.maps, free.maps)):
            fg = F.interpolate(mask, size=am.shape[-2:], mode="bilinear", align_corners=False).expand_as(am)
            assert torch.equal(am[fg == 0], cm[fg == 0]), f"layer {l}: the background keeps the content's latents"
            sc = model.config.layer_scale(l)
            if sc in a.scales:  # a trusted cell fully inside gets the unmasked run's latent
                same = (fg == 1) & a.mask[sc].expand_as(am)
                assert torch.equal(am[same], fm[same]), f"layer {l}"
    # the trust the decoder reads is the same whether the matches were refined or not (it follows the coarse trust)
    assert torch.equal(runs[True].trust, runs[False].trust)


def test_restricting_to_the_object_is_one_rule_on_every_grid():
    mask = _soft_mask()
    flow = torch.rand(2, 2, 32, 32) * 2 - 1
    match = Match(flow=flow, confidence=torch.rand(2, 1, 32, 32), mask=torch.ones(2, 1, 32, 32, dtype=torch.bool),
                  similarity=torch.rand(2, 1, 32, 32))
    assert restrict_to_object(match, None) is match
    pixels = restrict_to_object(match, mask)
    assert torch.equal(pixels.mask, mask > 0.5)                           # on the canvas: the mask above one half
    assert torch.equal(pixels.confidence, match.confidence * (mask > 0.5))
    assert pixels.flow is flow and pixels.similarity is match.similarity  # the rest kept
    cells = Match(flow=flow[..., ::4, ::4], confidence=torch.ones(2, 1, 8, 8), mask=torch.ones(2, 1, 8, 8).bool())
    coverage = F.avg_pool2d(mask, 4)                                      # the share of each 4 x 4 cell in the object
    assert torch.equal(restrict_to_object(cells, mask).mask, coverage > 0.5)
    assert torch.equal(object_cells(mask, (8, 8)), coverage > 0.5)
    # the background blend: the content's latents where the mask is 0, the aligned ones where it is 1
    aligned, content = torch.full((2, 3, 8, 8), 2.0), torch.full((2, 3, 8, 8), -1.0)
    zero, one = torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    assert torch.equal(keep_content_background(aligned, content, zero), content)
    assert torch.equal(keep_content_background(aligned, content, one), aligned)
    assert keep_content_background(aligned, content, None) is aligned


def test_gather_steps_on_hand_made_matches():
    style = torch.arange(16.0).view(1, 1, 4, 4)
    # matches of a 2 x 2 grid: every cell matched to the style's bottom-right cell, one untrusted
    flow = torch.ones(1, 2, 2, 2)
    mask = torch.tensor([[True, False], [True, True]]).view(1, 1, 2, 2)
    match = Match(flow=flow, confidence=mask.float() * 0.5, mask=mask)
    same = cell_gather(style, match, (2, 2), "nearest")
    assert same.match is match and (same.values == 15).all()
    bigger = cell_gather(style, match, (4, 4), "nearest")  # resized to the map first: flow, mask and confidence
    assert bigger.values.shape == (1, 1, 4, 4) and bigger.match.confidence.shape == (1, 1, 4, 4)
    assert torch.equal(bigger.match.mask, mask.repeat_interleave(2, -1).repeat_interleave(2, -2))
    hits = style_hits(flow, mask, (4, 4))
    assert hits.sum() == 1 and hits[0, 0, 3, 3]
    assert not style_hits(flow, torch.zeros_like(mask), (4, 4)).any()
    # the soft path's attention output holds every layer of the scale: the slot-th block of width channels
    aligned = torch.arange(6.0).view(1, 6, 1, 1).expand(1, 6, 2, 2)
    soft = soft_gather(dataclasses.replace(match, aligned=aligned), 1, 2)
    assert soft.values[0, :, 0, 0].tolist() == [2.0, 3.0] and soft.reach == 1
