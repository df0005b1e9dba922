"""Per-image counter-based random streams: equal to the plain-Python splitmix64 oracle, independent of the batch."""

import torch

from coat_model.train.streams import uniform, uniform_reference


def test_uniform_equals_the_python_oracle_for_any_seed():
    seeds = torch.tensor([0, 1, -5, 2**62 + 12345, 2**63 - 1])
    for salt in (0, 7):
        draws = uniform(seeds, 300, salt=salt)
        for row, seed in zip(draws, seeds.tolist()):
            assert torch.equal(row, torch.tensor(uniform_reference(seed, 300, salt=salt)))


def test_streams_are_per_image_uniform_and_distinct():
    a = uniform(torch.tensor([3, 4]), 20_000)
    assert torch.equal(uniform(torch.tensor([4]), 20_000)[0], a[1])  # alone or in a batch: the same numbers
    assert not torch.equal(a[0], a[1]) and not torch.equal(uniform(torch.tensor([3]), 20_000, salt=1)[0], a[0])
    assert 0 <= a.min() and a.max() < 1
    assert abs(a.mean() - 0.5) < 0.01 and abs(a.var() - 1 / 12) < 0.003
    hist = torch.histc(a.flatten(), bins=10, min=0, max=1) / a.numel()
    assert (hist - 0.1).abs().max() < 0.01
    assert abs(torch.corrcoef(torch.stack([a[0, :-1], a[0, 1:]]))[0, 1]) < 0.03  # consecutive draws uncorrelated
