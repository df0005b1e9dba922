"""Property-based tests (hypothesis): input validation of the library and the nodes, and the correspondence
functions. Any input either gives outputs of the right shape and range or a ``COATInputError``, never another
exception; matches and attention keep their shapes, finite values and ranges for any sizes.

Small example counts and a tiny model: a background training run shares the CPU. Derandomised, so a failure
reproduces; the failing example is printed by hypothesis.
"""
import sys

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import coat_model
from coat_model import COATInputError
from coat_model.model.attention import attend, chunked_argmax, naive_argmax
from coat_model.model.matching import hard_match, soft_match

SETTINGS = settings(deadline=None, max_examples=25, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64, torch.bool]
SIDE = st.sampled_from([0, 1]) | st.integers(2, 6)   # empty and single-pixel sides often
SPECIAL = [0.0, 1.0, -0.5, 2.0, 255.0, float("nan"), float("inf"), float("-inf")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return coat_model.COAT(coat_model.COATConfig.tiny()).eval()


@st.composite
def tensors(draw, dims=None, max_side=40, batch=(0, 3)):
    """A tensor of random rank, shape, dtype and value range (a few special values sprinkled in)."""
    if dims is None:
        shape = draw(st.lists(SIDE, min_size=1, max_size=5))
    else:
        shape = dims(draw)
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 3.0, 255.0]))
    offset = draw(st.sampled_from([0.0, 0.0, 0.0, -1.0]))
    x = torch.rand(shape, generator=g, dtype=torch.float64) * scale + offset
    if x.numel() and draw(st.booleans()):
        flat = x.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    if dtype.is_floating_point:
        return x.to(dtype)
    if dtype == torch.bool:
        return x > 0.5
    return x.nan_to_num(0, 0, 0).clamp(0, 255).round().to(dtype)


def image_shapes(layout):
    """Mostly well-formed image shapes (with random sizes, channels and batch), sometimes anything."""
    def draw_shape(draw):
        if draw(st.integers(0, 4)) == 0:
            return draw(st.lists(SIDE, min_size=1, max_size=5))
        b = draw(st.sampled_from([1, 1, 1, 0, 2, 3]))
        h, w = (draw(st.sampled_from([0, 1]) | st.integers(2, 40)) for _ in range(2))
        c = draw(st.sampled_from([3, 3, 3, 1, 2, 4]))
        return [b, c, h, w] if layout == "bchw" else [b, h, w, c]
    return draw_shape


def assert_image(x, shape):
    assert isinstance(x, torch.Tensor) and tuple(x.shape) == tuple(shape), (tuple(x.shape), shape)
    assert x.dtype.is_floating_point and torch.isfinite(x).all()
    assert x.min() >= 0 and x.max() <= 1


# -- the library ------------------------------------------------------------------------------------------------


@SETTINGS
@given(content=tensors(image_shapes("bchw")), style=tensors(image_shapes("bchw")),
       mask=st.none() | tensors(), mode=st.sampled_from(["hard", "soft"]))
@example(content=torch.rand(1, 3, 0, 5), style=torch.rand(1, 3, 8, 8), mask=None, mode="hard")  # found: no pixels
def test_transfer_gives_images_in_range_or_a_clear_error(model, content, style, mask, mode):
    try:
        with torch.no_grad():
            images, confidence = model.transfer(content, style, content_mask=mask, mode=mode)
    except COATInputError as e:
        assert str(e)
        return
    b, _, h, w = content.shape
    assert_image(images, (b, 3, h, w))
    assert_image(confidence, (b, 1, h, w))


@SETTINGS
@given(images=tensors(image_shapes("bchw")))
@example(images=torch.rand(2, 3, 7, 0))
def test_check_images_accepts_exactly_finite_float_rgb_in_range(images):
    from coat_model.model.inputs import check_images

    try:
        assert check_images(images) is images
    except COATInputError:
        ok = (images.dim() == 4 and images.shape[0] > 0 and images.shape[1] == 3 and images.dtype.is_floating_point
              and images.shape[2] > 0 and images.shape[3] > 0 and torch.isfinite(images).all()
              and images.min() >= -1e-3 and images.max() <= 1 + 1e-3)
        assert not ok, f"a valid image batch {tuple(images.shape)} {images.dtype} was refused"
        return
    assert images.dim() == 4 and images.shape[1] == 3 and images.dtype.is_floating_point


# -- the nodes (in-process ComfyUI) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(comfy_inprocess):
    M = comfy_inprocess.NODE_CLASS_MAPPINGS
    types = sys.modules[M["COATTransfer"].__module__.rsplit(".", 1)[0] + ".types"]
    return M, types


@SETTINGS
@given(content=tensors(image_shapes("bhwc")), style=tensors(image_shapes("bhwc")), mask=st.none() | tensors(),
       mode=st.sampled_from(["hard", "soft"]), strength=st.floats(0, 2), layers=st.integers(-1, 8))
@example(content=torch.rand(1, 0, 5, 3), style=torch.rand(1, 8, 8, 3), mask=torch.ones(1, 8, 8), mode="hard",
         strength=1.0, layers=-1)                                             # found: no pixels, with a mask
def test_transfer_node_gives_images_in_range_or_a_clear_error(nodes, model, content, style, mask, mode, strength,
                                                              layers):
    M, types = nodes
    handle = types.LoadedModel(model, "sdpa", "tiny")
    try:
        with torch.inference_mode():  # as ComfyUI runs nodes
            out = M["COATTransfer"].execute(handle, content, style, n_content_layers=layers,
                                            style_strength=strength, mode=mode, content_mask=mask)
    except COATInputError as e:
        assert str(e)
        return
    image, confidence = out.args
    b, h, w, _ = content.shape
    assert_image(image, (b, h, w, 3))
    assert_image(confidence, (b, h, w))


@SETTINGS
@given(mask=tensors(), image=tensors(image_shapes("bhwc")))
@example(mask=torch.ones(1, 0, 5), image=torch.rand(1, 8, 8, 3))                # found: a mask without pixels
def test_object_mask_is_resized_to_the_image_or_refused(nodes, mask, image):
    _, types = nodes
    if image.dim() != 4 or 0 in image.shape[:3]:
        return  # object_mask is only called with a checked IMAGE
    try:
        m = types.object_mask(mask, image)
    except COATInputError as e:
        assert str(e)
        return
    assert tuple(m.shape) in {(1, *image.shape[1:3]), tuple(image.shape[:3])}
    assert m.dtype == torch.float32 and torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1


# -- correspondence -----------------------------------------------------------------------------------------------


@st.composite
def descriptor_pairs(draw):
    b, c = draw(st.integers(1, 2)), draw(st.integers(1, 8))
    h, w, hs, ws = (draw(st.integers(1, 9)) for _ in range(4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["random", "random", "constant", "shifted", "huge"]))
    dc, ds = torch.randn(b, c, h, w, generator=g), torch.randn(b, c, hs, ws, generator=g)
    if kind == "constant":     # every cell alike: centring leaves zero vectors
        dc, ds = torch.ones_like(dc), torch.ones_like(ds)
    elif kind == "shifted":    # the style is the content, rolled
        ds = dc.roll(1, dims=-1)
    elif kind == "huge":
        dc, ds = dc * 1e4, ds * 1e-4
    return dc, ds


def assert_match(m, b, h, w):
    assert m.flow.shape == (b, 2, h, w) and m.confidence.shape == (b, 1, h, w) and m.mask.shape == (b, 1, h, w)
    assert m.mask.dtype == torch.bool
    assert torch.isfinite(m.flow).all() and torch.isfinite(m.confidence).all()
    assert m.flow.abs().max() <= 1 + 1e-5
    assert m.confidence.min() >= 0 and m.confidence.max() <= 1


@SETTINGS
@given(pair=descriptor_pairs(), geometric=st.booleans(), sim=st.floats(-1, 1), sigma=st.floats(0.1, 4),
       threshold=st.floats(0, 1), center=st.booleans())
def test_hard_match_shapes_and_ranges(pair, geometric, sim, sigma, threshold, center):
    dc, ds = pair
    b, _, h, w = dc.shape
    m = hard_match(dc, ds, sim_threshold=sim, cycle_sigma=sigma, geometric=geometric,
                   confidence_threshold=threshold, center=center)
    assert_match(m, b, h, w)
    assert m.similarity.shape == (b, 1, h, w) and (m.similarity.abs() <= 1 + 1e-5).all()
    assert not (m.mask & (m.confidence < threshold)).any()
    prior = hard_match(dc[..., ::2, ::2], ds, geometric=geometric)          # coarse-to-fine windows
    assert_match(hard_match(dc, ds, prior=prior, search_radius=1, center=center), b, h, w)


@SETTINGS
@given(pair=descriptor_pairs(), temperature=st.floats(0.005, 2), sigma=st.floats(0.1, 4), threshold=st.floats(0, 1),
       backend=st.sampled_from(["naive", "chunked", "sdpa"]), values=st.integers(0, 5))
def test_soft_match_shapes_and_ranges(pair, temperature, sigma, threshold, backend, values):
    dc, ds = pair
    b, _, h, w = dc.shape
    v = torch.rand(b, values, *ds.shape[-2:]) if values else None
    m = soft_match(dc, ds, v, temperature=temperature, cycle_sigma=sigma, threshold=threshold, backend=backend)
    assert_match(m, b, h, w)
    assert torch.equal(m.mask, m.confidence >= threshold)
    if v is None:
        assert m.aligned is None
    else:  # convex combinations of the style values
        assert m.aligned.shape == (b, values, h, w) and torch.isfinite(m.aligned).all()
        assert m.aligned.min() >= -1e-5 and m.aligned.max() <= 1 + 1e-5


@SETTINGS
@given(b=st.integers(1, 2), lq=st.integers(1, 70), lk=st.integers(1, 70), c=st.integers(1, 12), cv=st.integers(1, 12),
       scale=st.floats(0.01, 100), backend=st.sampled_from(["naive", "chunked", "sdpa"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       chunk=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_attend_shapes_finite_and_convex(b, lq, lk, c, cv, scale, backend, dtype, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, lq, c, generator=g), torch.randn(b, lk, c, generator=g)
    v = torch.rand(b, lk, cv, generator=g).to(dtype)
    out = attend(q.to(dtype), k.to(dtype), v, scale=scale, backend=backend, chunk=chunk)
    assert out.shape == (b, lq, cv) and out.dtype == dtype and torch.isfinite(out).all()
    vf = v.float()
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    assert (out.float() >= vf.amin(1, keepdim=True) - tol).all()
    assert (out.float() <= vf.amax(1, keepdim=True) + tol).all()
    if dtype == torch.float32:
        ref = attend(q, k, v, scale=scale, backend="naive")
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    values, index = chunked_argmax(q, k, chunk=chunk)
    ref_values, _ = naive_argmax(q, k)
    assert index.shape == (b, lq) and index.min() >= 0 and index.max() < lk
    assert torch.allclose(values, ref_values, atol=1e-5)


def test_attend_refuses_bad_shapes_with_value_error():
    q = torch.zeros(1, 4, 3)
    for bad in ((q, q[..., :2], q), (q, q, q[:, :2]), (q[0], q, q)):
        with pytest.raises(ValueError, match="shapes|3-d"):
            attend(*bad, scale=1.0, backend="naive")
