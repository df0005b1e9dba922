"""Procedural cars: the second category drawn by the faces' renderer, its names, and the bench on it."""

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from coat_model.bench.quality import main as quality_main
from coat_model.model.coat import COAT
from coat_model.model.config import COATConfig
from coat_model.train.cli import make_dataset
from coat_model.train.data.cars import CAR_INSTANCES, CAR_LABELS, CARS, sample_car_appearance, sample_car_structure
from coat_model.train.data.categories import CATEGORIES, parse_procedural
from coat_model.train.data.faces import (
    FACES, ProceduralDataset, _rasterise, render, sample_pairs, true_correspondence,
)

SIZE = 64


def _identity_flow(n: int, size: int) -> torch.Tensor:
    t = torch.linspace(-1, 1, size)
    grid = torch.stack([t.view(1, size).expand(size, size), t.view(size, 1).expand(size, size)])
    return grid[None].expand(n, -1, -1, -1)


def test_every_car_part_appears_and_the_same_parameters_render_the_same_pixels():
    s, a = sample_car_structure(16, 3), sample_car_appearance(16, 4)
    images, labels, local = render(s, a, SIZE, category=CARS)
    assert images.shape == (16, 3, SIZE, SIZE) and labels.shape == (16, SIZE, SIZE)
    assert local.shape == (16, 2, SIZE, SIZE)
    assert set(labels.unique().tolist()) == set(range(len(CAR_LABELS)))
    assert 0.08 < (labels != 0).float().mean() < 0.4                     # an elongated object on a background
    assert torch.equal(images, render(sample_car_structure(16, 3), sample_car_appearance(16, 4), SIZE,
                                      category=CARS)[0])
    # appearance changes pixels, not labels
    recoloured, labels2, _ = render(s, sample_car_appearance(16, 5), SIZE, category=CARS)
    assert torch.equal(labels, labels2) and not torch.allclose(images, recoloured)


def test_the_hard_split_faces_both_ways_and_the_easy_one_does_not():
    assert not sample_car_structure(64, 1, "easy").flipped.any()
    flipped = sample_car_structure(64, 1, "hard").flipped.float().mean()
    assert 0.25 < flipped < 0.75
    with pytest.raises(ValueError, match="split must be one of"):
        sample_car_structure(2, 0, "medium")


def test_correspondence_of_a_car_with_itself_is_the_identity():
    s = sample_car_structure(4, 7, "hard")
    flow, visible = true_correspondence(s, s, SIZE, category=CARS)
    _, labels, _ = render(s, sample_car_appearance(4, 0), SIZE, category=CARS)
    assert torch.allclose(flow, _identity_flow(4, SIZE), atol=1e-4)
    assert torch.equal(visible[:, 0], labels != 0)


@pytest.mark.parametrize("split", ["easy", "hard"])
def test_correspondence_maps_each_car_part_to_the_same_part_front_wheel_to_front_wheel(split):
    pairs = sample_pairs(8, seed=31, size=128, split=split, category=CARS)
    onehot = F.one_hot(pairs.style_labels, len(CAR_LABELS)).permute(0, 3, 1, 2).float()
    present = F.max_pool2d(onehot, 3, 1, 1)
    at_target = F.grid_sample(present, pairs.flow.permute(0, 2, 3, 1), mode="nearest", align_corners=True)
    hit = at_target.gather(1, pairs.content_labels[:, None])[:, 0] > 0.5
    vis = pairs.visible[:, 0]
    assert hit[vis].float().mean() > 0.995
    assert 0.4 < vis.sum() / (pairs.content_labels != 0).sum() < 1.0
    # Instance by instance: the content's front wheel lands on the style's front wheel, which a flip puts on the
    # other side (labels alone do not tell the two wheels apart).
    top_c, top_s = (_rasterise(s, 128, category=CARS).top for s in (pairs.content_structure, pairs.style_structure))
    near = F.max_pool2d(F.one_hot(top_s, len(CAR_INSTANCES) + 1).permute(0, 3, 1, 2).float(), 3, 1, 1)
    at = F.grid_sample(near, pairs.flow.permute(0, 2, 3, 1), mode="nearest", align_corners=True)  # within 1 px
    for name in ("wheel_front", "wheel_rear", "headlight", "window_rear"):
        i = CARS.index(name) + 1
        mine = vis & (top_c == i)
        assert mine.sum() > 0 and (at[:, i][mine] > 0.5).float().mean() > 0.995, name
    if split == "hard":
        flipped = pairs.content_structure.flipped != pairs.style_structure.flipped
        assert flipped.any()
        rows = torch.nonzero(flipped).flatten()
        wheel = vis[rows] & (top_c[rows] == CARS.index("wheel_front") + 1)
        x_c = _identity_flow(len(rows), 128)[:, 0][wheel]
        x_s = pairs.flow[rows][:, 0][wheel]
        assert (torch.sign(x_c) != torch.sign(x_s)).float().mean() > 0.8   # mostly across the middle


def test_the_true_transfer_has_the_style_colours_on_the_content_shape():
    pairs = sample_pairs(6, seed=2, size=SIZE, category=CARS)
    body = CAR_LABELS.index("body")
    inside = pairs.content_labels == body
    # plain liveries: the target's body is the style's paint where the style's body is plain
    plain = pairs.style_appearance.cloth[:, 0] == 0
    assert plain.any()
    for i in torch.nonzero(plain).flatten().tolist():
        paint = pairs.style_appearance.base[i, body]
        assert torch.allclose(pairs.target[i][:, inside[i]].median(1).values, paint, atol=0.02)
    assert torch.equal(pairs.content_labels, render(pairs.content_structure, pairs.style_appearance, SIZE,
                                                    category=CARS)[1])


def test_categories_by_name_and_the_datasets_they_make():
    assert CATEGORIES == {"faces": FACES, "cars": CARS}
    assert parse_procedural("procedural:cars") == (CARS, "easy")
    assert parse_procedural("procedural:faces-hard") == (FACES, "hard")
    with pytest.raises(ValueError, match="procedural:cars"):
        parse_procedural("procedural:boats")
    with pytest.raises(ValueError, match="unknown procedural dataset 'cars'"):
        parse_procedural("cars")                                    # the prefix is what says "not a folder"
    with pytest.raises(ValueError, match="or an image folder path"):
        make_dataset("procedural:boats", 32)
    data = make_dataset("procedural:cars-hard", 32, seed=4)
    assert isinstance(data, ProceduralDataset) and data.category is CARS and data.split == "hard"
    draw = pickle.loads(pickle.dumps(data.draw([0, 5])))  # what batch workers hand over
    assert draw.category.name == "cars" and len(draw.category.instances) == len(CAR_INSTANCES)
    assert torch.equal(draw.render(), data.batch([0, 5]))
    assert not torch.equal(data.batch([0]), make_dataset("procedural:faces-hard", 32, seed=4).batch([0]))


def test_the_quality_bench_scores_cars_per_car_part(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt, out = tmp_path / "tiny.safetensors", tmp_path / "q.json"
    COAT(COATConfig.tiny()).eval().save(ckpt)
    assert quality_main(["--ckpt", str(ckpt), "--pairs", "2", "--data", "procedural:cars", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["data"] == "procedural:cars"
    assert set(record["parts"]["coat"]) <= set(CAR_LABELS[1:]) and "rims" in record["parts"]["coat"]
    assert record["methods"]["gt_warp"]["paa"] > record["methods"]["style_copy"]["paa"]
    capsys.readouterr()
    for wrong in ("procedural:boats", "cars", str(tmp_path)):       # the bench needs a category's truth, no folder
        with pytest.raises(SystemExit):
            quality_main(["--ckpt", str(ckpt), "--data", wrong])
        assert "unknown procedural dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality_main(["--ckpt", str(ckpt), "--data", "procedural:cars-hard"])
    assert "--split" in capsys.readouterr().err


def test_parameters_of_another_category_are_refused_with_the_fix():
    cars, faces = (sample_car_structure(2, 1), sample_car_appearance(2, 1)), (FACES.sample_structure(2, 1, "easy"),
                                                                                FACES.sample_appearance(2, 1))
    with pytest.raises(ValueError, match="category="):
        render(*cars, SIZE)                                          # faces by default
    with pytest.raises(ValueError, match="category="):
        render(*faces, SIZE, category=CARS)
    with pytest.raises(ValueError, match="category="):
        render(cars[0], faces[1], SIZE, category=CARS)
    with pytest.raises(ValueError, match="category="):
        true_correspondence(cars[0], cars[0], SIZE)


def test_render_folder_writes_the_category_as_a_folder_the_trainer_reads(tmp_path):
    """benchmarks/render_folder.py: the held-out check's data, PNG files a user's folder would hold, read back by
    ``--data FOLDER`` as the images the renderer draws (to 8 bits)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "render_folder.py"
    spec = importlib.util.spec_from_file_location("render_folder", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(tmp_path), "--category", "cars", "--count", "3", "--size", "32", "--seed", "5"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cars_00000.png", "cars_00001.png", "cars_00002.png"]
    folder = make_dataset(str(tmp_path), 32)
    drawn = ProceduralDataset(size=32, length=3, seed=5, category=CARS).batch(range(3))
    read = folder.draw(range(3)).render(torch.device("cpu"))
    assert read.shape == drawn.shape
    assert (read - drawn).abs().max() <= 1 / 255 + 1e-6
