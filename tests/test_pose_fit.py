"""The fitted pose (``pose_fit``, :func:`coat_model.model.pose.fit_similarity`, :class:`FittedPose`): the style
re-posed by the similarity that fits each pair's trusted matches, matched again, and kept per pair where surer."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from coat_model import COAT, COATConfig
from coat_model.bench.quality import evaluate
from coat_model.model.coat import Alignment
from coat_model.model.coords import coordinate_grid
from coat_model.model.inputs import COATInputError
from coat_model.model.matching import Match
from coat_model.model.pose import FittedPose, canvas_scale, fit_similarity, object_confidence, pose_matrices


def _model(**kw):
    torch.manual_seed(0)
    return COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, **kw)).eval()


def _images(n, seed):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _similarity(zoom, degrees, shift, mirrored=False):
    """theta [2, 3]: the flip (when mirrored), then the turn and zoom, then the shift."""
    t = math.radians(degrees)
    a = zoom * torch.tensor([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    if mirrored:
        a = torch.diag(torch.tensor([-1.0, 1.0])) @ a
    return torch.cat([a, torch.tensor(shift)[:, None]], 1)


def test_the_fit_recovers_a_known_similarity_flipped_or_not_and_ignores_untrusted_matches():
    truth = torch.stack([_similarity(0.8, 15.0, [0.1, -0.2]), _similarity(1.2, -30.0, [0.0, 0.3], mirrored=True),
                         _similarity(1.0, 0.0, [0.0, 0.0])])
    h = w = 8
    p = coordinate_grid(h, w).T  # [2, N]
    flow = (truth[:, :, :2] @ p + truth[:, :, 2:]).view(3, 2, h, w)
    weight = torch.rand(3, 1, h, w, generator=torch.Generator().manual_seed(0)) + 0.1
    outliers = torch.zeros(3, 1, h, w, dtype=torch.bool)
    outliers[:, :, :2] = True  # wrong matches that carry no weight
    flow = torch.where(outliers, torch.rand(3, 2, h, w) * 2 - 1, flow)
    weight = weight * ~outliers
    weight[2] = 0  # a pair without a trusted match: no fit
    theta, fitted = fit_similarity(flow, weight, torch.tensor([False, True, False]))
    assert fitted.tolist() == [True, True, False]
    torch.testing.assert_close(theta[:2], truth[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(theta[2], _similarity(1.0, 0.0, [0.0, 0.0]))
    unflipped, _ = fit_similarity(flow[1:2], weight[1:2])  # a reflection is no similarity: the fit needs the flag
    assert (unflipped - truth[1:2]).abs().max() > 0.1


def test_a_fit_from_too_few_or_bunched_matches_or_an_extreme_zoom_is_not_trusted():
    h = w = 16
    p = coordinate_grid(h, w).T
    flow = (_similarity(1.1, 5.0, [0.1, 0.0])[:, :2] @ p).view(1, 2, h, w).repeat(4, 1, 1, 1)
    weight = torch.zeros(4, 1, h, w)
    weight[0, 0, 8, 8] = 1.0                    # one match: the fit would collapse the style to a point
    weight[1, 0, :2, :4] = 1.0                  # eight matches in one corner of the canvas
    weight[2] = 1.0                             # every match, but the style shown 3x smaller (zoom 3)
    weight[3] = 1.0
    flow[2] = flow[2] * 3
    theta, fitted = fit_similarity(flow, weight)
    assert fitted.tolist() == [False, False, False, True]
    for i in range(3):
        torch.testing.assert_close(theta[i], _similarity(1.0, 0.0, [0.0, 0.0]))  # the identity: nothing re-posed


def test_a_fit_between_cells_is_the_pixel_map_that_made_the_style():
    """The style made from the content by a known map of the canvas (pixel convention); the cells' true matches
    (cell convention, at two grid sizes) fitted, then written for the canvas: the same map."""
    r = 32
    made = _similarity(1.2, 12.0, [0.15, -0.1])  # pixel convention: the style's pixel at A p + t shows content p
    for cell in (2, 4):
        n, k = r // cell, canvas_scale(r, cell)
        p = coordinate_grid(n, n).T                                   # cell convention
        q = (made[:, :2] @ (p * k) + made[:, 2:]) / k                 # through the canvas, back to cells
        theta, fitted = fit_similarity(q.view(1, 2, n, n), torch.ones(1, 1, n, n))
        assert fitted.all()
        torch.testing.assert_close(FittedPose.from_cells(theta, r, cell).theta[0], made, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", [1, 2, 4])
def test_a_fitted_pose_reads_the_style_pixel_the_posed_image_shows_in_every_cell_convention(cell):
    """The pose of a map fitted between cells of ``cell`` px: the posed image at a cell centre shows the style at
    that cell's flow turned back into the style (``to_style``), whatever the grid. The style is linear in x and y,
    which bilinear sampling reproduces exactly between pixels too."""
    r = 32
    t = torch.linspace(-1, 1, r)
    y, x = torch.meshgrid(t, t, indexing="ij")
    style = torch.stack([x, y, 0.5 * x - 0.25 * y])[None].expand(2, -1, -1, -1)
    theta_cells = torch.stack([_similarity(1.25, 10.0, [0.1, 0.05]), _similarity(0.9, -5.0, [-0.1, 0.0], True)])
    pose = FittedPose.from_cells(theta_cells, r, cell)
    n = r // cell
    centres = coordinate_grid(n, n).T.reshape(1, 2, n, n).expand(2, -1, -1, -1)  # cell convention
    k = canvas_scale(r, cell)
    sample = lambda image, f: F.grid_sample(image, f.permute(0, 2, 3, 1), align_corners=True)  # noqa: E731
    shown = sample(pose.apply(style), centres * k)       # the posed image at each cell centre (pixel convention)
    read = sample(style, pose.to_style(centres, r, cell) * k)
    inside = (pose.to_style(centres, r, cell).abs() < 0.85).all(1, keepdim=True)  # away from the border it clamps to
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(read * inside, shown * inside, atol=1e-5, rtol=0)
    assert pose.to_style(centres, r, cell).abs().max() <= 1


def test_the_poses_the_search_took_are_written_as_maps():
    maps = pose_matrices(torch.tensor([False, True]), torch.tensor([20.0, -15.0]), 2)
    for m, (deg, mirrored) in zip(maps, ((20.0, False), (-15.0, True))):
        torch.testing.assert_close(m, _similarity(1.0, deg, [0.0, 0.0], mirrored))
    torch.testing.assert_close(pose_matrices(None, None, 1)[0], _similarity(1.0, 0.0, [0.0, 0.0]))


def test_alignment_where_takes_each_pair_from_one_of_two_alignments():
    def alignment(value):
        t = lambda *shape: torch.full(shape, float(value))  # noqa: E731
        return Alignment(flow={2: t(3, 2, 4, 4)}, confidence={2: t(3, 1, 4, 4)}, mask={2: t(3, 1, 4, 4) > 0},
                         maps=[t(3, 5, 4, 4)], mode="hard",
                         refined=Match(t(3, 2, 8, 8), t(3, 1, 8, 8), t(3, 1, 8, 8) > 0),
                         warped=t(3, 3, 8, 8), mirrored=torch.tensor([bool(value)] * 3))
    first, second = alignment(0), alignment(1)
    merged = first.where(torch.tensor([False, True, False]), second)
    for tensor in (merged.flow[2], merged.maps[0], merged.refined.flow, merged.warped, merged.mask[2],
                   merged.mirrored[:, None]):
        assert tensor.flatten(1).float().mean(1).tolist() == [0.0, 1.0, 0.0]
    assert merged.trust is None and merged.mode == "hard"


def test_pose_fit_keeps_per_pair_the_refit_where_surer_by_its_margin():
    """The oracle: the alignment without the fit, the similarity fitted to its trusted finest matches, the style
    re-posed by it and encoded from scratch, matched again; pair by pair the fit reproduces one or the other."""
    model = _model(mirror_search=True, mirror_margin=0.0)
    content, style = _images(4, 2), _images(4, 3)
    with torch.no_grad():
        c = model.encode(content)
        first = model.align(c, model.encode(style))  # the pose search alone (mirror), as before the fit
        finest = first.scales[-1]
        theta, fitted = fit_similarity(first.flow[finest], first.confidence[finest] * first.mask[finest],
                                       first.mirrored)
        pose = FittedPose.from_cells(theta, 32, finest)
        again = model.align(c, model.encode(pose.apply(style)), mirror_search=False)  # the re-posed style
        lead = object_confidence(again.confidence[finest], None) - object_confidence(first.confidence[finest], None)
        assert fitted.all() and (lead > 0).any() and (lead < 0).any(), "seeds where both sides win somewhere"
        assert first.mirrored.any() and not first.mirrored.all(), "seeds where the fit starts from both poses"
        for margin in (0.0, float(lead[lead > 0].min())):  # the second margin turns the closest refit down
            refit = model.align(c, model.encode(style), pose_fit=True, pose_fit_margin=margin)
            take = lead > margin
            assert torch.equal(refit.fitted, take) and refit.options.pose_fit_margin == margin
            assert torch.equal(refit.mirrored, first.mirrored)
            out = model.decode(c, refit)
            outs = model.decode(c, first), model.decode(c, again)
            for i, took in enumerate(take.tolist()):
                for s in first.flow:
                    expected = pose.to_style(again.flow[s], 32, s)[i] if took else first.flow[s][i]
                    torch.testing.assert_close(refit.flow[s][i], expected, atol=1e-6, rtol=0)
                    assert torch.equal(refit.confidence[s][i], (again if took else first).confidence[s][i])
                refined = pose.to_style(again.refined.flow, 32)[i] if took else first.refined.flow[i]
                torch.testing.assert_close(refit.refined.flow[i], refined, atol=1e-6, rtol=0)
                torch.testing.assert_close(out[i], outs[int(took)][i], atol=1e-5, rtol=0)
                before = pose_matrices(first.mirrored, None, 4)[i]
                torch.testing.assert_close(refit.pose[i], pose.theta[i] if took else before)


def test_with_turns_and_one_style_for_the_batch_each_pair_is_re_posed_on_its_own():
    """The turns' pick is where the fit starts (``pose`` keeps it for pairs the fit does not win); one style
    serves the batch and is re-posed once per pair; a content mask with nothing in it leaves a pair unfitted."""
    model = _model(mirror_search=True, mirror_margin=0.0, rotation_search=20.0, rotation_margin=0.0)
    content, style = _images(4, 20), _images(1, 21)
    mask = torch.zeros(4, 1, 32, 32)
    mask[:3, :, 6:26, 8:28] = 1  # the last content has no object: no trusted match, no fit
    with torch.no_grad():
        c, s = model.encode(content, mask), model.encode(style)
        first = model.align(c, s)
        refit = model.align(c, s, pose_fit=True, pose_fit_margin=0.0)
        finest = first.scales[-1]
        theta, fitted = fit_similarity(first.flow[finest], first.confidence[finest] * first.mask[finest],
                                       first.mirrored)
        pose = FittedPose.from_cells(theta, 32, finest)
        again = model.align(c, model.encode(pose.apply(style.expand(4, -1, -1, -1))), mirror_search=False,
                            rotation_search=0.0)
    assert (first.rotation != 0).any(), "seeds where some pair took a turn"
    assert fitted.tolist()[3] is False and not refit.fitted[3]
    lead = object_confidence(again.confidence[finest], c.mask) - object_confidence(first.confidence[finest], c.mask)
    assert torch.equal(refit.fitted, fitted & (lead > 0)) and refit.fitted.any() and not refit.fitted.all()
    turned = pose_matrices(first.mirrored, first.rotation, 4)
    for i in range(4):
        took = bool(refit.fitted[i])
        torch.testing.assert_close(refit.pose[i], pose.theta[i] if took else turned[i])
        expected = pose.to_style(again.flow[finest], 32, finest)[i] if took else first.flow[finest][i]
        torch.testing.assert_close(refit.flow[finest][i], expected, atol=1e-6, rtol=0)
    assert torch.equal(refit.rotation, first.rotation) and torch.equal(refit.mirrored, first.mirrored)


def test_pose_fit_is_off_by_default_checked_and_never_on_the_soft_path():
    model = _model()
    c, s = model.encode(_images(2, 4)), model.encode(_images(2, 5))
    with torch.no_grad():
        plain = model.align(c, s)
        assert plain.fitted is None and plain.pose is None and plain.options.pose_fit is False
        assert model.align(c, s, mode="soft", pose_fit=True).fitted is None
        assert _model(pose_fit=True).align(c, s).fitted is not None
        empty = model.encode(_images(2, 4), torch.zeros(2, 1, 32, 32))  # no object: no pair can be fitted
        unfitted = model.align(empty, s, pose_fit=True)
        assert not unfitted.fitted.any() and torch.equal(unfitted.pose, pose_matrices(None, None, 2))
        assert torch.equal(unfitted.flow[2], model.align(empty, s).flow[2])
        with pytest.raises(COATInputError, match="pose_fit_margin"):
            model.align(c, s, pose_fit=True, pose_fit_margin=-0.1)
        with pytest.raises(COATInputError, match="COAT.encode"):
            model.align(c, dataclasses.replace(s, image=None), pose_fit=True)
    assert COATConfig.small().pose_fit is True and COATConfig().pose_fit is False
    assert COATConfig.small().pose_fit_margin == COATConfig().pose_fit_margin == 0.05
    with pytest.raises(ValueError, match="pose_fit_margin"):
        COATConfig.tiny(pose_fit_margin=-1.0)
    legacy = {k: v for k, v in dataclasses.asdict(COATConfig.tiny()).items() if not k.startswith("pose_fit")}
    assert COATConfig.from_json(json.dumps(legacy)).pose_fit is False  # checkpoints from before the fit


def test_the_bench_reports_the_defaults_without_the_fit():
    plain = evaluate(_model(), n_pairs=4, split="hard", batch_size=4)
    fit = evaluate(_model(pose_fit=True), n_pairs=4, split="hard", batch_size=4)
    assert "coat_no_fit" not in plain and fit["coat_no_fit"] == plain["coat"]
    assert fit["coat_trusted_warp"] == plain["coat"] and fit["coat_global"] == plain["coat_global"]
