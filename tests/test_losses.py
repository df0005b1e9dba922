"""Losses on hand-made inputs: known values, gradients where they must flow, none where they must stop."""

import math

import pytest
import torch
import torch.nn.functional as F

from coat_model.model.fill import gaussian_blur
from coat_model.train.losses import (
    correspondence_nce, discriminator_loss, generator_adversarial_loss, hardness_schedule, latent_regularisation,
    mean_ssim_over_scales, outside_window, r1_penalty, reconstruction_loss, select_negatives, ssim,
)


def _grid_target(h, w):
    return torch.arange(h * w)[None]


def test_ccl_equals_log_one_plus_negatives_for_constant_features():
    q = torch.ones(1, 8, 6, 6)
    k = torch.ones(1, 8, 6, 6)
    loss = correspondence_nce(q, k, _grid_target(6, 6), torch.ones(1, 36, dtype=torch.bool),
                              n_queries=10, n_negatives=16, exclusion=1)
    torch.testing.assert_close(loss, torch.tensor([math.log(17)]))


def test_ccl_decreases_when_positives_get_more_similar():
    g = torch.Generator().manual_seed(0)
    k = F.normalize(torch.randn(1, 16, 8, 8, generator=g), dim=1)
    noise = F.normalize(torch.randn(1, 16, 8, 8, generator=g), dim=1)
    valid = torch.ones(1, 64, dtype=torch.bool)
    losses = [
        correspondence_nce(F.normalize(a * k + (1 - a) * noise, dim=1), k, _grid_target(8, 8), valid,
                           seeds=torch.tensor([1]))
        for a in (0.0, 0.5, 1.0)
    ]
    assert losses[0] > losses[1] > losses[2]


def test_ccl_gradients_reach_queries_but_not_keys():
    q = F.normalize(torch.randn(2, 8, 5, 5), dim=1).requires_grad_()
    k = F.normalize(torch.randn(2, 8, 5, 5), dim=1).requires_grad_()
    valid = torch.ones(2, 25, dtype=torch.bool)
    valid[1] = False  # an image without positives contributes 0
    loss = correspondence_nce(q, k, _grid_target(5, 5).expand(2, -1), valid, n_negatives=4, exclusion=1)
    assert loss[1] == 0
    loss.sum().backward()
    assert q.grad.abs().sum() > 0 and k.grad is None
    # Without the stop-gradient (the trainer's default) the style side learns from the same pairs.
    q.grad = None
    loss = correspondence_nce(q, k, _grid_target(5, 5).expand(2, -1), valid, n_negatives=4, exclusion=1,
                              detach_keys=False)
    loss.sum().backward()
    assert q.grad.abs().sum() > 0 and k.grad[0].abs().sum() > 0 and k.grad[1].abs().sum() == 0


@pytest.mark.parametrize("exclusion", [0, 1, 2])
def test_ccl_with_every_negative_is_infonce_over_the_cells_outside_the_window(exclusion):
    """``n_negatives=0``: each query's loss is -log softmax of its positive among the positive and every style cell
    more than ``exclusion`` cells from it, computed here cell by cell (the oracle); the image's loss is the mean
    over its valid queries (all of them queried)."""
    g = torch.Generator().manual_seed(4)
    h, w, tau = 4, 5, 0.1
    q = F.normalize(torch.randn(2, 6, h, w, generator=g), dim=1)
    k = F.normalize(torch.randn(2, 6, h, w, generator=g), dim=1)
    target = torch.randint(h * w, (2, h * w), generator=g)
    valid = torch.rand(2, h * w, generator=g) > 0.3
    loss = correspondence_nce(q, k, target, valid, n_queries=h * w, n_negatives=0, tau=tau, exclusion=exclusion,
                              hard_share=0.3, seeds=torch.tensor([1, 2]))
    expected = []
    for b in range(2):
        per_query = []
        for cell in valid[b].nonzero()[:, 0].tolist():
            pos = int(target[b, cell])
            sims = (q[b].flatten(1)[:, cell:cell + 1] * k[b].flatten(1)).sum(0) / tau
            far = [j for j in range(h * w) if max(abs(j // w - pos // w), abs(j % w - pos % w)) > exclusion]
            per_query.append(torch.logsumexp(torch.cat([sims[pos:pos + 1], sims[far]]), 0) - sims[pos])
        expected.append(torch.stack(per_query).mean())
    torch.testing.assert_close(loss, torch.stack(expected))


@pytest.mark.parametrize("hard_share", [0.0, 0.5, 1.0])
def test_negatives_never_inside_the_exclusion_zone(hard_share):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(20, 49, generator=g)
    pos = torch.randint(49, (20,), generator=g)
    ky, kx = torch.arange(49) // 7, torch.arange(49) % 7
    far = ((ky - ky[pos, None]).abs() > 2) | ((kx - kx[pos, None]).abs() > 2)
    index = select_negatives(logits, far, n_negatives=12, hard_share=hard_share)
    assert torch.gather(far, 1, index).all()
    if hard_share == 1.0:  # all picks are the hardest candidates
        hardest = logits.masked_fill(~far, -1e9).topk(12, dim=1).indices
        assert torch.equal(index.sort(1).values, hardest.sort(1).values)


@pytest.mark.parametrize("h,w,radius", [(7, 7, 2), (5, 9, 1), (6, 4, 0), (3, 8, 3)])
def test_exclusion_window_equals_per_cell_distances(h, w, radius):
    """The per-axis window of the contrastive loss equals the L-inf distance of every cell to the centre (the
    oracle, built over the whole grid), centres on the edges and corners included."""
    centre = torch.cat([torch.tensor([0, w - 1, h * w - w, h * w - 1]), torch.randint(h * w, (2, 12)).flatten()])
    centre = centre.view(4, -1)  # any leading shape: [B, Q]
    ky, kx = torch.arange(h * w) // w, torch.arange(h * w) % w
    oracle = ((ky - ky[centre][..., None]).abs() > radius) | ((kx - kx[centre][..., None]).abs() > radius)
    far = outside_window(centre, h, w, radius)
    assert far.shape == (*centre.shape, h * w) and torch.equal(far, oracle)
    assert (~far).sum(-1).max() <= (2 * radius + 1) ** 2 and not far.gather(-1, centre[..., None]).any()


def test_hardness_curriculum_ramps_linearly():
    assert hardness_schedule(0, 1000) == 0.0
    assert hardness_schedule(100, 1000) == pytest.approx(0.5)
    assert hardness_schedule(500, 1000) == 1.0


def test_reconstruction_and_ssim_known_values():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mean_ssim_over_scales(x, x), torch.ones(2))
    torch.testing.assert_close(reconstruction_loss(x, x), torch.zeros(2), atol=1e-6, rtol=0)
    shifted = (x + 0.1).clamp(0, 1)
    assert (reconstruction_loss(shifted, x) > 0.05).all()


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.0])
def test_the_blur_agrees_with_kornia_zero_padded(sigma):
    """kornia (not a dependency of the library, installed with ComfyUI) as an independent oracle."""
    kornia = pytest.importorskip("kornia")
    x = torch.randn(2, 5, 17, 23, generator=torch.Generator().manual_seed(1))
    taps = 2 * max(1, math.ceil(3 * sigma)) + 1
    theirs = kornia.filters.gaussian_blur2d(x, (taps, taps), (sigma, sigma), border_type="constant")
    torch.testing.assert_close(gaussian_blur(x, sigma), theirs, atol=1e-6, rtol=0)


def test_ssim_agrees_with_kornia_on_zero_padded_images():
    """kornia pads by reflection; on images zero-padded by the window radius (5 pixels for sigma 1.5: an 11-tap
    window) its valid-padding SSIM map is ours, averaged over channels and pixels."""
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 24, 20, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    pad = lambda t: F.pad(t, (5, 5, 5, 5))  # noqa: E731
    theirs = kornia.metrics.ssim(pad(x), pad(y), 11, max_val=1.0, padding="valid").flatten(1).mean(1)
    torch.testing.assert_close(ssim(x, y), theirs, atol=1e-6, rtol=0)


def test_latent_regularisation_known_value_and_stop_gradient():
    w_avg = torch.zeros(4, requires_grad=True)
    maps = [torch.full((1, 4, 2, 2), 0.5, requires_grad=True)]  # ||(0.5,0.5,0.5,0.5)|| = 1
    loss = latent_regularisation(maps, w_avg)
    torch.testing.assert_close(loss, torch.tensor([1.0]))
    loss.sum().backward()
    assert maps[0].grad is not None and w_avg.grad is None


def test_adversarial_losses_and_r1():
    logits = torch.zeros(4, 1)
    torch.testing.assert_close(generator_adversarial_loss(logits), torch.full((4,), math.log(2)))
    torch.testing.assert_close(discriminator_loss(logits, logits), torch.tensor(2 * math.log(2)))
    x = torch.randn(3, 2, requires_grad=True)
    r1 = r1_penalty((x * torch.tensor([3.0, 4.0])).sum(1), x)  # gradient (3, 4) per sample: |g|^2 = 25
    torch.testing.assert_close(r1, torch.tensor(25.0))


def test_ccl_of_an_image_does_not_depend_on_its_batch():
    """Seeded streams: an image's loss is the same alone or beside others (data-parallel == single process)."""
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 8, 6, 6, generator=g), dim=1)
    k = F.normalize(torch.randn(3, 8, 6, 6, generator=g), dim=1)
    valid = torch.rand(3, 36, generator=g) > 0.3
    target = torch.randint(36, (3, 36), generator=g)
    seeds = torch.tensor([11, 22, 33])
    kw = dict(n_queries=10, n_negatives=8, hard_share=0.5, exclusion=1, salt=4)
    batch = correspondence_nce(q, k, target, valid, seeds=seeds, **kw)
    alone = torch.cat([correspondence_nce(q[i:i + 1], k[i:i + 1], target[i:i + 1], valid[i:i + 1],
                                          seeds=seeds[i:i + 1], **kw) for i in range(3)])
    torch.testing.assert_close(batch, alone)
    assert not torch.equal(batch, correspondence_nce(q, k, target, valid, seeds=seeds, **{**kw, "salt": 5}))


def test_ccl_queries_are_a_uniform_sample_of_the_valid_cells():
    """With one valid cell whose positive is perfect and every other cell a poor match, the loss is low exactly
    when only that cell is queried; a partly valid image averages over its valid cells only."""
    k = F.normalize(torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    q = -k.clone()
    q.view(1, 16, 36)[..., 7] = k.view(1, 16, 36)[..., 7]
    target = _grid_target(6, 6)
    only_seven = torch.zeros(1, 36, dtype=torch.bool)
    only_seven[0, 7] = True
    low = correspondence_nce(q, k, target, only_seven, n_queries=10, n_negatives=8, exclusion=1,
                             seeds=torch.tensor([0]))
    everything = correspondence_nce(q, k, target, torch.ones(1, 36, dtype=torch.bool), n_queries=36,
                                    n_negatives=8, exclusion=1, seeds=torch.tensor([0]))
    assert low < 0.5 < everything


def test_weighted_queries_are_drawn_in_proportion_to_their_weights_and_only_among_valid_cells():
    """One query per image: each valid cell is drawn with probability weight / (sum of valid weights), an invalid
    cell never, however heavy; without weights the draw is the uniform one."""
    from coat_model.train.losses import sample_queries

    n_images = 40_000
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]).expand(n_images, -1)
    valid = torch.tensor([True, True, True, True, False]).expand(n_images, -1)
    uniform = torch.rand(n_images, 5, generator=torch.Generator().manual_seed(0))
    cells, used = sample_queries(uniform, valid, 1, weight)
    share = torch.bincount(cells[:, 0], minlength=5).float() / n_images
    torch.testing.assert_close(share, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0]), atol=0.01, rtol=0)
    assert bool(used.all())
    plain, _ = sample_queries(uniform, valid, 1)
    torch.testing.assert_close(torch.bincount(plain[:, 0], minlength=5).float() / n_images,
                               torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]), atol=0.01, rtol=0)
    few = torch.tensor([[True, False, False, False, True]])
    cells, used = sample_queries(uniform[:1], few, 3, weight[:1])
    assert used.tolist() == [[1.0, 1.0, 0.0]] and sorted(cells[0, :2].tolist()) == [0, 4]


def test_detail_weights_favour_edges_and_leave_flat_images_uniform():
    from coat_model.train.losses import detail_weights

    flat = torch.full((1, 3, 16, 16), 0.4)
    torch.testing.assert_close(detail_weights(flat, 4.0), torch.ones(1, 256))
    square = flat.clone()
    square[..., 4:12, 4:12] = 0.9                                    # a small bright part
    w = detail_weights(square, 4.0).view(16, 16)
    assert w[8, 3] > 5 and w[8, 4] > 5 and w[8, 11] > 5 and w[8, 12] > 5   # both sides of its outline
    assert w[0, 0] == 1 and w[8, 8] == 1                             # flat background and its flat inside
    assert w.mean() == pytest.approx(1 + 4.0, rel=1e-5)              # mean weight 1 + strength
