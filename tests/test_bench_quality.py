"""The quality bench (``python -m coat_model.bench quality``): its methods, its JSON, its flow conversion."""

import json

import pytest
import torch

from coat_model.bench.metrics import pck
from coat_model.bench.quality import (
    EVAL_SEED, KEYS, PART_METHODS, cell_flow_to_pixels, coat_outputs, evaluate, gt_matches, main,
)
from coat_model.model.coat import COAT
from coat_model.model.config import COATConfig
from coat_model.model.matching import coordinate_grid, resample_flow, untokens
from coat_model.train.data.faces import sample_pairs
from coat_model.train.pairs import identity_flow

METHODS = ("coat", "coat_global", "coat_flow_warp", "coat_gt_matches", "coat_autoencode", "identity", "style_copy",
           "reinhard", "bbox_warp", "partwise_reinhard", "gt_warp")
MATCHED = ("coat", "coat_flow_warp", "gt_warp", "style_copy")  # the methods that have a flow to score


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return COAT(COATConfig.tiny()).eval()


def test_cell_flow_to_pixels_places_each_pixel_at_its_matched_cell_centre():
    # 2x2 cells of 2 px at R = 4: the identity cell flow puts pixels 0-1 at pixel 0.5 and pixels 2-3 at 2.5.
    line = torch.tensor([-1.0, 1.0])
    flow = torch.stack([line.view(1, 2).expand(2, 2), line.view(2, 1).expand(2, 2)])[None]
    pixels = (cell_flow_to_pixels(flow, scale=2, resolution=4) + 1) / 2 * 3
    assert torch.allclose(pixels[0, 0, 0], torch.tensor([0.5, 0.5, 2.5, 2.5]))
    assert torch.allclose(pixels[0, 1, :, 0], torch.tensor([0.5, 0.5, 2.5, 2.5]))
    swapped = cell_flow_to_pixels(flow.flip(-1), scale=2, resolution=4)  # every cell matches its mirror
    assert torch.allclose((swapped[0, 0, 0] + 1) / 2 * 3, torch.tensor([2.5, 2.5, 0.5, 0.5]))


def test_every_method_reports_every_metric_with_nulls_where_it_does_not_apply(tiny_model):
    results = evaluate(tiny_model, n_pairs=6, split="easy", batch_size=4)
    assert tuple(results) == METHODS
    for name, metrics in results.items():
        assert set(metrics) == set(KEYS)
        for key in ("paa", "de_part", "psnr", "bg_l1"):
            assert metrics[key] is not None, (name, key)
        has_flow = metrics["pck05"] is not None
        assert has_flow == (name in MATCHED), name
        assert (metrics["conf_precision"] is not None) == (name == "coat"), name
    # Known answers: the oracle's flow is exact, identity keeps the background, the style copy does not.
    assert results["gt_warp"]["pck05"] == results["gt_warp"]["pck10"] == 1.0
    assert results["identity"]["bg_l1"] == 0.0 and results["style_copy"]["bg_l1"] > 0.0
    assert results["gt_warp"]["paa"] > results["identity"]["paa"]
    assert results["partwise_reinhard"]["de_part"] < results["reinhard"]["de_part"]
    # The style copy's matches are every pixel to itself: its PCK is the identity flow's.
    expected = 0.0
    for start, n in ((0, 4), (4, 2)):  # evaluate's batches
        pairs = sample_pairs(n, seed=EVAL_SEED + start, size=32, split="easy")
        expected += n / 6 * pck(identity_flow(32).expand(n, -1, -1, -1), pairs.flow, pairs.visible, 0.05)
    assert results["style_copy"]["pck05"] == pytest.approx(expected, abs=1e-6)
    # The flow-warp ablation scores the very matches the network made.
    assert results["coat_flow_warp"]["pck10"] == results["coat"]["pck10"]


def test_main_prints_the_table_and_writes_the_json(tiny_model, tmp_path, capsys):
    ckpt, out = tmp_path / "tiny.safetensors", tmp_path / "sub" / "q.json"
    tiny_model.save(ckpt)
    assert main(["--ckpt", str(ckpt), "--pairs", "3", "--split", "hard", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in METHODS)
    record = json.loads(out.read_text())
    assert (record["pairs"], record["split"], record["resolution"]) == (3, "hard", 32)
    assert tuple(record["methods"]) == METHODS
    assert all(set(m) == set(KEYS) for m in record["methods"].values())
    assert tuple(record["parts"]) == PART_METHODS and "iris" in record["parts"]["coat"]
    assert set(record["parts"]["coat"]["iris"]) == {"paa", "de_part", "pck02", "pck05", "parts"}
    assert record["parts"]["coat_gt_matches"]["iris"]["pck05"] is None      # a decoder oracle has no flow
    assert "coat_flow_warp PAA" in table and "coat PCK@.05" in table


def test_ground_truth_matches_of_the_identity_are_every_cell_itself():
    r = 16
    flow, visible = identity_flow(r).repeat(2, 1, 1, 1), torch.ones(2, 1, r, r, dtype=torch.bool)
    visible[1, :, :, 8:] = False                     # the right half of image 1 is hidden in the style
    matches = gt_matches(flow, visible, r, (8, 4, 2))
    for s, m in matches.items():
        h = r // s
        assert torch.allclose(m.flow, untokens(coordinate_grid(h, h)[None], h, h).expand(2, -1, -1, -1), atol=1e-5)
        assert m.mask[0].all() and m.mask[1, :, :, : h // 2].all() and not m.mask[1, :, :, h // 2 :].any()
    # Every pixel seen 4 px (one 1/4 cell) to the right: cell x -> x + 1, the last one clamped to the frame.
    shifted = gt_matches(flow + torch.tensor([4 / 15 * 2, 0.0]).view(1, 2, 1, 1), visible, r, (4,))[4]
    assert torch.allclose((shifted.flow[0, 0, 0] + 1) / 2 * 3, torch.tensor([1.0, 2.0, 3.0, 3.0]), atol=1e-5)


def test_interpolated_cell_flow_puts_interior_pixels_where_the_identity_does():
    r, s = 16, 4
    h = r // s
    cells = untokens(coordinate_grid(h, h)[None], h, h)
    pixels = (resample_flow(cells, s, 1, r) + 1) / 2 * (r - 1)  # [1, 2, r, r] in pixels
    inner = slice(s // 2, r - s // 2)   # between the first and last cell centres
    expected = torch.arange(r, dtype=torch.float32)[inner]
    assert torch.allclose(pixels[0, 0, 5, inner], expected, atol=1e-4)
    assert torch.allclose(pixels[0, 1, inner, 5], expected, atol=1e-4)


def test_bounds_order_the_matchers_as_their_precision_and_refuse_bad_scales(capsys):
    from coat_model.bench import bounds

    results = bounds.evaluate(resolution=32, n_pairs=4, split="easy", scales=(8, 2), batch_size=2)
    assert set(results) == {"identity_flow", "gt_flow", "gt_cells8", "gt_cells8_smooth", "gt_cells2",
                            "gt_cells2_smooth"}
    assert results["gt_flow"]["pck05"] == 1.0
    assert results["gt_cells2"]["pck05"] >= results["gt_cells8"]["pck05"]
    assert results["gt_flow"]["de_part"] <= results["gt_cells8"]["de_part"]
    assert results["identity_flow"]["pck05"] < 1.0
    with pytest.raises(SystemExit):
        bounds.main(["--resolution", "64", "--scales", "3"])
    assert "must divide the resolution 64" in capsys.readouterr().err


def test_the_autoencode_ablation_is_the_decoder_on_the_targets_own_latents(tiny_model):
    # Without pixel latents, every layer reads a matched scale, and identity matches at cell centres sample each
    # cell exactly: the ablation must be the plain reconstruction of the target from its latents.
    target = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    content = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    flow, visible = identity_flow(32).expand(3, -1, -1, -1), torch.ones(3, 1, 32, 32, dtype=torch.bool)
    out = coat_outputs(tiny_model, content, target, flow, visible, target)
    with torch.no_grad():
        t = tiny_model.encode(target)
        expected = ((tiny_model.decoder(t.maps) + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(out["coat_autoencode"]["output"], expected)
        # The style is the target itself, seen without motion: perfect matches rebuild it the same way, except
        # that the first layers take the content's latents.
        c = tiny_model.encode(content)
        mixed = c.maps[:tiny_model.config.n_content_layers] + t.maps[tiny_model.config.n_content_layers:]
        torch.testing.assert_close(out["coat_gt_matches"]["output"], ((tiny_model.decoder(mixed) + 1) / 2).clamp(0, 1))


def test_a_refined_warp_style_model_also_reports_its_unrefined_matches_and_its_modulation_path():
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True)).eval()
    results = evaluate(model, n_pairs=4, split="easy", batch_size=4)
    assert {"coat_unrefined", "coat_modulation"} <= set(results)
    for name in ("coat", "coat_unrefined"):
        assert results[name]["pck02"] is not None and results[name]["pck02"] <= results[name]["pck05"]
    assert results["coat_modulation"]["pck05"] is None  # scores the colours only
    # the flow-warp ablation samples the style at the refined matches, the ones "coat" is scored on
    assert results["coat_flow_warp"]["pck05"] == results["coat"]["pck05"]
    assert "coat_gt_refined" not in evaluate(COAT(COATConfig.tiny()).eval(), n_pairs=2, split="easy", batch_size=2)


def test_the_true_cell_matches_through_the_models_own_pixel_stage():
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True,
                                 flow_median=2)).eval()
    pairs = sample_pairs(3, seed=EVAL_SEED, size=32, split="easy")
    with torch.no_grad():
        out = coat_outputs(model, pairs.content, pairs.style, pairs.flow, pairs.visible, pairs.target)
        c, s = model.encode(pairs.content), model.encode(pairs.style)
        cells = gt_matches(pairs.flow, pairs.visible, 32, model.config.scales)
        staged = model.align_from_matches(c, s, cells, refine=True, flow_median=2)
        as_given = model.align_from_matches(c, s, cells)
    # scored on the matches the refinement and the median made of the true cells, which differ from them
    assert torch.equal(out["coat_gt_refined"]["pred_flow"], staged.refined.flow)
    torch.testing.assert_close(out["coat_gt_refined"]["output"], model.decode(c, staged))
    interpolated = resample_flow(cells[min(cells)].flow, min(cells), 1, 32, trusted=cells[min(cells)].mask)
    assert not torch.allclose(staged.refined.flow, interpolated, atol=1e-3)
    assert not torch.equal(out["coat_gt_refined"]["output"], out["coat_gt_matches"]["output"])
    torch.testing.assert_close(out["coat_gt_matches"]["output"], model.decode(c, as_given))


def test_figures_write_the_results_grid_and_the_n_content_sweep(tiny_model, tmp_path, capsys):
    from PIL import Image

    from coat_model.bench.__main__ import main as bench_main

    ckpt = tmp_path / "tiny.safetensors"
    tiny_model.save(ckpt)
    assert bench_main(["figures", "--ckpt", str(ckpt), "--out", str(tmp_path / "fig"), "--pairs", "2"]) == 0
    grid, sweep = Image.open(tmp_path / "fig" / "results_grid.png"), Image.open(tmp_path / "fig" / "n_content_sweep.png")
    assert grid.size[0] > grid.size[1] / 2 * 2.5  # five columns, two rows
    assert sweep.size[0] > sweep.size[1] * (tiny_model.n_layers + 1) / 2  # content, style and L - 1 outputs in a row
    assert "results_grid.png" in capsys.readouterr().out


def test_the_pose_bench_times_each_search_setting_and_writes_the_json(tmp_path, capsys):
    """``python -m coat_model.bench poses``: the settings search 1, 2, 6, 7 and 7 poses of a model whose defaults
    search the mirror and the turns, then fit a pose and take the flow median (the last setting only), and each is
    timed."""
    import coat_model.model.coat as coat_module
    from coat_model.bench.__main__ import main as bench_main
    from coat_model.bench.poses import SETTINGS

    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True,
                                 mirror_search=True, rotation_search=20.0, pose_fit=True, flow_median=2)).eval()
    pairs = sample_pairs(2, seed=EVAL_SEED, size=32, split="hard")
    content, style = model.encode(pairs.content), model.encode(pairs.style)
    matched, median, searched, medians = model._match, coat_module.guided_median, {}, {}

    def counting_match(*args, **kwargs):  # one call per pose matched
        searched[name] = searched.get(name, 0) + 1
        return matched(*args, **kwargs)

    def counting_median(*args, **kwargs):  # one call per assembled alignment
        medians[name] = medians.get(name, 0) + 1
        return median(*args, **kwargs)

    model._match = counting_match
    coat_module.guided_median = counting_median
    try:
        for name, overrides in SETTINGS.items():
            model.align(content, style, **overrides)
    finally:
        del model._match
        coat_module.guided_median = median
    assert searched == {"as_given": 1, "mirror": 2, "searched": 6, "fitted": 7, "defaults": 7}
    assert medians == {"defaults": 1}  # each pair is assembled once, from the pose it keeps (searched or fitted)
    ckpt, out = tmp_path / "tiny.safetensors", tmp_path / "poses.json"
    model.save(ckpt)
    assert bench_main(["poses", "--ckpt", str(ckpt), "--repeats", "1", "--batch", "2", "--json", str(out)]) == 0
    assert "defaults" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert set(record["seconds"]) == set(SETTINGS) and all(t > 0 for t in record["seconds"].values())


def test_the_printed_table_keeps_its_columns_for_the_longest_method_name():
    from coat_model.bench.quality import format_table
    row = dict.fromkeys(KEYS, 0.5) | {"pck02": None}
    text = format_table({"coat": row, "coat_no_displacement": row, "a_method_named_at_length_beyond": row})
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # header, rule and rows end in the same column
    assert all(line.split()[1] == "0.500" for line in lines[2:])  # the name never runs into the first value
