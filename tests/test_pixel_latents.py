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
from coat_model.model.matching import coordinate_grid, resample_flow, untokens
from coat_model.train.pairs import identity_flow

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
    # Matches that are an affine map of the image (in pixels): bilinear interpolation is exact for them, so every
    # finer cell between the coarse cell centres must get the affine image of its own centre, in both channels.
    a = torch.tensor([[0.8, 0.1], [-0.05, 0.9]])
    b = torch.tensor([2.0, -1.5])

    def centres(scale):
        c = torch.arange(r // scale, dtype=torch.float32) * scale + (scale - 1) / 2
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        return torch.stack([gx, gy])[None]                                   # [1, 2, h, h] pixels (x, y)

    def to_cells(pixels, scale):
        h = r // scale
        return (pixels - (scale - 1) / 2) / scale / (h - 1) * 2 - 1

    def affine(pixels):
        return torch.einsum("ij,bjhw->bihw", a, pixels) + b.view(1, 2, 1, 1)

    for scale, to in ((4, 1), (4, 2), (2, 1), (8, 2)):
        got = resample_flow(to_cells(affine(centres(scale)), scale), scale, to, r)
        want = to_cells(affine(centres(to)), to).clamp(-1, 1)
        inner = slice(scale // (2 * to), r // to - scale // (2 * to))  # between the first and last coarse centres
        torch.testing.assert_close(got[..., inner, inner], want[..., inner, inner], atol=1e-5, rtol=0)
    same = _cells(8)
    torch.testing.assert_close(resample_flow(same, 4, 4, r), same)
    # Downsampling a per-pixel flow reads it at the coarse cell centres.
    torch.testing.assert_close(resample_flow(to_cells(affine(centres(1)), 1), 1, 4, r),
                               to_cells(affine(centres(4)), 4).clamp(-1, 1), atol=1e-5, rtol=0)


def test_resample_flow_interpolates_between_trusted_matches_only():
    r = 16
    flow = _cells(4).clone()                          # 4x4 cells of 4 px, each matched to itself ...
    flow[:, :, 1, 2] = torch.tensor([-1.0, 1.0]).view(1, 2)  # ... but one untrusted cell points at a far corner
    trusted = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    trusted[:, :, 1, 2] = False
    plain = resample_flow(flow, 4, 1, r)
    guarded = resample_flow(flow, 4, 1, r, trusted=trusted)
    identity = resample_flow(_cells(4), 4, 1, r)
    px = lambda f: (f + 1) / 2 * (r - 1)  # noqa: E731
    # Pixels whose interpolation reads the untrusted cell (rows 2..9, columns 6..13) ...
    reach = torch.zeros(1, 2, r, r, dtype=torch.bool)
    reach[..., 2:10, 6:14] = True
    assert (px(plain) - px(identity)).abs()[reach].max() > 5      # ... are pulled toward its far corner without trust
    assert (px(guarded) - px(identity)).abs()[reach].max() < 2    # and stay within half a cell of their place with it
    torch.testing.assert_close(guarded[~reach], identity[~reach], atol=1e-5, rtol=0)  # the rest is untouched
    nothing = resample_flow(flow, 4, 1, r, trusted=torch.zeros_like(trusted))  # no trusted match at all: nearest
    torch.testing.assert_close(nothing, torch.nn.functional.interpolate(
        ((flow + 1) / 2 * 3 * 4 + 1.5) / 15 * 2 - 1, size=(r, r), mode="nearest").clamp(-1, 1), atol=1e-5, rtol=0)


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
    # Matches taken from a soft alignment carry its attention output: align_from_matches uses only where they point.
    soft = model.align(c, s, mode="soft")
    from coat_model.model.matching import Match

    bare = {k: Match(flow=soft.flow[k], confidence=soft.confidence[k], mask=soft.mask[k]) for k in soft.scales}
    carried = {k: Match(flow=soft.flow[k], confidence=soft.confidence[k], mask=soft.mask[k],
                        aligned=torch.full_like(torch.cat([s.maps[0]] * 4, 1), 7.0)) for k in soft.scales}
    for x, y in zip(model.align_from_matches(c, s, carried).maps, model.align_from_matches(c, s, bare).maps):
        torch.testing.assert_close(x, y)


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
    reshaped = subprocess.run(cmd[:5] + ["--model-set", "w_dim=8"] + cmd[7:-1] + [str(tmp_path / "other")], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert reshaped.returncode == 2 and "only changes that add modules" in reshaped.stderr
    assert "Traceback" not in reshaped.stderr
