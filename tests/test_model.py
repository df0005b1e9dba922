"""The model API: shapes, batch rules, any input size, content path, fills, clear errors (docs/METHOD.md)."""

import json

import pytest
import torch

from coat_model import COAT, COATConfig, COATInputError
from coat_model.model.fill import fill_unconfident
from coat_model.model.layers import GroupNorm


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = COAT(COATConfig.tiny()).eval()
    m.w_avg.normal_()
    return m


def _images(b, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_encode_shapes(model):
    cfg = model.config
    lat = model.encode(_images(2))
    assert set(lat.descriptors) == set(cfg.scales)
    for s, d in lat.descriptors.items():
        assert d.shape == (2, cfg.descriptor_dim, 32 // s, 32 // s)
        torch.testing.assert_close(d.norm(dim=1), torch.ones(2, 32 // s, 32 // s))
    assert len(lat.maps) == cfg.n_layers
    for l, m in enumerate(lat.maps):
        assert m.shape[1] == cfg.w_dim and m.shape[-1] == 32 // cfg.layer_scale(l)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_align_outputs(model, mode):
    c, s = model.encode(_images(2)), model.encode(_images(2, seed=1))
    a = model.align(c, s, mode=mode)
    for sc in model.config.scales:
        h = 32 // sc
        assert a.flow[sc].shape == (2, 2, h, h) and a.flow[sc].abs().max() <= 1
        assert a.confidence[sc].shape == (2, 1, h, h)
        assert 0 <= a.confidence[sc].min() and a.confidence[sc].max() <= 1
        assert a.mask[sc].dtype == torch.bool
    assert [m.shape for m in a.maps] == [m.shape for m in c.maps]


def test_align_from_matches_rebuilds_the_hard_alignment_from_its_own_matches(model):
    from coat_model.model.matching import Match

    c, s = model.encode(_images(2)), model.encode(_images(1, seed=1))   # one style for two contents
    a = model.align(c, s)
    matches = {sc: Match(flow=a.flow[sc], confidence=a.confidence[sc], mask=a.mask[sc]) for sc in a.scales}
    b = model.align_from_matches(c, s, matches)
    for got, want in zip(b.maps, a.maps):
        torch.testing.assert_close(got, want)
    # Matches that send every cell to style cell (0, 0) give every aligned map the style's value there.
    corner = {sc: Match(flow=-torch.ones_like(m.flow), confidence=torch.ones_like(m.confidence),
                        mask=torch.ones_like(m.mask)) for sc, m in matches.items()}
    e = model.align_from_matches(c, s, corner, fill="none")
    for l, m in enumerate(e.maps):
        torch.testing.assert_close(m, s.maps[l][:, :, :1, :1].expand(2, -1, *m.shape[-2:]))


def test_align_from_matches_refuses_matches_it_cannot_use(model):
    from coat_model.model.matching import Match

    c, s = model.encode(_images(2)), model.encode(_images(2, seed=1))
    m = model.align(c, s)
    good = {sc: Match(flow=m.flow[sc], confidence=m.confidence[sc], mask=m.mask[sc]) for sc in m.scales}
    with pytest.raises(COATInputError, match="keyed by the model's scales"):
        model.align_from_matches(c, s, {3: good[model.config.scales[0]]})
    with pytest.raises(COATInputError, match="keyed by the model's scales"):
        model.align_from_matches(c, s, {})
    sc = model.config.scales[-1]
    small = Match(flow=good[sc].flow[:, :, :2, :2], confidence=good[sc].confidence, mask=good[sc].mask)
    with pytest.raises(COATInputError, match=f"scale 1/{sc}: flow must be"):
        model.align_from_matches(c, s, {sc: small})
    with pytest.raises(COATInputError, match="fill must be one of"):
        model.align_from_matches(c, s, good, fill="smear")


def test_all_content_layers_reproduce_the_content_path(model):
    content, style = _images(2), _images(2, seed=3)
    c = model.encode(content)
    a = model.align(c, model.encode(style))
    same_style = model.align(c, c)
    out = model.decode(c, a, n_content_layers=model.n_layers)
    ref = model.decode(c, same_style, n_content_layers=model.n_layers)
    torch.testing.assert_close(out, ref)
    reconstruction = ((model.decoder(c.maps) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(out, reconstruction)
    zero_strength = model.decode(c, a, n_content_layers=1, style_strength=0.0)
    torch.testing.assert_close(zero_strength, reconstruction)


def test_style_changes_the_output_beyond_n(model):
    c = model.encode(_images(1))
    a1, a2 = model.align(c, model.encode(_images(1, seed=5))), model.align(c, model.encode(_images(1, seed=6)))
    assert not torch.allclose(model.decode(c, a1, n_content_layers=2), model.decode(c, a2, n_content_layers=2))


def test_global_fill_gives_spatially_constant_latents(model):
    c, s = model.encode(_images(1)), model.encode(_images(1, seed=7))
    a = model.align(c, s, fill="global", confidence_threshold=2.0)  # nothing confident -> all filled
    for m in a.maps:
        assert torch.allclose(m, m.mean(dim=(2, 3), keepdim=True).expand_as(m), atol=1e-6)


def test_fill_modes_on_hand_made_maps():
    matched = torch.arange(16.0).view(1, 1, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 1, 1] = 0
    kw = dict(style_maps=torch.full((1, 1, 4, 4), 7.0), style_hits=None, content_maps=torch.full((1, 1, 4, 4), -1.0),
              average=torch.tensor([3.0]))
    assert fill_unconfident(matched, mask, mode="content", **kw)[0, 0, 1, 1] == -1
    assert fill_unconfident(matched, mask, mode="average", **kw)[0, 0, 1, 1] == 3
    assert fill_unconfident(matched, mask, mode="global", **kw)[0, 0, 1, 1] == 7
    assert fill_unconfident(matched, mask, mode="none", **kw)[0, 0, 1, 1] == 5
    filled = fill_unconfident(matched, mask, mode="propagate", **kw)
    assert 2 < filled[0, 0, 1, 1] < 9  # a neighbourhood average of the confident cells
    torch.testing.assert_close(filled * mask, matched * mask)


def test_transfer_any_size_and_broadcast_style(model):
    images, conf = model.transfer(_images(3, 40, 24), _images(1, 17, 90, seed=2))
    assert images.shape == (3, 3, 40, 24) and conf.shape == (3, 1, 40, 24)
    assert 0 <= images.min() and images.max() <= 1 and 0 <= conf.min() and conf.max() <= 1
    pairwise, _ = model.transfer(_images(2), _images(2, seed=4))
    assert pairwise.shape == (2, 3, 32, 32)


def test_inference_is_deterministic_and_seed_changes_noise(model):
    model.decoder.convs[0].noise.weight.data.fill_(0.5)
    a = model.transfer(_images(1), _images(1, seed=1))[0]
    b = model.transfer(_images(1), _images(1, seed=1))[0]
    torch.testing.assert_close(a, b)
    s1 = model.transfer(_images(1), _images(1, seed=1), seed=1)[0]
    s2 = model.transfer(_images(1), _images(1, seed=1), seed=2)[0]
    assert not torch.allclose(s1, s2)
    torch.testing.assert_close(s1, model.transfer(_images(1), _images(1, seed=1), seed=1)[0])
    model.decoder.convs[0].noise.weight.data.zero_()


def test_content_mask_keeps_background_latents(model):
    content = _images(1)
    mask = torch.zeros(1, 32, 32)
    c = model.encode(content, mask)
    a = model.align(c, model.encode(_images(1, seed=9)))
    for cm, am in zip(c.maps, a.maps):
        torch.testing.assert_close(am, cm)
    assert all(not m.any() for m in a.mask.values())


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(3, 32, 32), "add a batch axis"),
        (torch.rand(1, 4, 32, 32), "RGBA"),
        (torch.rand(1, 1, 32, 32), "grayscale"),
        (torch.rand(1, 32, 32, 3), "channels must come second"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.rand(0, 3, 8, 8), "empty batch"),
        (torch.rand(1, 3, 8, 8) * 255, r"\[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "divide uint8"),
    ],
)
def test_clear_errors_for_bad_images(model, bad, message):
    with pytest.raises(COATInputError, match=message):
        model.transfer(bad, _images(1))


def test_mismatched_batches_and_bad_options(model):
    with pytest.raises(COATInputError, match="batch sizes do not pair up"):
        model.transfer(_images(3), _images(2))
    c = model.encode(_images(1))
    with pytest.raises(COATInputError, match="mode must be one of"):
        model.align(c, c, mode="fuzzy")
    with pytest.raises(COATInputError, match="n_content_layers"):
        model.decode(c, model.align(c, c), n_content_layers=99)
    with pytest.raises(COATInputError, match="mask size"):
        model.encode(_images(1), torch.ones(1, 5, 5))


def test_config_round_trip_and_validation():
    cfg = COATConfig.small(fill="global")
    assert COATConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="power of two"):
        COATConfig(resolution=100)
    with pytest.raises(ValueError, match="coarse to fine"):
        COATConfig.tiny(scales=(2, 4, 8))
    with pytest.raises(ValueError, match="unknown COATConfig fields"):
        COATConfig.from_json('{"resolution": 32, "warp_drive": 1}')
    # Checkpoints from before the position input existed load without it.
    legacy = json.loads(COATConfig.tiny().to_json())
    del legacy["position_input"]
    assert COATConfig.from_json(json.dumps(legacy)).position_input is False
    assert COATConfig.tiny().position_input is True


def test_encoder_norm_groups_add_groupnorm_to_new_presets_only():
    plain, normed = COAT(COATConfig.tiny()), COAT(COATConfig.tiny(encoder_norm_groups=4))
    norms = [m for m in normed.encoder.modules() if isinstance(m, GroupNorm)]
    # from_rgb, two convolutions per residual block, a smoothing and a latent trunk per encoder scale
    cfg = normed.config
    assert len(norms) == 1 + 2 * (cfg.encoder_levels - 1) + 2 * len(cfg.latent_scales)
    assert all(m.groups == 4 for m in norms)
    assert not any(isinstance(m, GroupNorm) for m in plain.modules())
    x, norm = torch.randn(2, 16, 5, 5), GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    groups = x.view(2, 4, -1)  # the closed form: each group of 4 channels to zero mean and unit variance
    expected = ((groups - groups.mean(-1, keepdim=True)) / (groups.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt())
    expected = expected.view_as(x) * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert torch.allclose(norm(x), expected, atol=1e-5)
    assert COATConfig.small().encoder_norm_groups == 8
    # Checkpoints from before the option have no GroupNorm: same state-dict keys as before, and they load so.
    legacy = json.loads(COATConfig.small().to_json())
    del legacy["encoder_norm_groups"]
    assert COATConfig.from_json(json.dumps(legacy)).encoder_norm_groups == 0
    assert "encoder.from_rgb.1.bias" in plain.state_dict()  # the activation's bias, right after the convolution
    with pytest.raises(ValueError, match="encoder_norm_groups must be 0 or divide"):
        COATConfig.tiny(encoder_norm_groups=3)
    with pytest.raises(ValueError, match="encoder_norm_groups"):
        COATConfig.tiny(encoder_norm_groups=-1)
    out = normed.eval().transfer(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))[0]
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_position_input_tells_mirrored_places_apart():
    """A left-right symmetric image: without the (x, y) input the descriptors of mirrored cells are mirror
    images of each other; with it they differ (a left eye is not a right eye)."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    image = (image + image.flip(-1)) / 2
    for position, mirrored in ((False, True), (True, False)):
        torch.manual_seed(0)
        model = COAT(COATConfig.tiny(position_input=position)).eval()
        # Make every convolution mirror-symmetric (average each kernel with its horizontal flip), so that only
        # the position input can break the symmetry.
        with torch.no_grad():
            for module in model.encoder.modules():
                if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 4:
                    module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
            d = model.encode(image).descriptors[4]
        assert torch.allclose(d, d.flip(-1), atol=1e-5) is mirrored


def test_tiny_model_trains_one_step_and_infers_quickly():
    torch.manual_seed(1)
    m = COAT(COATConfig.tiny())
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = _images(2)
    c = m.encode(x)
    out = m.decode(c, m.align(c, m.encode(_images(2, seed=1)), mode="soft"))
    loss = (out - x).abs().mean()
    loss.backward()
    assert all(p.grad is not None for p in m.encoder.latent_heads.parameters())
    opt.step()
