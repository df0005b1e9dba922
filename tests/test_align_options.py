"""Alignment options are resolved once and recorded exactly as they ran (coat_model.model.align_options)."""

import dataclasses

import pytest
import torch

from coat_model import COAT, COATConfig
from coat_model.model.align_options import AlignOptions


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return COAT(COATConfig.tiny()).eval()


@pytest.fixture(scope="module")
def latents(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return model.encode(torch.rand(1, 3, 32, 32, generator=g)), model.encode(torch.rand(1, 3, 32, 32, generator=g))


def test_the_hard_path_records_the_confidence_threshold_it_used(model, latents):
    cfg = model.config
    with torch.no_grad():
        plain = model.align(*latents)
        strict = model.align(*latents, confidence_threshold=0.7, sim_threshold=0.1, geometric=False)
    assert isinstance(plain.options, AlignOptions)
    assert plain.options.confidence_threshold == 0.0  # the hard path filters only when asked, whatever the config says
    assert plain.options.sim_threshold == cfg.sim_threshold and plain.options.fill == cfg.fill
    assert plain.options.coarse_to_fine == cfg.coarse_to_fine and plain.options.geometric is True
    assert plain.options.temperature is None and plain.options.backend is None  # the hard path uses neither
    assert plain.options.scales == cfg.scales and plain.options.mode == "hard"
    o = strict.options
    assert (o.confidence_threshold, o.sim_threshold, o.geometric) == (0.7, 0.1, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.options.fill = "global"


def test_the_soft_path_records_its_temperature_backend_and_threshold(model, latents):
    cfg = model.config
    with torch.no_grad():
        soft = model.align(*latents, mode="soft", backend="chunked", scales=(8,))
    o = soft.options
    assert (o.mode, o.scales, o.backend) == ("soft", (8,), "chunked")
    assert (o.temperature, o.confidence_threshold, o.cycle_sigma) == (cfg.temperature, cfg.confidence_threshold,
                                                                      cfg.cycle_sigma)
    assert o.sim_threshold is None and o.geometric is None and o.coarse_to_fine is None


def test_resolving_is_the_same_as_aligning(model, latents):
    cfg = model.config
    expected = AlignOptions.resolve(cfg, mode="hard", scales=cfg.scales, fill="content", cycle_sigma=2.0)
    with torch.no_grad():
        assert model.align(*latents, fill="content", cycle_sigma=2.0).options == expected
    given = AlignOptions.given_matches(cfg, (8,), "propagate")
    assert (given.mode, given.scales, given.fill, given.refine) == ("hard", (8,), "propagate", False)
    assert (given.flow_median, given.flow_median_sigma) == (0, None)
