"""Evaluation metrics on hand-made inputs with known values, and the baselines on procedural pairs."""

import pytest
import torch

from coat_model.bench import baselines
from coat_model.bench.metrics import (
    PSNR_CAP_DB, bg_l1, compute_metrics, conf_coverage, conf_precision, confidence_sweep, de_part, lab_to_srgb, paa,
    part_scores, part_tallies, pck, psnr, srgb_to_lab,
)
from coat_model.train.data import sample_pairs

H = W = 21       # R = 21: (R - 1) / 2 = 10 pixels per normalised unit


def _identity_flow(b: int = 1, size: int = H) -> torch.Tensor:
    t = torch.linspace(-1, 1, size)
    return torch.stack([t.view(1, size).expand(size, size), t.view(size, 1).expand(size, size)])[None].expand(
        b, 2, size, size).clone()


def _scene():
    """One image: background (0) left third, part 1 middle third, part 2 right third."""
    labels = torch.zeros(1, H, W, dtype=torch.long)
    labels[..., 7:14] = 1
    labels[..., 14:] = 2
    colours = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    image = colours[labels].permute(0, 3, 1, 2).contiguous()
    return image, labels


@pytest.fixture(scope="module")
def pairs():
    return sample_pairs(32, seed=0, size=64)


def test_lab_reference_values_and_round_trip():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).T[None, :, :, None]
    lab = srgb_to_lab(rgb)[0, :, :, 0].T
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [53.39, 0.0, 0.0]])
    assert torch.allclose(lab, expected, atol=0.02)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(lab_to_srgb(srgb_to_lab(x)), x, atol=1e-4)


def test_lab_conversions_agree_with_kornia():
    """kornia (not a dependency of the library, installed with ComfyUI) as an independent oracle: it rounds the
    CIE constants (a 6-digit matrix, 0.008856 and 7.787), which moves Lab by a few thousandths."""
    kornia = pytest.importorskip("kornia")
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[0, :, 0], x[0, :, 1] = 0.0, 1.0  # black and white too
    lab = srgb_to_lab(x)
    torch.testing.assert_close(lab, kornia.color.rgb_to_lab(x), atol=0.01, rtol=0)
    torch.testing.assert_close(lab_to_srgb(lab), kornia.color.lab_to_rgb(lab, clip=True), atol=1e-4, rtol=0)


def test_perfect_output():
    image, labels = _scene()
    m = compute_metrics(image, image, labels, image)
    assert m["paa"] == 1.0 and m["de_part"] == 0.0 and m["l1"] == 0.0 and m["bg_l1"] == 0.0
    assert m["psnr"] == PSNR_CAP_DB
    assert m["pck05"] is None and m["conf_precision"] is None


def test_swapped_part_colours_score_zero_paa():
    target, labels = _scene()
    output = target.clone()
    output[..., 7:14], output[..., 14:] = target[..., 14:15].clone(), target[..., 7:8].clone()
    assert paa(output, target, labels) == 0.0
    red_blue = (srgb_to_lab(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)) -
                srgb_to_lab(torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1))).norm().item()
    assert de_part(output, target, labels) == pytest.approx(red_blue, rel=1e-5)   # about 176 dE


def test_part_scores_say_which_part_failed_and_pool_batches_exactly():
    """Part 1 keeps its colour and its matches, part 2 takes part 1's colour and matches 0.8 px off: per part, PAA
    1 and 0, dE 0 and red-blue, PCK@0.02 1 and 0, PCK@0.05 1 and 1; two tallies summed count both images."""
    target, labels = _scene()
    output, flow = target.clone(), _identity_flow()
    output[..., 14:] = target[..., 7:8]
    flow[:, 0, :, 14:] += 0.08                          # 0.8 px (10 px per unit): within 0.05 * 21, not 0.02 * 21
    visible = labels[:, None] > 0
    tallies = part_tallies(output, target, labels, 3, pred_flow=flow, gt_flow=_identity_flow(), visible=visible)
    scores = part_scores(tallies, ("background", "red", "blue"))
    assert set(scores) == {"red", "blue"}
    red, blue = scores["red"], scores["blue"]
    assert (red["paa"], red["de_part"], red["pck02"], red["pck05"], red["parts"]) == (1.0, 0.0, 1.0, 1.0, 1)
    assert (blue["paa"], blue["pck02"], blue["pck05"]) == (0.0, 0.0, 1.0) and blue["de_part"] > 100
    twice = part_scores({k: 2 * v for k, v in tallies.items()}, ("background", "red", "blue"))
    assert twice["blue"]["parts"] == 2 and twice["blue"]["paa"] == 0.0
    no_flow = part_scores(part_tallies(target, target, labels, 3), ("background", "red", "blue"))
    assert no_flow["blue"]["paa"] == 1.0 and no_flow["blue"]["pck05"] is None


def test_indistinct_target_parts_are_not_scored():
    target, labels = _scene()
    target[..., 14:] = target[..., 7:8]               # both parts red: neither is >= 10 dE from the other
    assert paa(target, target, labels) is None
    assert de_part(target, target, labels) == 0.0


def test_small_parts_are_ignored():
    target, labels = _scene()
    labels[0, 0, 0] = 3                                 # a part of 1 pixel
    assert de_part(target, target, labels) == 0.0 and paa(target, target, labels) == 1.0


def test_psnr_counts_the_object_only_and_grey_de():
    target, labels = _scene()
    output = target.clone()
    output[:, :, :, 7:] -= 0.1                           # object off by 0.1 everywhere -> MSE 0.01 -> 20 dB
    output[:, :, :, :7] = 1.0                            # background changes do not count
    assert psnr(output, target, labels) == pytest.approx(20.0, abs=1e-3)
    grey = torch.full((1, 3, H, W), 0.5)
    white = torch.ones(1, 3, H, W)
    assert de_part(grey, white, labels) == pytest.approx(100.0 - 53.389, abs=0.02)


def test_bg_l1_is_measured_against_the_content():
    content, labels = _scene()
    output = content.clone()
    output[:, :, :, :7] += 0.2
    assert bg_l1(output, content, labels) == pytest.approx(0.2, abs=1e-6)
    full = torch.ones_like(labels)
    assert bg_l1(output, content, full) is None


def test_pck_threshold_in_pixels():
    gt = _identity_flow()
    visible = torch.ones(1, 1, H, W, dtype=torch.bool)
    # alpha * R pixels: 0.05 * 21 = 1.05 px, 0.10 * 21 = 2.1 px; 0.1 normalised = 1 px, 0.15 = 1.5 px
    assert pck(gt + 0.1 * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), gt, visible, 0.05) == 1.0
    off = gt + 0.15 * torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert pck(off, gt, visible, 0.05) == 0.0 and pck(off, gt, visible, 0.10) == 1.0
    half = gt.clone()
    half[..., :10] += 1.0
    assert pck(half, gt, visible, 0.10) == pytest.approx(11 / 21)     # 10 of 21 columns are off
    assert pck(gt, gt, torch.zeros_like(visible), 0.05) is None


def test_pck_accepts_a_coarser_predicted_flow():
    gt = _identity_flow(size=33)
    coarse = _identity_flow(size=9)
    visible = torch.ones(1, 1, 33, 33, dtype=torch.bool)
    assert pck(coarse, gt, visible, 0.05) == 1.0


def test_confidence_precision_and_coverage():
    gt = _identity_flow()
    visible = torch.ones(1, 1, H, W, dtype=torch.bool)
    pred = gt.clone()
    pred[..., :, 11:] += 0.5                             # right half (10 columns) wrong by 5 px
    confidence = torch.zeros(1, 1, H, W)
    confidence[..., :, :11] = 0.9
    confidence[..., :, 11:] = 0.2
    assert conf_precision(pred, gt, visible, confidence) == 1.0
    assert conf_coverage(visible, confidence) == pytest.approx(11 / 21)
    assert conf_precision(pred, gt, visible, confidence, threshold=0.1) == pytest.approx(11 / 21)
    assert conf_precision(pred, gt, visible, confidence, threshold=0.95) is None
    sweep = confidence_sweep(pred, gt, visible, confidence, thresholds=(0.1, 0.5))
    assert [s["coverage"] for s in sweep] == pytest.approx([1.0, 11 / 21])
    cells = torch.tensor([[True, False], [True, False]]).view(1, 1, 2, 2)     # a coarse bool grid
    assert conf_coverage(torch.ones(1, 1, 20, 20, dtype=torch.bool), cells) == 0.5
    m = compute_metrics(gt.new_zeros(1, 3, H, W), gt.new_zeros(1, 3, H, W), _scene()[1],
                        gt.new_zeros(1, 3, H, W), pred, gt, visible, confidence)
    assert m["pck05"] == pytest.approx(11 / 21) and m["conf_precision"] == 1.0


def test_reinhard_matches_style_mean_and_std():
    content, style = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16) * 0.5 + 0.3
    c_lab, s_lab = srgb_to_lab(content), srgb_to_lab(style)
    out = baselines.reinhard_lab(c_lab, s_lab)
    assert torch.allclose(out.mean((2, 3)), s_lab.mean((2, 3)), atol=1e-3)
    assert torch.allclose(out.std((2, 3), unbiased=False), s_lab.std((2, 3), unbiased=False), atol=1e-3)
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[..., :8] = True
    masked = baselines.reinhard_lab(c_lab, s_lab, mask, mask)
    assert torch.allclose(masked[..., :8].mean((2, 3)), s_lab[..., :8].mean((2, 3)), atol=1e-3)
    image = baselines.reinhard(content, style)
    assert image.shape == content.shape and 0 <= image.min() and image.max() <= 1
    assert torch.allclose(srgb_to_lab(image).mean((2, 3)), s_lab.mean((2, 3)), atol=1.0)


def test_ground_truth_scores_perfectly(pairs):
    m = compute_metrics(pairs.target, pairs.target, pairs.content_labels, pairs.content, pairs.flow,
                        pairs.flow, pairs.visible)
    assert m["paa"] == 1.0 and m["de_part"] == 0.0 and m["psnr"] == PSNR_CAP_DB
    assert m["pck05"] == 1.0 and m["bg_l1"] < 0.01


def test_baselines_rank_as_expected(pairs):
    p = pairs

    def score(output):
        return compute_metrics(output, p.target, p.content_labels, p.content)

    identity = score(baselines.identity(p.content, p.style))
    reinhard = score(baselines.reinhard(p.content, p.style))
    copy = score(baselines.style_copy(p.content, p.style))
    bbox = score(baselines.bbox_warp(p.content, p.style, p.content_labels, p.style_labels))
    warp = score(baselines.gt_warp(p.content, p.style, p.flow, p.content_labels))
    oracle = score(baselines.gt_warp(p.content, p.style, p.flow, p.content_labels, p.visible, p.style_labels))
    partwise = score(baselines.partwise_reinhard(p.content, p.style, p.content_labels, p.style_labels))
    # global methods sit near chance (about 1 in 10 parts; near-white eye whites make identity a bit luckier)
    assert identity["paa"] < 0.3 and reinhard["paa"] < 0.3 and identity["de_to_content"] == 0.0
    assert identity["bg_l1"] == 0.0 and copy["bg_l1"] > 0.05 and bbox["bg_l1"] == 0.0 and warp["bg_l1"] == 0.0
    assert warp["paa"] > 0.7 and oracle["paa"] > 0.85 and partwise["paa"] > 0.85
    assert oracle["psnr"] > warp["psnr"] > identity["psnr"] and oracle["de_part"] < 8.0
