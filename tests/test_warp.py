"""Random warps with exact flow, random colour remaps, colour lattices and blurs."""

import pytest
import torch
import torch.nn.functional as F

from coat_model.train.data import random_color_remap, random_warp, render, sample_appearance, sample_structure
from coat_model.train.data.warp import draw_warp, random_blur, random_palette
from coat_model.train.pairs import appearance_change


def _smooth_images(b: int = 4, size: int = 48) -> torch.Tensor:
    t = torch.linspace(0, 1, size)
    x, y = t.view(1, size).expand(size, size), t.view(size, 1).expand(size, size)
    image = torch.stack([x, y, 0.5 + 0.5 * torch.sin(3 * x + 2 * y)])
    return image.expand(b, 3, size, size).contiguous()


def _faces(b: int = 4, size: int = 48):
    return render(sample_structure(b, 1), sample_appearance(b, 2), size)


def _unwarp(warped: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(warped, flow.permute(0, 2, 3, 1), mode="bilinear", align_corners=True)


def test_shapes_and_determinism():
    images = _smooth_images()
    warped, flow, valid = random_warp(images, torch.Generator().manual_seed(0))
    assert warped.shape == images.shape and flow.shape == (4, 2, 48, 48) and valid.shape == (4, 1, 48, 48)
    assert valid.dtype == torch.bool and 0.5 < valid.float().mean() < 1.0
    again = random_warp(images, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((warped, flow, valid), again))
    assert not torch.equal(random_warp(images, 1)[1], flow)


def test_flow_round_trip_reproduces_the_original():
    """Sampling the warped image at the flow gives back the original where valid (double bilinear blur only)."""
    images = _smooth_images()
    warped, flow, valid = random_warp(images, 0, tps_jitter=0.15)
    error = (_unwarp(warped, flow) - images).abs().amax(1, keepdim=True)[valid]
    assert error.mean() < 0.005 and error.max() < 0.03
    faces = _faces()[0]
    warped, flow, valid = random_warp(faces, 3)
    assert (_unwarp(warped, flow) - faces).abs().amax(1, keepdim=True)[valid].mean() < 0.03


def test_warp_strength_scales_the_same_draws():
    """Strength 1 is the default warp; strength s draws the same numbers and stretches every range by s (the zoom's
    bounds to the power s), so a stronger warp of one stream is the same warp, larger."""
    base = draw_warp(torch.Generator().manual_seed(5), 64)
    assert all(torch.equal(a, b) for a, b in zip(base, draw_warp(torch.Generator().manual_seed(5), 64, strength=1.0)))
    strong = draw_warp(torch.Generator().manual_seed(5), 64, strength=2.0)

    def angle_zoom(forward):  # forward = zoom * R(theta)
        return torch.atan2(forward[:, 1, 0], forward[:, 0, 0]), torch.linalg.det(forward).sqrt()

    (theta1, zoom1), (theta2, zoom2) = angle_zoom(base.forward), angle_zoom(strong.forward)
    assert torch.allclose(theta2, 2 * theta1, atol=1e-5) and theta2.abs().max() > torch.deg2rad(torch.tensor(20.0))
    assert torch.allclose(strong.coarse, 2 * base.coarse)
    u = (zoom1 - 0.8) / 0.4                                      # where each zoom fell in [0.8, 1.2]
    assert torch.allclose(zoom2, 0.64 + u * (1.44 - 0.64), atol=1e-5)
    shift1 = -(base.forward @ base.offset[..., None])[..., 0]    # t = -M^-1 c
    shift2 = -(strong.forward @ strong.offset[..., None])[..., 0]
    assert torch.allclose(shift2, 2 * shift1, atol=1e-5)


def test_local_motion_adds_a_finer_lattice_after_the_same_draws_and_stays_invertible():
    """``local`` draws its offsets after the global warp's (same rotation, zoom and shift), folds the coarse lattice
    into one finer lattice (equal at its nodes), moves neighbouring parts against each other, and the flow still
    inverts the warp exactly (the fixed point converges at the documented bound)."""
    from coat_model.train.data.warp import _displacement, _identity_lattice

    base = draw_warp(torch.Generator().manual_seed(5), 16)
    local = draw_warp(torch.Generator().manual_seed(5), 16, local=0.04)
    assert torch.equal(base.matrix, local.matrix) and torch.equal(base.offset, local.offset)
    assert base.coarse.shape == (16, 2, 4, 4) and local.coarse.shape == (16, 2, 8, 8)
    coarse_at_nodes = _displacement(base.coarse, _identity_lattice(16, 8)).permute(0, 3, 1, 2)
    extra = local.coarse - coarse_at_nodes
    assert extra.abs().max() <= 0.04 and extra.abs().max() > 0.03 and extra.std() > 0.015
    images = _smooth_images(16, 64)
    warped, flow, valid = random_warp(images, torch.Generator().manual_seed(5), local=0.04)
    q = flow.permute(0, 2, 3, 1)                                 # psi(flow(p)) must be p
    psi = torch.einsum("bij,bhwj->bhwi", local.matrix, q) + local.offset[:, None, None] + _displacement(local.coarse, q)
    identity = _identity_flow(16, 64).permute(0, 2, 3, 1)
    assert (psi - identity).abs().max() < 1e-3
    error = (_unwarp(warped, flow) - images).abs().amax(1, keepdim=True)[valid]
    assert error.mean() < 0.005
    plain = random_warp(images, torch.Generator().manual_seed(5))[1]
    assert (flow - plain).abs().amax() > 0.02                    # the parts did move


def _identity_flow(b: int, size: int) -> torch.Tensor:
    t = torch.linspace(-1, 1, size)
    return torch.stack([t.view(1, size).expand(size, size), t.view(size, 1).expand(size, size)]).expand(b, 2, -1, -1)


def test_flow_of_a_pure_shift_is_constant():
    images = _smooth_images(2)
    _, flow, _ = random_warp(images, 0, rotation=0.0, scale=(1.0, 1.0), translate=0.2, tps_jitter=0.0)
    shift = flow - _identity_flow(2, 48)
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-5)
    assert (shift.abs() <= 0.2 + 1e-6).all() and (shift.abs() > 1e-3).any()


def test_flow_of_a_pure_zoom_scales_coordinates():
    images = _smooth_images(2)
    _, flow, valid = random_warp(images, 0, rotation=0.0, scale=(1.1, 1.3), translate=0.0, tps_jitter=0.0)
    zoom = flow[:, 0, 0, -1]                                     # x of the right-most pixel of the top row
    assert ((zoom > 1.1 - 1e-5) & (zoom < 1.3 + 1e-5)).all()
    assert torch.allclose(flow, _identity_flow(2, 48) * zoom.view(2, 1, 1, 1), atol=1e-5)
    assert not valid[:, :, 0, 0].any() and valid[:, :, 24, 24].all()


def test_no_warp_is_the_identity():
    faces = _faces(2)[0]
    warped, flow, valid = random_warp(faces, 0, rotation=0.0, scale=(1.0, 1.0), translate=0.0, tps_jitter=0.0)
    assert torch.allclose(warped, faces, atol=1e-5) and valid.all()
    assert torch.allclose(flow, _identity_flow(2, 48), atol=1e-6)


def test_labels_travel_with_the_flow():
    """Each face pixel's label is found at its flow position in the warped label map."""
    images, labels, _ = _faces(4, 64)
    stacked = torch.cat([images, labels[:, None].float()], 1)
    warped, flow, valid = random_warp(stacked, 5, tps_jitter=0.05)
    # resample the warped labels at the flow with nearest: the label comes back in the interior of parts
    back = F.grid_sample(warped[:, 3:], flow.permute(0, 2, 3, 1), mode="nearest", align_corners=True)
    assert (back.round()[:, 0].long() == labels)[valid[:, 0]].float().mean() > 0.9


def test_color_remap_changes_colours_not_structure():
    images, labels, _ = _faces(6)
    out = random_color_remap(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 0.08
    # per image the remap is one affine colour map: fitting x -> K x + o leaves no residual
    for src, dst in zip(images, out):
        x = torch.cat([src.flatten(1), torch.ones(1, src[0].numel())]).T.double()      # [HW, 4]
        y = dst.flatten(1).T.double()
        fit = torch.linalg.lstsq(x, y).solution
        assert (x @ fit - y).abs().max() < 1e-4
    assert torch.equal(out, random_color_remap(images, torch.Generator().manual_seed(0)))


def test_color_remap_changes_part_colours_strongly():
    """Mean part colours move by a lot for most parts, which is what stops a decoder copying content colours."""
    images, labels, _ = _faces(8)
    out = random_color_remap(images, 1)
    moved = []
    for b in range(8):
        for part in labels[b].unique().tolist():
            mask = labels[b] == part
            moved.append((out[b][:, mask].mean(1) - images[b][:, mask].mean(1)).abs().max())
    assert (torch.stack(moved) > 0.1).float().mean() > 0.6


def _own_streams(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_palette_keeps_equal_colours_equal_and_recolours_parts_independently():
    images, labels, _ = _faces(8)
    images[:, :, :12, :12] = images[:, :, 18:30, 18:30]  # a patch shown twice
    out = random_palette(images, _own_streams(8))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, random_palette(images, _own_streams(8)))
    # a function of the pixel's colour alone: equal colours stay equal
    assert torch.allclose(out[:, :, :12, :12], out[:, :, 18:30, 18:30], atol=1e-6)
    # not one affine colour map (that is random_color_remap): a least-squares affine fit leaves a residual
    residuals = []
    for src, dst in zip(images, out):
        x = torch.cat([src.flatten(1), torch.ones(1, src[0].numel())]).T.double()
        y = dst.flatten(1).T.double()
        residuals.append((x @ torch.linalg.lstsq(x, y).solution - y).abs().mean())
    assert min(residuals) > 0.02
    # it uses the whole range, and each image of a batch gets what it would get alone
    assert (out.amax((1, 2, 3)) - out.amin((1, 2, 3)) > 0.99).all()
    assert torch.allclose(out[3:4], random_palette(images[3:4], _own_streams(1, seed=3)), atol=1e-6)


def test_blur_keeps_flat_images_and_means_and_smooths_texture():
    flat = torch.full((3, 3, 32, 32), 0.25)
    assert torch.allclose(random_blur(flat, _own_streams(3)), flat, atol=1e-6)
    noise = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = random_blur(noise, _own_streams(6), max_sigma=0.03)
    assert out.shape == noise.shape
    assert torch.allclose(out.mean((1, 2, 3)), noise.mean((1, 2, 3)), atol=0.01)
    smoothing = out.std((1, 2, 3)) / noise.std((1, 2, 3))
    assert (smoothing < 0.95).sum() >= 4 and (smoothing <= 1 + 1e-5).all()  # sigma is uniform in [0, 1.9 px]
    assert torch.allclose(out[2:3], random_blur(noise[2:3], _own_streams(1, seed=2), max_sigma=0.03), atol=1e-6)


def test_appearance_change_with_no_extra_share_is_the_colour_remap_of_older_runs():
    images, _, _ = _faces(4)
    plain = appearance_change(images, _own_streams(4), True, 0.0, 0.0)
    assert torch.equal(plain, random_color_remap(images, _own_streams(4)))
    assert torch.equal(appearance_change(images, _own_streams(4), False, 0.0, 0.0), images)
    every = appearance_change(images, _own_streams(4), True, 1.0, 0.0)
    assert torch.allclose(every, random_palette(images, [_draw_after_remap(g) for g in _own_streams(4)]), atol=1e-6)
    some = appearance_change(images, _own_streams(4), True, 0.5, 0.5)
    assert torch.equal(some, appearance_change(images, _own_streams(4), True, 0.5, 0.5))
    assert not torch.equal(some, plain)


def _draw_after_remap(g: torch.Generator) -> torch.Generator:
    """The stream as appearance_change leaves it for the lattice: after the remap's draws and the pick."""
    random_color_remap(torch.zeros(1, 3, 2, 2), [g])
    torch.rand((), generator=g)
    return g


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_warp(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        random_color_remap(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        random_palette(torch.zeros(1, 1, 8, 8))
