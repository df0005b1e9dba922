"""Spatial modulated convolution reduces exactly to StyleGAN2's with spatially constant styles (docs/METHOD.md "Decoder")."""

import torch

from coat_model.model.layers import Blur, Downsample, Upsample, modulated_conv2d, modulated_conv2d_reference


def _case(seed, c_in=6, c_out=5, k=3, size=8, batch=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, size, size, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) / (c_in * k * k) ** 0.5
    styles = torch.randn(batch, c_in, generator=g, dtype=torch.float64) + 1
    return x, weight, styles


def test_plain_conv_matches_stylegan2_with_constant_styles():
    x, weight, styles = _case(0)
    spatial = styles[:, :, None, None].expand(-1, -1, 5, 5)  # a constant map at another resolution
    ours = modulated_conv2d(x, weight, spatial, padding=1)
    ref = modulated_conv2d_reference(x, weight, styles, padding=1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_up_conv_matches_stylegan2_with_constant_styles():
    x, weight, styles = _case(1)
    blur = Blur(pad=(1, 1), upsample_factor=2).double()
    ours = modulated_conv2d(x, weight, styles[:, :, None, None].expand(-1, -1, 8, 8), upsample=blur)
    ref = modulated_conv2d_reference(x, weight, styles, upsample=blur)
    assert ours.shape == (3, 5, 16, 16)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_to_rgb_conv_matches_stylegan2_with_constant_styles():
    x, weight, styles = _case(2, c_out=3, k=1)
    ours = modulated_conv2d(x, weight, styles[:, :, None, None].expand(-1, -1, 8, 8), demodulate=False)
    ref = modulated_conv2d_reference(x, weight, styles, demodulate=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_spatial_styles_modulate_locally():
    x, weight, styles = _case(3)
    spatial = styles[:, :, None, None].repeat(1, 1, 8, 8)
    spatial[:, :2, :, 4:] *= 3  # right half: two channels modulated differently (a uniform gain demodulates away)
    out = modulated_conv2d(x, weight, spatial, padding=1)
    ref = modulated_conv2d_reference(x, weight, styles, padding=1)
    torch.testing.assert_close(out[..., :2], ref[..., :2], atol=1e-5, rtol=0)  # far from the seam: unchanged
    assert not torch.allclose(out[..., 6:], ref[..., 6:], atol=1e-3)


def test_resampling_shapes_and_constant_preservation():
    x = torch.ones(1, 2, 8, 8)
    assert Upsample()(x).shape == (1, 2, 16, 16)
    down = Downsample()(x)
    assert down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(Upsample()(x)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
