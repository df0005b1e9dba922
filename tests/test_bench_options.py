"""``python -m coat_model.bench options``: a checkpoint's transfer under other inference options, scored as the
quality bench scores its ``coat`` row (the bench itself is the oracle)."""

import json

import pytest
import torch

from coat_model.bench.options import DEFAULTS, compare, main, parse_variant
from coat_model.bench.quality import KEYS, coat_outputs, evaluate
from coat_model.model.coat import COAT
from coat_model.model.config import COATConfig
from coat_model.train.data.faces import sample_pairs


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return COAT(COATConfig.tiny()).eval()


def test_variants_parse_into_align_keywords():
    assert parse_variant("flow_median=2") == ("flow_median=2", {"flow_median": 2})
    assert parse_variant("plain: refine=false, refine_prior=0.4") == ("plain", {"refine": False, "refine_prior": 0.4})
    assert parse_variant("g:fill=global,scales=8/4") == ("g", {"fill": "global", "scales": (8, 4)})
    assert parse_variant("c:scales=8") == ("c", {"scales": (8,)})
    for bad, says in (("nope=1", "not OPTION=VALUE with an option of COAT.align"),
                      ("flow_median", "not OPTION=VALUE"), ("x:", "at least one OPTION=VALUE"),
                      ("defaults:flow_median=1", "a name other than 'defaults'"),
                      ("scales=8/four", "'8/four' is not a value of scales")):
        with pytest.raises(ValueError, match=says):
            parse_variant(bad)


def test_the_defaults_row_is_the_quality_bench_s_coat_row_and_variants_change_what_they_set(tiny_model):
    bench = evaluate(tiny_model, n_pairs=6, split="easy", batch_size=4)["coat"]
    rows = compare(tiny_model, {"none_trusted": {"confidence_threshold": 2.0},
                                "coarse": parse_variant("scales=8")[1]}, n_pairs=6, batch_size=4)
    assert list(rows) == [DEFAULTS, "none_trusted", "coarse"]
    assert rows[DEFAULTS] == pytest.approx(bench) and set(rows[DEFAULTS]) == set(KEYS)
    assert rows[DEFAULTS]["conf_coverage"] > 0 and rows["none_trusted"]["conf_coverage"] == 0
    assert rows["coarse"]["pck05"] != rows[DEFAULTS]["pck05"]  # cell matches of 8 px instead of 2 px
    other = compare(tiny_model, {}, n_pairs=6, batch_size=4, seed=123)
    assert other[DEFAULTS]["paa"] != rows[DEFAULTS]["paa"]  # another seed draws other pairs


def test_a_refining_model_s_prior_and_refinement_are_options_like_any_other():
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, refine_prior=0.3)).eval()
    rows = compare(model, {"own": {"refine_prior": 0.3}, "free": {"refine_prior": 0.0},
                           "cells": {"refine": False}}, n_pairs=4, batch_size=4)
    assert rows["own"] == rows[DEFAULTS]  # the checkpoint's own prior, given explicitly
    assert rows["free"]["pck02"] != rows[DEFAULTS]["pck02"] != rows["cells"]["pck02"]
    with pytest.raises(ValueError, match="the checkpoint's own row"):
        compare(model, {DEFAULTS: {"refine_prior": 0.0}}, n_pairs=1)


def test_the_bench_scores_without_gradients(tiny_model):
    """The bench's alignments and decodes build no autograd graph, even for a model whose weights require grad."""
    pairs = sample_pairs(2, seed=0, size=32, split="easy")
    outputs = coat_outputs(tiny_model, pairs.content, pairs.style, pairs.flow, pairs.visible, pairs.target)
    assert any(p.requires_grad for p in tiny_model.parameters())
    assert not any(t.requires_grad for m in outputs.values() for t in m.values())


def test_the_command_prints_and_writes_every_variant_and_refuses_bad_ones(tiny_model, tmp_path, capsys):
    ckpt, out = tmp_path / "tiny.safetensors", tmp_path / "sub" / "options.json"
    tiny_model.save(ckpt)
    assert main(["--ckpt", str(ckpt), "--pairs", "3", "--variant", "fill=global", "--variant",
                 "strict:sim_threshold=0.9", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 pairs from seed" in printed and "fill=global" in printed and "strict" in printed
    saved = json.loads(out.read_text())
    assert list(saved["methods"]) == [DEFAULTS, "fill=global", "strict"]
    assert saved["variants"]["strict"] == {"sim_threshold": 0.9} and saved["pairs"] == 3
    for argv, says in ((["--variant", "speed=3"], "not OPTION=VALUE"),
                       (["--variant", "flow_median=2", "--variant", "flow_median=2"], "the same name"),
                       (["--variant", "flow_median=2.5"], "flow_median is a window radius"),
                       (["--variant", "flow_median=2,flow_median=3"], "flow_median is given twice"),
                       (["--data", "procedural:faces-hard", "--variant", "flow_median=2"], "the split is --split's")):
        with pytest.raises(SystemExit):
            main(["--ckpt", str(ckpt), "--pairs", "2", *argv])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ckpt", str(tmp_path / "missing.safetensors"), "--variant", "flow_median=2"])
    assert "checkpoint not found" in capsys.readouterr().err
