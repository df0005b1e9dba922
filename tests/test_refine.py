"""Matches below the cell (``refine_radius``), the warped-style colour path (``warp_style``), the cycle term, and
old checkpoints giving the outputs they gave before these existed."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from coat_model import COAT, COATConfig
from coat_model.bench.quality import gt_matches
from coat_model.io import grow, load
from coat_model.model.inputs import COATInputError
from coat_model.model.matching import (
    Match, coordinate_grid, cycle_error, refine_match, untokens, window_correlation, window_correlation_reference,
)
from coat_model.train.cli import make_dataset
from coat_model.train.losses import cycle_loss
from coat_model.train.pairs import identity_flow
from coat_model.train.trainer import TrainConfig, Trainer

DATA = Path(__file__).resolve().parent / "data"


def _pixel_grid(r: int) -> torch.Tensor:
    return identity_flow(r)  # [1, 2, R, R], align_corners=True pixel centres


def _descriptors(b, c, r, seed=0):
    return F.normalize(torch.randn(b, c, r, r, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_window_correlation_equals_its_loop_oracle_at_the_borders_too():
    q, k = _descriptors(2, 5, 6, seed=1), _descriptors(2, 5, 7, seed=2)
    centres = torch.randint(-1, 8, (2, 2, 6, 6), generator=torch.Generator().manual_seed(3))
    sims, inside = window_correlation(q, k, centres, radius=2)
    ref_sims, ref_inside = window_correlation_reference(q, k, centres, radius=2)
    assert torch.equal(inside, ref_inside)
    assert torch.allclose(sims, ref_sims, atol=1e-6)
    assert sims.shape == (2, 25, 6, 6)


@pytest.mark.parametrize("shift", [(1, 0), (-2, 1), (3, -3), (0, 2)])
def test_refinement_recovers_a_known_sub_cell_shift(shift):
    """Style = content moved by (dx, dy) pixels; the coarse match is the identity (what a cell-level match of
    scale 4 gives for shifts under a cell). The hard refinement finds the shift exactly wherever the true match
    is inside the image; the soft one within a hundredth of a pixel."""
    r, (dx, dy) = 24, shift
    content = _descriptors(1, 16, r, seed=4)
    style = torch.roll(content, shifts=(dy, dx), dims=(2, 3))  # style pixel (x+dx, y+dy) = content pixel (x, y)
    ones = torch.ones(1, 1, r, r)
    coarse = Match(flow=_pixel_grid(r), confidence=ones, mask=ones.bool())
    truth = _pixel_grid(r) + torch.tensor([dx, dy]).view(1, 2, 1, 1) * 2 / (r - 1)
    ys, xs = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    inside = (xs + dx >= 0) & (xs + dx < r) & (ys + dy >= 0) & (ys + dy < r)
    hard = refine_match(content, style, coarse, radius=3, mode="hard")
    assert torch.allclose(hard.flow[0][:, inside], truth[0][:, inside], atol=1e-5)
    soft = refine_match(content, style, coarse, radius=3, mode="soft", temperature=0.02)
    assert (soft.flow - truth)[0][:, inside].abs().max() * (r - 1) / 2 < 0.01
    assert torch.equal(hard.mask, coarse.mask) and torch.equal(hard.confidence, coarse.confidence)  # carried


def test_the_refinement_prior_moves_only_for_a_clearly_more_alike_pixel_and_keeps_the_sub_pixel_match():
    """One pixel, closed form: its coarse match lies 0.3 px right of pixel (x0, y0), which looks 0.9 alike; the
    pixel 2 to the right looks exactly alike. The penalty there is prior x 4/9, so the search moves for a prior
    below 0.225 and stays for one above; staying keeps the coarse match below the pixel."""
    r, (x0, y0) = 16, (6, 7)
    content, style = _descriptors(1, 16, r, seed=7), _descriptors(1, 16, r, seed=8)
    q = content[0, :, y0, x0]
    other = F.normalize(style[0, :, y0, x0] - (style[0, :, y0, x0] @ q) * q, dim=0)  # orthogonal to q
    style[0, :, y0, x0] = 0.9 * q + (1 - 0.9 ** 2) ** 0.5 * other
    style[0, :, y0, x0 + 2] = q
    window = style[0, :, y0 - 3:y0 + 4, x0 - 3:x0 + 4].reshape(16, -1)
    assert sorted((q @ window).tolist())[-3] < 0.8  # the construction: no third pixel of the window comes close
    ones = torch.ones(1, 1, r, r)
    coarse_flow = _pixel_grid(r) + torch.tensor([0.3, 0.0]).view(1, 2, 1, 1) * 2 / (r - 1)
    coarse = Match(flow=coarse_flow, confidence=ones, mask=ones.bool())
    px = lambda m: (m.flow[0, :, y0, x0] + 1) * (r - 1) / 2  # noqa: E731  the pixel's match in style pixels

    def refined(prior):
        return refine_match(content, style, coarse, radius=3, mode="hard", prior=prior)

    assert torch.allclose(px(refined(0.0)), torch.tensor([x0 + 2.0, y0]), atol=1e-4)
    assert torch.allclose(px(refined(0.2)), torch.tensor([x0 + 2.0, y0]), atol=1e-4)
    stayed = refined(0.25)
    assert torch.allclose(px(stayed), torch.tensor([x0 + 0.3, y0]), atol=1e-4)  # not the rounded pixel x0
    assert stayed.similarity[0, 0, y0, x0].item() == pytest.approx(0.9, abs=1e-5)  # the chosen pixel's


def test_the_refinement_prior_is_an_inference_option_checked_and_recorded():
    torch.manual_seed(0)
    cfg = COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, refine_prior=0.4)
    model = COAT(cfg).eval()
    g = torch.Generator().manual_seed(3)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        assert model.align(c, s).options.refine_prior == 0.4
        assert model.align(c, s, refine_prior=0.0).options.refine_prior == 0.0
        assert model.align(c, s, refine=False).options.refine_prior is None  # nothing refined
        assert model.align(c, s, mode="soft").options.refine_prior is None  # the soft path has no prior
        # a prior too large to ever leave the centre keeps the interpolated matches (the refinement off)
        kept, off, searched = (model.align(c, s, refine_prior=10.0), model.align(c, s, refine=False),
                               model.align(c, s))
        assert torch.equal(kept.warped, off.warped) and all(torch.equal(a, b) for a, b in zip(kept.maps, off.maps))
        assert not torch.equal(searched.warped, off.warped)  # while 0.4 lets some of them move
        with pytest.raises(COATInputError, match="refine_prior is a similarity penalty"):
            model.align(c, s, refine_prior=-1.0)
    with pytest.raises(ValueError, match="refine_prior is a similarity penalty"):
        COATConfig.tiny(refine_prior=float("nan"))
    assert COATConfig.from_json(json.dumps({k: v for k, v in json.loads(COATConfig.small().to_json()).items()
                                            if k != "refine_prior"})).refine_prior == 0.0  # older checkpoints: off


def test_the_bench_reports_the_defaults_without_the_prior():
    from coat_model.bench.quality import evaluate

    cfg = dict(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, resolution=32)
    torch.manual_seed(0)
    plain = COAT(COATConfig.tiny(**cfg)).eval()
    prior = COAT(COATConfig.tiny(**cfg, refine_prior=0.3)).eval()
    prior.load_state_dict(plain.state_dict())
    without, with_prior = (evaluate(m, n_pairs=4, split="easy", batch_size=4) for m in (plain, prior))
    assert "coat_no_prior" not in without and with_prior["coat_no_prior"] == without["coat"]
    assert with_prior["coat_unrefined"] == without["coat_unrefined"]


def test_soft_refinement_passes_gradients_to_descriptors_and_straight_through_to_the_coarse_flow():
    r = 12
    content, style = _descriptors(1, 8, r, 5).requires_grad_(), _descriptors(1, 8, r, 6).requires_grad_()
    flow = (_pixel_grid(r) * 0.9).requires_grad_()
    ones = torch.ones(1, 1, r, r)
    out = refine_match(content, style, Match(flow=flow, confidence=ones, mask=ones.bool()), radius=2, mode="soft")
    out.flow.sum().backward()
    assert content.grad.abs().sum() > 0 and style.grad.abs().sum() > 0
    assert torch.allclose(flow.grad, torch.ones_like(flow))  # inside the clamp: d refined / d coarse = 1


def test_warped_style_path_equals_a_plain_grid_sample_where_every_match_is_confident():
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True, warp_style=True)).eval()
    model.decoder.style_gate.bias.data.fill_(60.0)  # a fully open gate
    g = torch.Generator().manual_seed(1)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    flow = (identity_flow(32) * 0.8 + 0.1).expand(2, -1, -1, -1)  # an affine map, every match visible
    matches = gt_matches(flow, torch.ones(2, 1, 32, 32, dtype=torch.bool), 32, model.config.scales)
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        alignment = model.align_from_matches(c, s, matches)
        out = model.decode(c, alignment)
    assert alignment.trust.min() == 1
    expected = F.grid_sample(style, _pixels(alignment), mode="bilinear", align_corners=True)
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-5)
    # the paper's path: the same latents without the warped colours differ, and n = L reproduces the content path
    with torch.no_grad():
        plain = model.decode(c, alignment, style_strength=0.0)
    assert (plain - out).abs().mean() > 0.05


def _pixels(alignment):
    """The per-pixel flow the warped style was sampled at, as a grid_sample grid."""
    b = alignment.warped.shape[0]
    finest = min(alignment.flow)
    from coat_model.model.matching import resample_flow

    flow = resample_flow(alignment.flow[finest], finest, 1, alignment.warped.shape[-1], trusted=alignment.mask[finest])
    return flow.permute(0, 2, 3, 1).expand(b, -1, -1, -1)


def test_untrusted_pixels_keep_the_rendering():
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True, warp_style=True)).eval()
    g = torch.Generator().manual_seed(2)
    content, style = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    matches = gt_matches(identity_flow(32), torch.zeros(1, 1, 32, 32, dtype=torch.bool), 32, model.config.scales)
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        alignment = model.align_from_matches(c, s, matches)
        assert alignment.trust.max() == 0
        rendered = ((model.decoder(model.mix_latents(c, alignment)) + 1) / 2).clamp(0, 1)  # no warped colours
        assert torch.equal(model.decode(c, alignment), rendered)


def test_cycle_term_is_zero_for_identity_matches_and_positive_for_a_swapped_pair():
    h = 6
    grid = untokens(coordinate_grid(h, h)[None], h, h)
    assert cycle_loss(cycle_error(grid, grid)).item() == pytest.approx(0.0, abs=1e-6)
    swapped = grid.flip(-1)  # every cell matches its mirror image ...
    assert cycle_loss(cycle_error(swapped, grid)).item() > 0.5  # ... but the way back is the identity
    assert cycle_loss(cycle_error(swapped, swapped.clone())).item() == pytest.approx(0.0, abs=1e-5)  # mutual


def test_refined_model_aligns_per_pixel_and_hard_refinement_keeps_the_coarse_trust():
    torch.manual_seed(0)
    cfg = COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True)
    model = COAT(cfg).eval()
    g = torch.Generator().manual_seed(3)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        c, s = model.encode(content), model.encode(style)
        assert c.descriptors[1].shape == (2, cfg.refine_dim, 32, 32)
        hard = model.align(c, s)
        soft = model.align(c, s, mode="soft")
    assert hard.refined.flow.shape == (2, 2, 32, 32) and soft.refined.flow.shape == (2, 2, 32, 32)
    finest = min(hard.flow)
    coarse_mask = F.interpolate(hard.mask[finest].float(), size=(32, 32), mode="nearest") > 0.5
    assert torch.equal(hard.refined.mask, coarse_mask)
    # refined matches stay inside the window around the interpolated coarse ones
    coarse = _pixels(hard).permute(0, 3, 1, 2)
    assert ((hard.refined.flow - coarse).abs() * 31 / 2).max() <= cfg.refine_radius + 0.5 + 1e-4
    assert 1 in COATConfig.tiny(pixel_latents=True, refine_dim=4).descriptor_scales
    with pytest.raises(ValueError, match="pixel_latents"):
        COATConfig.tiny(refine_dim=4)
    with pytest.raises(ValueError, match="refine_dim"):
        COATConfig.tiny(pixel_latents=True, refine_radius=2)
    # the refinement is an inference default: a model with its descriptors can run without it
    assert COATConfig.tiny(pixel_latents=True, refine_dim=4, refine_radius=0).descriptor_scales[-1] == 1


def _term_after(trainer, name):
    batch = trainer._pairs(0)[0]
    counts = trainer._global_counts(0, 0)
    with torch.no_grad():
        return float(trainer.step_module(batch, 0, counts)[1][name])


@pytest.mark.parametrize("term, extra", [("ccl_fine", {}), ("ccl_fine", {"ccl_fine_detail": 4.0}),
                                         ("ccl_fine", {"ccl_fine_exclusion": 0}), ("cycle", {}), ("rec", {})],
                         ids=["ccl_fine", "ccl_fine_detail", "ccl_fine_exclusion", "cycle", "rec"])
def test_a_few_cpu_steps_lower_each_new_term(term, extra):
    """Trained on that term alone (the others weighted 0), a few steps lower it on a fixed batch; detail-weighted
    queries (``ccl_fine_detail``) score another sample of the same batch than uniform ones, and negatives allowed
    next to the positive (``ccl_fine_exclusion`` 0) other negatives than those kept 2 pixels away."""
    torch.manual_seed(0)
    weights = dict(rec_weight=0.0, ssim_weight=0.5, reg_weight=0.0, ccl_weight=0.0, ccl_hybrid_weight=0.0,
                   ccl_fine_weight=0.0, cycle_weight=0.0)
    weights[f"{term}_weight"] = 1.0
    # Every module at the same rate, as the term's own learning is what is tested (with the encoder at 10x, 15 steps
    # of this tiny model, which has no GroupNorm, end at 0.84-1.07 of the start of the fine term)
    weights["encoder_lr_mult"] = 1.0
    model_cfg = COATConfig.tiny(pixel_latents=True, refine_dim=16, refine_radius=2, warp_style=True)
    trainer = Trainer(model_cfg, TrainConfig(steps=15, batch_size=4, seed=3, lr=3e-3, **weights, **extra),
                      make_dataset("procedural:faces", 32, seed=3))
    before = _term_after(trainer, term)
    if extra:
        uniform = Trainer(model_cfg, TrainConfig(steps=15, batch_size=4, seed=3, lr=3e-3, **weights),
                          make_dataset("procedural:faces", 32, seed=3))
        uniform.model.load_state_dict(trainer.model.state_dict())
        assert _term_after(uniform, term) != before
    for _ in range(15):
        trainer.train_step()
    assert _term_after(trainer, term) < before * 0.9


@pytest.mark.parametrize("name", ["plain", "pixel"])
def test_old_checkpoints_give_the_outputs_they_gave_before_refinement_and_warped_colours(name):
    """tests/data/legacy_*.safetensors and their outputs were written by the code before these features."""
    expected = load_file(str(DATA / "legacy_outputs.safetensors"))
    model = load(DATA / f"legacy_{name}.safetensors").eval()
    assert model.config.refine_radius == 0 and not model.config.warp_style
    with torch.no_grad():
        hard, conf = model.transfer(expected["content"], expected["style"])
        c, s = model.encode(expected["content"]), model.encode(expected["style"])
        soft = model.decode(c, model.align(c, s, mode="soft"))
    assert torch.allclose(hard, expected[f"{name}.hard"], atol=1e-6)
    assert torch.allclose(conf, expected[f"{name}.conf"], atol=1e-6)
    assert torch.allclose(soft, expected[f"{name}.soft"], atol=1e-6)


def test_grow_adds_refinement_and_the_gate_keeping_every_weight(tmp_path):
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True))
    model.save(tmp_path / "m.safetensors")
    grown = grow(tmp_path / "m.safetensors", refine_dim=8, refine_radius=2, warp_style=True)
    old = model.state_dict()
    for k, v in grown.state_dict().items():
        if k in old:
            assert torch.equal(v, old[k]), k
    assert "encoder.descriptor.1.0.weight" in grown.state_dict() and "decoder.style_gate.weight" in grown.state_dict()


def test_grow_to_a_higher_resolution_keeps_every_weight_but_the_gate_of_the_last_block(tmp_path):
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True))
    model.save(tmp_path / "m.safetensors")
    grown = grow(tmp_path / "m.safetensors", resolution=64)
    assert grown.config.resolution == 64
    old, new = model.state_dict(), grown.state_dict()
    kept = [k for k in old if not k.startswith("decoder.style_gate.")]
    assert all(torch.equal(new[k], old[k]) for k in kept if new[k].shape == old[k].shape)
    assert sum(new[k].shape != old[k].shape for k in kept) == 0  # only the gate's width follows R
    assert new["decoder.style_gate.weight"].shape[1] != old["decoder.style_gate.weight"].shape[1]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert grown.eval().transfer(x, x)[0].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("name, message", [("ccl_fine_exclusion", "a distance in pixels"),
                                           ("ccl_exclusion", "a distance in cells"),
                                           ("ccl_negatives", "a count of negatives per query")])
def test_the_contrastive_windows_and_counts_are_checked(name, message):
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match=f"{name} is {message}"):
            TrainConfig(**{name: bad})
    assert getattr(TrainConfig(**{name: 0}), name) == 0  # 0 is allowed: no window, or every negative


def test_older_runs_keep_the_exclusions_they_trained_with():
    older = {k: v for k, v in dataclasses.asdict(TrainConfig()).items()
             if k not in ("ccl_fine_exclusion", "ccl_exclusion")}
    config = TrainConfig.from_json(json.dumps(older))  # a run.json from before the options
    assert (config.ccl_fine_exclusion, config.ccl_exclusion) == (2, 2)
