"""The teacher's matches for random pairs (``TrainConfig.teacher_flow``, coat_model/train/teacher.py)."""

import dataclasses
import json

import torch

from coat_model import COAT, COATConfig
from coat_model.train.cli import make_dataset
from coat_model.train.pairs import identity_flow
from coat_model.train.teacher import teacher_matches, with_teacher_flow
from coat_model.train.trainer import TrainConfig, Trainer

# the recipe's pixel stage on a 32 px model: refinement, the fill and the content-guided median
PIXEL_STAGE = dict(pixel_latents=True, refine_dim=8, refine_radius=2, warp_style=True, flow_fill=2.0,
                   warp_everywhere=True, flow_median=2, position_input=True)


def _trainer(steps=20, **kw):
    cfg = TrainConfig(steps=steps, batch_size=8, seed=3, teacher_flow=True, **kw)
    return Trainer(COATConfig.tiny(**PIXEL_STAGE), cfg, make_dataset("procedural:faces", 32, seed=3))


def test_an_image_matched_to_itself_gives_the_identity_where_trusted():
    torch.manual_seed(0)
    model = COAT(COATConfig.tiny(**PIXEL_STAGE)).eval()
    images = make_dataset("procedural:faces", 32, seed=5).batch(range(3))
    flow, trusted = teacher_matches(model, images, images)
    assert flow.shape == (3, 2, 32, 32) and trusted.shape == (3, 1, 32, 32) and trusted.dtype == torch.bool
    assert trusted.float().mean() > 0.5  # a descriptor is nearest itself: the checks trust most of them
    pixels = (flow - identity_flow(32)) * (32 - 1) / 2  # in pixels
    assert pixels.abs().amax(1, keepdim=True)[trusted].max() < 0.5


def test_only_the_random_pairs_take_the_teachers_flow():
    trainer = _trainer()
    batch = trainer.pairs(0)[0]
    random_rows = [i for i, k in enumerate(batch.kinds) if k == "random"]
    others = [i for i, k in enumerate(batch.kinds) if k != "random"]
    assert random_rows and others and not batch.has_flow[random_rows].any()
    taught = with_teacher_flow(batch, trainer.ema)
    for name in ("content", "style", "target", "has_target"):
        assert torch.equal(getattr(taught, name), getattr(batch, name)), name
    for name in ("flow", "flow_valid", "has_flow"):
        assert torch.equal(getattr(taught, name)[others], getattr(batch, name)[others]), name
    flow, trusted = teacher_matches(trainer.ema, batch.content[random_rows], batch.style[random_rows])
    assert torch.equal(taught.flow[random_rows], flow)
    assert torch.equal(taught.flow_valid[random_rows], trusted)
    assert taught.has_flow[random_rows].all()
    assert taught.kinds == batch.kinds  # the reconstruction still counts them as pairs without a target


def test_a_batch_without_random_pairs_is_left_alone():
    trainer = _trainer()
    batch = trainer.pairs(0)[0]
    keep = [i for i, k in enumerate(batch.kinds) if k != "random"]
    plain = dataclasses.replace(batch, **{f: getattr(batch, f)[keep] for f in
                                          ("content", "style", "target", "has_target", "flow", "has_flow",
                                           "flow_valid")},
                                kinds=[batch.kinds[i] for i in keep], seeds=[batch.seeds[i] for i in keep])
    assert with_teacher_flow(plain, trainer.ema) is plain


def test_the_random_pairs_join_every_contrastive_term():
    trainer = _trainer()
    batch = trainer.pairs(0)[0]
    counts = trainer._global_counts(0, 0)
    trainer.config = dataclasses.replace(trainer.config, bootstrap=1.0)  # no bootstrap: random rows are out
    with torch.no_grad():
        plain = trainer.step_module(batch, 0, counts).stats
        taught = trainer.step_module(with_teacher_flow(batch, trainer.ema), 0, counts).stats
    for term in ("ccl", "ccl_fine"):
        assert not torch.equal(plain[term], taught[term]), term
    assert torch.equal(plain["rec"], taught["rec"])


def test_twenty_steps_with_the_teacher_lower_the_loss():
    torch.manual_seed(0)
    trainer = _trainer()
    batch = trainer.pairs(0)[0]
    counts = trainer._global_counts(0, 0)

    def loss():
        with torch.no_grad():
            return float(trainer.step_module(with_teacher_flow(batch, trainer.ema), 0, counts).loss)

    before = loss()
    for _ in range(20):
        stats = trainer.train_step()
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert loss() < before * 0.9


def test_runs_from_before_the_option_train_without_a_teacher():
    old = dataclasses.asdict(TrainConfig())
    del old["teacher_flow"]
    assert TrainConfig.from_json(json.dumps(old)).teacher_flow is False
