"""A training step never reads a value back from the model's device; its stats wait until someone reads them.

On CUDA a read (``.item()``, ``float(t)``, ``nonzero``) makes the host wait for the queue: the GPU idles while the
host prepares the next step. On the CPU the same reads show as ``_local_scalar_dense`` (and friends) in the
dispatcher, so the test runs here; ``benchmarks/gpu_check.py`` counts the syncs on a GPU as well.
"""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from coat_model import COATConfig
from coat_model.train.cli import make_dataset
from coat_model.train.step_stats import StepStats
from coat_model.train.trainer import TrainConfig, Trainer

HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "equal", "is_nonzero"}


class HostReads(TorchDispatchMode):
    """Records the ops that read tensor values on the host, with where the project made them. The optimiser's own
    step counters are CPU tensors by design on every device (``torch.optim``), so its reads are not counted."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.split("::")[-1] in HOST_READS:
            stack = traceback.extract_stack()
            if not any("torch/optim" in f.filename for f in stack):
                ours = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stack if "coat_model" in f.filename]
                self.reads.append(f"{func} at {' < '.join(reversed(ours[-3:]))}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model, train", [
    (COATConfig.tiny(), dict(adv_weight=0.1, r1_every=1)),                # discriminator and R1 as well
    (COATConfig.tiny(refine_dim=8, refine_radius=2, pixel_latents=True, warp_style=True), {}),  # the small recipe
])
def test_a_training_step_reads_nothing_back(model, train):
    trainer = Trainer(model, TrainConfig(steps=10, batch_size=4, seed=3, bootstrap=0.0, **train),
                      make_dataset("procedural:faces", 32, seed=3))
    trainer.train_step()  # the first step: optimiser state appears
    batches = trainer.pairs(trainer.step)
    with HostReads() as mode:
        stats = trainer.train_step(batches)
    assert mode.reads == []
    assert {"rec", "ccl", "cycle", "coverage", "loss", "lr"} <= set(stats)  # keys are there without a read
    assert stats.tensors(), "the stats stay on the device until read"
    with HostReads() as mode:
        values = dict(stats)
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in values.values())
    assert not stats.tensors()


def test_step_stats_read_once_and_behave_as_a_dict():
    stats = StepStats({"a": torch.tensor(1.5), "b": torch.tensor([2.0])[0] * 2}, lr=0.1)
    assert list(stats) == ["a", "b", "lr"] and len(stats) == 3
    assert stats["lr"] == 0.1 and set(stats.tensors()) == {"a", "b"}  # a float is read without the tensors
    assert stats["a"] == 1.5 and stats.tensors() == {}                 # one read copies every pending value
    assert dict(stats) == {"a": 1.5, "b": 4.0, "lr": 0.1}
    stats["images_per_s"] = 3.0
    del stats["a"]
    assert dict(stats) == {"b": 4.0, "lr": 0.1, "images_per_s": 3.0}
    pending = StepStats({"x": torch.tensor(2.0)})
    pending["x"] = 5.0                                                  # a set replaces the pending value
    assert dict(pending) == {"x": 5.0} and len(pending) == 1


def test_step_stats_equal_the_step_modules_terms():
    trainer = Trainer(COATConfig.tiny(), TrainConfig(steps=4, batch_size=4, seed=3),
                      make_dataset("procedural:faces", 32, seed=3))
    batch = trainer.pairs(0)[0]
    torch.manual_seed(0)
    expected = {k: float(v) for k, v in trainer.step_module(batch, 0, trainer._global_counts(0, 0)).stats.items()}
    torch.manual_seed(0)
    stats = trainer.train_step([batch])
    assert {k: stats[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    weights = trainer.config.loss_weights()
    assert stats["loss"] == pytest.approx(sum(expected[k] * w for k, w in weights.items() if k in expected), rel=1e-6)


def test_pairs_built_the_way_a_gpu_builds_them_read_nothing_back(monkeypatch):
    """The device build path (faces rendered without their CPU-only part windows, warps, appearance changes,
    flows, validity) makes no host read: what a CUDA trainer runs before every step, checked on the CPU."""
    import functools

    from coat_model.train.data import faces

    trainer = Trainer(COATConfig.tiny(resolution=64), TrainConfig(steps=10, batch_size=8, seed=3, bootstrap=0.0),
                      make_dataset("procedural:faces", 64, seed=3))  # 64 px: the CPU renders with part windows
    recipes = trainer.recipes(0)
    assert {"warp", "self", "random"} <= {k for r in recipes for k in r.kinds}
    windowed = [r.build("cpu") for r in recipes]
    with HostReads() as mode:
        [r.build("cpu") for r in recipes]
    assert mode.reads, "the windowed CPU render reads its windows back: the reference path differs"
    monkeypatch.setattr(faces, "render", functools.partial(faces.render, windowed=False))
    with HostReads() as mode:
        built = [r.build("cpu") for r in recipes]
    assert mode.reads == []
    for a, b in zip(built, windowed):  # the same pairs as the windowed CPU build
        assert torch.equal(a.content, b.content) and torch.equal(a.style, b.style) and torch.equal(a.flow, b.flow)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode")
def test_cuda_steps_run_under_sync_debug_error():
    """On CUDA, building the pairs and a whole training step (forward, backward, optimiser, EMA) run under
    ``torch.cuda.set_sync_debug_mode("error")``: any host synchronisation raises."""
    trainer = Trainer(COATConfig.tiny(refine_dim=8, refine_radius=2, pixel_latents=True, warp_style=True),
                      TrainConfig(steps=10, batch_size=8, seed=3, bootstrap=0.0),
                      make_dataset("procedural:faces", 32, seed=3), device=torch.device("cuda"))
    trainer.train_step()  # the first step: optimiser state and kernels appear
    recipes = trainer.recipes(trainer.step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = trainer.train_step([r.build("cuda") for r in recipes])
        stats_again = trainer.train_step([r.build("cuda") for r in trainer.recipes(trainer.step)])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(map(torch.isfinite, map(torch.tensor, (stats["loss"], stats_again["loss"]))))
