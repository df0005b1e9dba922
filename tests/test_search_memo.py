"""The search memo (coat_model/model/search_memo.py): aligning again with it gives the alignment made without it,
value for value, while the poses and matches searched alike are computed once."""

import dataclasses

import pytest
import torch

import coat_model.bench.quality as quality
from coat_model.model.coat import COAT
from coat_model.model.config import COATConfig
from coat_model.model.search_memo import NoMemo, SearchMemo
from coat_model.train.data.faces import sample_pairs

# The quality bench's variants of a model that searches every pose and runs every pixel stage.
VARIANTS = (
    {}, {"refine": False}, {"mirror_search": False}, {"rotation_search": 0.0}, {"pose_fit": False},
    {"flow_median": 0}, {"refine_prior": 0.0}, {"flow_affine": 0}, {"flow_affine_wide": 0},
    {"fill_displacement": False}, {"flow_fill": 0.0, "mirror_search": False, "rotation_search": 0.0, "pose_fit": False},
    {"fill": "global", "confidence_threshold": 2.0, "mirror_search": False, "rotation_search": 0.0, "pose_fit": False},
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return COAT(COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True,
                                mirror_search=True, rotation_search=20.0, pose_fit=True, pose_fit_margin=0.0,
                                flow_median=2, flow_fill=1.0, fill_displacement=True, refine_prior=0.5,
                                flow_affine=2, flow_affine_wide=4)).eval()


@pytest.fixture(scope="module")
def latents(model):
    pairs = sample_pairs(3, seed=11, size=model.config.resolution, split="hard")
    return model.encode(pairs.content), model.encode(pairs.style)


def assert_same(a, b, where="alignment"):
    """Equal to the last bit: tensors (and their dtypes), Matches, dicts, lists, options."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_every_variant_aligned_with_the_memo_is_the_alignment_without_it(model, latents):
    c, s = latents
    memo = SearchMemo()
    with torch.no_grad():
        for variant in VARIANTS:
            assert_same(model.align(c, s, memo=memo, **variant), model.align(c, s, **variant), f"align{variant}")
    assert model.align(c, s, memo=memo).fitted.any()  # the fitted pose's search was memoised too
    assert memo.hits > memo.misses  # most of the search was found there


def test_the_memo_computes_each_pose_and_its_matches_once(model, latents):
    c, s = latents
    calls = {"match": 0, "posed": 0}
    match, posed = model._match, model.posed

    def counting(name, f):
        def call(*args, **kwargs):
            calls[name] += 1
            return f(*args, **kwargs)
        return call

    model._match, model.posed = counting("match", match), counting("posed", posed)
    try:
        memo = SearchMemo()
        with torch.no_grad():
            model.align(c, s, memo=memo)  # 6 poses (as given, mirror, +-20 degrees each mirrored) and the fit
            first = dict(calls)
            for variant in VARIANTS[:10]:  # the pose search's subsets and the pixel stage's ablations
                model.align(c, s, memo=memo, **variant)
    finally:
        del model._match, model.posed
    assert first == {"match": 7, "posed": 5}
    # without the mirror or the turns the pose that wins may differ, and so the fitted pose: matched once each
    assert calls["posed"] == 5 and calls["match"] <= 7 + 2


def test_one_style_for_a_batch_of_contents_is_posed_and_matched_once(model, latents):
    c, s = latents
    one = model.encode(sample_pairs(1, seed=12, size=model.config.resolution, split="hard").style)
    memo = SearchMemo()
    with torch.no_grad():
        first = model.align(c, one, memo=memo)
        misses = memo.misses
        again = model.align(c, one, memo=memo, flow_median=0)
    assert memo.misses == misses  # the style as given, its poses and their matches: all found in the memo
    assert_same(again, model.align(c, one, flow_median=0))
    assert_same(first, model.align(c, one))


def test_other_matcher_options_are_searched_again(model, latents):
    c, s = latents
    memo = SearchMemo()
    with torch.no_grad():
        model.align(c, s, memo=memo, mirror_search=False, rotation_search=0.0, pose_fit=False)
        misses = memo.misses
        model.align(c, s, memo=memo, mirror_search=False, rotation_search=0.0, pose_fit=False, sim_threshold=0.9)
        assert memo.misses == misses + 1
        other = model.encode(torch.rand(3, 3, 32, 32))  # other latents: their own entries
        model.align(other, s, memo=memo, mirror_search=False, rotation_search=0.0, pose_fit=False)
        assert memo.misses == misses + 2


def test_a_memo_belongs_to_one_model(model, latents):
    c, s = latents
    memo = SearchMemo()
    with torch.no_grad():
        model.align(c, s, memo=memo, mirror_search=False, rotation_search=0.0, pose_fit=False)
        twin = COAT(model.config).eval()
        with pytest.raises(ValueError, match="one SearchMemo per model"):
            twin.align(twin.encode(torch.rand(3, 3, 32, 32)), s, memo=memo)


def test_the_quality_bench_scores_the_same_outputs_with_its_memo(model, monkeypatch):
    pairs = sample_pairs(2, seed=5, size=model.config.resolution, split="easy")
    args = (model, pairs.content, pairs.style, pairs.flow, pairs.visible, pairs.target)
    remembered = quality.coat_outputs(*args)
    monkeypatch.setattr(quality, "SearchMemo", NoMemo)  # every alignment afresh
    assert_same(remembered, quality.coat_outputs(*args), "coat_outputs")
    assert {"coat_no_mirror", "coat_no_fit", "coat_no_displacement", "coat_no_wide"} <= set(remembered)
