"""Image folders and in-memory batches as training datasets."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from coat_model.train.data import IMAGE_EXTENSIONS, ImageFolderDataset, images_to_dataset


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(h, w, colour):
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3)).copy()


def test_empty_folder_names_the_folder_and_the_extensions(tmp_path):
    with pytest.raises(ValueError) as error:
        ImageFolderDataset(tmp_path, 32)
    message = str(error.value)
    assert str(tmp_path) in message and ".png" in message and ".jpg" in message and "no usable images" in message


def test_folder_with_only_other_files_is_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no usable images"):
        ImageFolderDataset(tmp_path, 32)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", 32)


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    _save(tmp_path / "good.png", _rgb(8, 8, (255, 0, 0)))
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as record:
        ds = ImageFolderDataset(tmp_path, 16)
    assert len(record) == 1
    assert "skipped 2 unreadable" in str(record[0].message) and "broken.png" in str(record[0].message)
    assert len(ds) == 1 and ds.skipped == 2


def test_only_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="1 unreadable"):
        ImageFolderDataset(tmp_path, 16)


def test_file_that_fails_to_decode_later_is_replaced(tmp_path):
    _save(tmp_path / "a_good.png", _rgb(20, 20, (0, 0, 255)))
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    truncated = _save(tmp_path / "b_truncated.png", noise)
    truncated.write_bytes(truncated.read_bytes()[:200])       # the header still parses
    ds = ImageFolderDataset(tmp_path, 8, flip=False)
    assert len(ds) == 2
    with pytest.warns(UserWarning, match="could not decode"):
        item = ds[1]
    assert torch.allclose(item, torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]                                                  # warned once only


def test_recursive_any_case_extension_and_sizes(tmp_path):
    _save(tmp_path / "a" / "b" / "deep.PNG", _rgb(5, 9, (10, 20, 30)))
    _save(tmp_path / "tiny.bmp", _rgb(1, 1, (255, 128, 0)))
    _save(tmp_path / "big.jpg", _rgb(300, 200, (0, 255, 0)))
    ds = ImageFolderDataset(tmp_path, 32)
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        assert item.shape == (3, 32, 32) and item.dtype == torch.float32
        assert 0 <= item.min() and item.max() <= 1
    tiny = [ds[i] for i in range(3) if ds.files[i].name == "tiny.bmp"][0]
    assert torch.allclose(tiny, torch.tensor([1.0, 128 / 255, 0.0]).view(3, 1, 1).expand(3, 32, 32), atol=1e-6)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)         # opaque red on the left
    rgba[:, 2:] = (0, 0, 255, 0)           # fully transparent blue on the right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    item = ImageFolderDataset(tmp_path, 4, flip=False)[0]
    assert torch.allclose(item[:, :, 0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1))
    assert torch.allclose(item[:, :, 3], torch.ones(3, 1))


def test_grayscale_and_palette(tmp_path):
    Image.fromarray(np.full((6, 6), 51, dtype=np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(_rgb(6, 6, (0, 0, 255))).convert("P").save(tmp_path / "pal.gif")
    ds = ImageFolderDataset(tmp_path, 6, flip=False)
    grey = [ds[i] for i in range(2) if ds.files[i].suffix == ".png"][0]
    assert torch.allclose(grey, torch.full((3, 6, 6), 0.2))
    pal = [ds[i] for i in range(2) if ds.files[i].suffix == ".gif"][0]
    assert torch.allclose(pal, torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 6, 6), atol=1e-6)


def test_sixteen_bit_keeps_its_range(tmp_path):
    values = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")           # a 16-bit grayscale PNG ("I;16")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode in ("I;16", "I")
    item = ImageFolderDataset(tmp_path, 2, flip=False)[0]
    expected = torch.tensor(values.astype(np.float32) / 65535.0)
    assert torch.allclose(item, expected.expand(3, 2, 2), atol=1e-6)


def test_centre_crop_of_wide_images(tmp_path):
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:20] = (0, 255, 0)
    wide[:, 20:] = (0, 0, 255)
    _save(tmp_path / "wide.png", wide)
    item = ImageFolderDataset(tmp_path, 10, flip=False)[0]
    assert torch.allclose(item, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 10, 10))


def test_random_flip(tmp_path):
    half = np.zeros((8, 8, 3), dtype=np.uint8)
    half[:, :4] = 255
    _save(tmp_path / "half.png", half)
    torch.manual_seed(0)
    lefts = {ImageFolderDataset(tmp_path, 8, flip=True)[0][0, 0, 0].item() for _ in range(20)}
    assert lefts == {0.0, 1.0}
    assert ImageFolderDataset(tmp_path, 8, flip=False)[0][0, 0, 0] == 1.0


def test_extensions_listed():
    assert {".png", ".jpg", ".jpeg", ".webp"} <= set(IMAGE_EXTENSIONS)


def test_images_to_dataset():
    batch = torch.rand(3, 3, 20, 30)
    ds = images_to_dataset(batch, size=16, flip=False)
    assert len(ds) == 3 and ds[0].shape == (3, 16, 16)
    assert images_to_dataset(batch, flip=False)[1].shape == (3, 20, 20)
    assert torch.allclose(images_to_dataset(batch, flip=False)[1], batch[1, :, :, 5:25])
    grey = images_to_dataset(torch.full((2, 1, 8, 8), 0.25), flip=False)[0]
    assert torch.allclose(grey, torch.full((3, 8, 8), 0.25))
    rgba = torch.zeros(1, 4, 8, 8)
    assert torch.allclose(images_to_dataset(rgba, flip=False)[0], torch.ones(3, 8, 8))   # transparent -> white


def test_images_to_dataset_rejects_bad_layouts():
    with pytest.raises(ValueError, match="movedim"):
        images_to_dataset(torch.rand(2, 16, 16, 3))
    with pytest.raises(ValueError, match="empty"):
        images_to_dataset(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        images_to_dataset(torch.rand(3, 8, 8))


def _mixed_folder(tmp_path):
    """Files of three sizes and kinds: 8-bit RGB (two sizes), grayscale, RGBA on white, a 16-bit PNG."""
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(tmp_path / f"rgb_a{i}.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    _save(tmp_path / "rgb_b.jpg", rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8), "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(rng.integers(0, 65535, (18, 18), dtype=np.uint16)).save(tmp_path / "deep.png")
    _save(tmp_path / "large.png", rng.integers(0, 256, (120, 90, 3), dtype=np.uint8))
    return ImageFolderDataset(tmp_path, 16, flip=True)


def test_drawn_files_are_decoded_small_and_made_on_the_device_as_items_are(tmp_path):
    """``draw`` decodes 8-bit files as uint8 at their own size (what workers hand over); ``render`` converts,
    crops, resizes and flips them where asked, equal to the per-item path, with the given flips."""
    ds = _mixed_folder(tmp_path)
    indices = list(range(len(ds)))
    flips = [i % 2 == 1 for i in indices]
    drawn = ds.draw(indices, flips)
    kinds = {p.name: img.dtype for p, img in zip(ds.files, drawn.images)}
    assert kinds["rgb_a0.png"] == kinds["grey.png"] == kinds["rgb_b.jpg"] == torch.uint8
    assert kinds["cutout.png"] == kinds["deep.png"] == torch.float32  # composited on white / 16-bit: kept exact
    shapes = {p.name: tuple(img.shape) for p, img in zip(ds.files, drawn.images)}
    assert shapes["large.png"] == (3, 24, 18) and shapes["rgb_a0.png"] == (3, 20, 28)  # shrunk 5x and 2x, >= 16
    assert len(drawn.groups) < len(ds)  # same-size images cross as one tensor
    made = drawn.render("cpu")
    assert made.shape == (len(ds), 3, 16, 16) and made.dtype == torch.float32
    plain = ImageFolderDataset(tmp_path, 16, flip=False)
    for i in indices:
        expected = plain[i].flip(-1) if flips[i] else plain[i]
        assert torch.equal(made[i], expected), ds.files[i].name
    assert torch.equal(plain.draw(indices, flips).render(), torch.stack([plain[i] for i in indices]))  # no flips


def test_in_memory_images_draw_the_same_way(tmp_path):
    batch = torch.rand(5, 3, 20, 28)
    ds = images_to_dataset(batch, size=12)
    made = ds.draw([4, 0, 2], [True, False, False]).render()
    plain = images_to_dataset(batch, size=12, flip=False)
    assert torch.equal(made, torch.stack([plain[4].flip(-1), plain[0], plain[2]]))


def test_folder_pairs_do_not_depend_on_how_positions_are_split(tmp_path):
    """Flip bits come from each position's own stream: a batch built whole equals its halves built apart (two
    ranks, or two workers), for an image folder as for procedural faces, and the flips do happen."""
    from coat_model.train.cli import make_dataset
    from coat_model.train.pairs import GlobalSampler, draw_pairs

    for dataset in (_mixed_folder(tmp_path), make_dataset("procedural:faces", 64, seed=2)):  # faces: windowed
        sampler, positions = GlobalSampler(len(dataset), 4), list(range(40, 56))
        options = dict(mix=(0.5, 0.25, 0.25), palette_share=0.5, blur_share=0.3)
        whole = draw_pairs(dataset, sampler, positions, 4, **options).build()
        halves = [draw_pairs(dataset, sampler, part, 4, **options).build() for part in (positions[:8], positions[8:])]
        for name in ("content", "style", "target", "flow", "flow_valid"):
            assert torch.equal(getattr(whole, name), torch.cat([getattr(h, name) for h in halves])), name
        assert whole.kinds == halves[0].kinds + halves[1].kinds
    drawn = draw_pairs(_mixed_folder(tmp_path), GlobalSampler(7, 4), positions, 4, **options).images
    assert 0 < sum(drawn.flips) < len(positions)
