"""Full-resolution latents aligned along interpolated matches (``COATConfig.pixel_latents``), and growing a
checkpoint into them (``coat_model.io.grow``, ``coat-train --init CKPT --model-set pixel_latents=true``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coat_model import COAT, COATConfig
from coat_model.bench.quality import gt_matches
from coat_model.io import CheckpointError, grow, load
from coat_model.matching import coordinate_grid, resample_flow, untokens
from coat_model.pairs import identity_flow

REPO = Path(__file__).resolve().parents[1]


def _cells(h: int) -> torch.Tensor:
    return untokens(coordinate_grid(h, h)[None], h, h)


def _images(b, seed=0):
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_config_gives_the_full_resolution_layers_scale_one_and_checks_the_finest_scale():
    cfg = COATConfig.tiny(pixel_latents=True)
    assert cfg.latent_scales == (8, 4, 2, 1)
    for layer in range(cfg.n_layers):
        plain = COATConfig.tiny().layer_scale(layer)
        assert cfg.layer_scale(layer) == (1 if cfg.layer_resolution(layer) >= 32 else plain)
    with pytest.raises(ValueError, match="already 1"):
        COATConfig.tiny(scales=(4, 2, 1), pixel_latents=True)
    legacy = json.loads(COATConfig.tiny().to_json())
    del legacy["pixel_latents"]
    assert COATConfig.from_json(json.dumps(legacy)).pixel_latents is False


def test_resample_flow_keeps_every_matched_position_in_the_image():
    r = 32
    # A linear field (an affine map of the image): interpolation is exact, so every finer cell gets the true
    # position, except the outer half cell, which takes the edge cell's value.
    a = torch.tensor([[0.8, 0.1], [-0.05, 0.9]])
    b = torch.tensor([0.05, -0.1])

    def affine(h):
        g = _cells(h)
        return (torch.einsum("ij,bjhw->bihw", a, g) + b.view(1, 2, 1, 1)).clamp(-1, 1)

    for scale, to in ((4, 1), (4, 2), (2, 1)):
        pixels_of = lambda f, s: (f + 1) / 2 * (r // s - 1) * s + (s - 1) / 2  # noqa: E731
        got = pixels_of(resample_flow(affine(r // scale), scale, to, r), to)
        want = pixels_of(affine(r // scale), scale)
        inner = slice(scale // to, r // to - scale // to)
        # The coarse field at cell centres, read at the finer cell centres: compare where both are defined.
        coarse_centres = torch.arange(r // scale) * scale + (scale - 1) / 2
        fine_centres = torch.arange(r // to) * to + (to - 1) / 2
        x = fine_centres[inner]
        t = (x - coarse_centres[0]) / scale
        lo = t.floor().long().clamp(max=r // scale - 2)
        w = t - lo
        row = want[0, 0, 0]
        expected = row[lo] * (1 - w) + row[lo + 1] * w
        assert torch.allclose(got[0, 0, 0, inner], expected, atol=1e-4), (scale, to)
    same = _cells(8)
    assert torch.allclose(resample_flow(same, 4, 4, r), same, atol=1e-6)


def test_pixel_latents_are_full_resolution_and_identity_matches_rebuild_the_styles_own():
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True)).eval()
    cfg = model.config
    c, s = model.encode(_images(2)), model.encode(_images(2, seed=1))
    full = [l for l in range(cfg.n_layers) if cfg.layer_scale(l) == 1]
    assert full and all(c.maps[l].shape[-1] == 32 for l in full)
    assert set(c.descriptors) == set(cfg.scales)           # no matching at full resolution
    for mode in ("hard", "soft"):
        a = model.align(c, s, mode=mode)
        assert [m.shape for m in a.maps] == [m.shape for m in c.maps]
        assert model.decode(c, a).shape == (2, 3, 32, 32)
    itself = gt_matches(identity_flow(32).expand(2, -1, -1, -1), torch.ones(2, 1, 32, 32, dtype=torch.bool), 32,
                        cfg.scales)
    a = model.align_from_matches(c, s, itself, fill="none")
    for l in full:  # away from the outer cell of the finest matched scale, which clamps
        torch.testing.assert_close(a.maps[l][..., 1:-1, 1:-1], s.maps[l][..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


def test_grow_keeps_every_weight_and_starts_the_new_scale_from_the_finest_old_one(tmp_path):
    torch.manual_seed(0)
    small = COAT(COATConfig.tiny()).eval()
    small.w_avg.normal_()
    path = tmp_path / "tiny.safetensors"
    small.save(path)
    grown = grow(path, pixel_latents=True)
    assert grown.config.pixel_latents and grown.training
    old, new = small.state_dict(), grown.state_dict()
    for k, v in old.items():
        assert torch.equal(new[k], v), k
    for k in new:
        if k.startswith("encoder.smooth.1.") or k.startswith("encoder.latent_trunk.1."):
            assert torch.equal(new[k], old[k.replace(".1.", ".2.", 1)]), k
        elif k.startswith("encoder.lateral.1."):
            assert not new[k].any(), k
    assert set(new) - set(old) and all(k.split(".")[2] == "1" for k in set(new) - set(old))
    assert grow(path, fill="global").config.fill == "global"  # inference defaults need no new weights
    with pytest.raises(CheckpointError, match="only changes that add modules"):
        grow(path, w_dim=8)
    with pytest.raises(CheckpointError, match="cannot grow"):
        grow(path, pixel_latents=True, scales=(4, 2, 1))


def test_coat_train_grows_a_checkpoint_with_init_and_model_set(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    COAT(COATConfig.tiny()).save(ckpt)
    out = tmp_path / "grown"
    cmd = [sys.executable, "-m", "coat_model.train", "--init", str(ckpt), "--model-set", "pixel_latents=true",
           "--steps", "2", "--batch-size", "2", "--threads", "1", "--sample-every", "0", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load(out / "coat.safetensors").config.pixel_latents
    refused = subprocess.run(cmd[:-2] + ["--resume", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "a resumed run keeps its architecture" in refused.stderr
