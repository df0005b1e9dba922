"""Filling the content cells without a confident match (coat_model/model/fill.py)."""

import pytest
import torch

from coat_model.model.fill import gaussian_blur, gaussian_blur_reference, propagate


@pytest.mark.parametrize("shape, sigma", [((1, 64, 32, 32), 2.0), ((2, 3, 17, 23), 1.5), ((1, 1, 5, 7), 4.0),
                                          ((1, 8, 16, 16), 8.0)])
def test_the_banded_matrix_blur_equals_the_depthwise_convolutions(shape, sigma):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_blur(x, sigma), gaussian_blur_reference(x, sigma), rtol=1e-6, atol=1e-6)


def test_the_blur_is_zero_padded_and_keeps_the_mass_of_an_inner_impulse():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    assert gaussian_blur(x, 2.0).sum().item() == pytest.approx(1.0, abs=1e-6)
    edge = torch.zeros(1, 1, 21, 21)
    edge[0, 0, 0, 0] = 1.0
    assert gaussian_blur(edge, 2.0).sum().item() < 0.5  # the mass that falls outside is lost, not reflected


def test_the_blur_has_gradients_like_its_reference():
    x = torch.randn(1, 2, 9, 11, requires_grad=True)
    (gaussian_blur(x, 1.5) ** 2).sum().backward()
    fast = x.grad.clone()
    x.grad = None
    (gaussian_blur_reference(x, 1.5) ** 2).sum().backward()
    torch.testing.assert_close(fast, x.grad, rtol=1e-5, atol=1e-6)


def test_propagate_fills_a_hole_between_its_neighbours_and_falls_back_where_nothing_is_known():
    values = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 1, 2] = 0
    out = propagate(values, mask, fallback=torch.zeros(1, 2, 1, 1), sigma=1.0)
    hole = out[0, :, 1, 2]
    assert torch.all(hole > values[0, :, 1, 1]) and torch.all(hole < values[0, :, 2, 3])  # between its neighbours
    empty = propagate(values, torch.zeros(1, 1, 4, 4), fallback=torch.full((1, 2, 1, 1), 7.0))
    assert torch.equal(empty, torch.full_like(values, 7.0))
