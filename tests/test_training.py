"""The trainer: a short run learns, resume is exact, two gloo processes equal one, flow targets are right."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coat_model import COATConfig
from coat_model.train.cli import make_dataset
from coat_model.train.pairs import flow_targets, identity_flow
from coat_model.train.state import load_state, save_state
from coat_model.train.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]


def _trainer(steps=20, **kw):
    cfg = TrainConfig(steps=steps, batch_size=4, seed=3, **kw)
    return Trainer(COATConfig.tiny(), cfg, make_dataset("procedural:faces", 32, seed=3))


def _fixed_loss(trainer):
    batch = trainer._pairs(0)[0]
    counts = trainer._global_counts(0, 0)
    with torch.no_grad():
        return float(trainer.step_module(batch, 0, counts)[0])


def test_twenty_steps_lower_the_loss():
    torch.manual_seed(0)
    trainer = _trainer()
    before = _fixed_loss(trainer)
    for _ in range(20):
        stats = trainer.train_step()
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert _fixed_loss(trainer) < before * 0.9


def test_twenty_steps_with_groupnorm_in_the_encoder_lower_the_loss():
    torch.manual_seed(0)
    trainer = Trainer(COATConfig.tiny(encoder_norm_groups=4), TrainConfig(steps=20, batch_size=4, seed=3),
                      make_dataset("procedural:faces", 32, seed=3))
    before = _fixed_loss(trainer)
    for _ in range(20):
        trainer.train_step()
    assert _fixed_loss(trainer) < before * 0.9


def test_the_encoder_learns_at_its_own_rate():
    trainer = _trainer(steps=10, encoder_lr_mult=10.0, lr=1e-3)
    encoder = {id(p) for p in trainer.model.encoder.parameters()}
    rest, enc = trainer.opt.param_groups
    assert {id(p) for p in enc["params"]} == encoder and not encoder & {id(p) for p in rest["params"]}
    assert len(rest["params"]) + len(enc["params"]) == len(list(trainer.model.parameters()))
    stats = trainer.train_step()
    assert enc["lr"] == pytest.approx(1e-2) and rest["lr"] == pytest.approx(1e-3)
    assert stats["lr"] == pytest.approx(1e-3)  # the reported learning rate is the base one
    trainer.step = 9  # in the decay, both follow the schedule
    trainer._set_lr()
    assert enc["lr"] == pytest.approx(10 * rest["lr"]) and rest["lr"] < 1e-3
    # One group, as runs before the option had, when the encoder learns at lr.
    assert len(_trainer(encoder_lr_mult=1.0).opt.param_groups) == 1
    with pytest.raises(ValueError, match="encoder_lr_mult"):
        TrainConfig(encoder_lr_mult=0)


def test_train_states_from_before_encoder_lr_mult_resume_at_one_rate(tmp_path):
    legacy = json.loads(TrainConfig().to_json())
    del legacy["encoder_lr_mult"]
    assert TrainConfig.from_json(json.dumps(legacy)).encoder_lr_mult == 1.0
    assert TrainConfig().encoder_lr_mult == 10.0
    assert TrainConfig().ccl_hybrid_weight == 0.0  # 40 minutes from scratch learn faster without it (BENCHMARKS)
    old = _trainer(steps=6, encoder_lr_mult=1.0)
    old.train_step()
    old.save(tmp_path)
    state = load_state(tmp_path / "train_state.safetensors")
    for group in state["opt"]["param_groups"]:  # what an optimiser state of before the option holds
        del group["lr_mult"]
    save_state(state, tmp_path / "train_state.safetensors")
    resumed = _trainer(steps=6, encoder_lr_mult=1.0)
    resumed.load(tmp_path / "train_state.safetensors")
    assert resumed.train_step()["lr"] == pytest.approx(resumed.config.lr)


def test_a_run_resumes_under_other_inference_defaults_not_another_model(tmp_path):
    """A preset's inference defaults may change between releases (the Train node rebuilds the preset to resume):
    they touch no weight, so the saved run goes on; another architecture is still refused."""
    _trainer(steps=4).save(tmp_path)
    state = tmp_path / "train_state.safetensors"
    newer = Trainer(COATConfig.tiny(flow_median=2, refine_prior=0.4, mirror_search=True),
                    TrainConfig(steps=4, batch_size=4, seed=3), make_dataset("procedural:faces", 32, seed=3))
    newer.load(state)
    assert newer.model.config.refine_prior == 0.4  # the caller's inference defaults
    other = Trainer(COATConfig.tiny(w_dim=8), TrainConfig(steps=4, batch_size=4, seed=3),
                    make_dataset("procedural:faces", 32, seed=3))
    with pytest.raises(ValueError, match="another model config"):
        other.load(state)


def test_new_settings_reach_the_batch_workers():
    """--fit-to-time replaces the settings mid-run; the pair mix follows the schedule, so workers drawing ahead
    with the old copy are let go and the next step starts new ones."""
    trainer = _trainer(steps=40)
    trainer._loader = iter(())  # as if workers were drawing ahead
    trainer.config = dataclasses.replace(trainer.config, steps=10)
    assert trainer._loader is None and trainer.config.steps == 10


def assert_same_weights(straight, resumed):
    """The model and its EMA of two trainers equal to the bit."""
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = _trainer(steps=6)
    for _ in range(6):
        straight.train_step()
    first = _trainer(steps=6)
    for _ in range(3):
        first.train_step()
    first.save(tmp_path)
    resumed = _trainer(steps=6)
    resumed.load(tmp_path / "train_state.safetensors")
    assert resumed.step == 3
    for _ in range(3):
        resumed.train_step()
    assert_same_weights(straight, resumed)


def test_stop_at_ends_at_the_step_and_resume_continues_exactly(tmp_path):
    """``--stop-at``: the invocation ends at that step with the schedule unchanged and saves; resumed, the run is
    the uninterrupted one (a learning curve in steps, or a long run in pieces)."""
    from coat_model.train.cli import fit, parse_args

    quiet = dict(log_every=0, sample_every=0, ckpt_every=0)
    straight = _trainer(steps=6)
    assert fit(straight, **quiet) == "done" and straight.step == 6
    first = _trainer(steps=6)
    assert fit(first, out_dir=tmp_path, stop_at=4, **quiet) == "step"
    assert (first.step, first.config.steps) == (4, 6)
    resumed = _trainer(steps=6)
    resumed.load(tmp_path / "train_state.safetensors")
    assert fit(resumed, stop_at=4, **quiet) == "step" and resumed.step == 4  # already there: no step taken
    assert fit(resumed, stop_at=9, **quiet) == "done" and resumed.step == 6
    assert_same_weights(straight, resumed)
    assert parse_args(["--out", str(tmp_path), "--stop-at", "223"]).stop_at == 223
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--stop-at", "0"])


def test_background_workers_give_the_same_batches():
    a, b = _trainer(steps=3), _trainer(steps=3)
    b.workers = 1
    for _ in range(2):
        a.train_step()
        b.train_step()
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(x, y)


def test_random_pairs_join_the_mix_when_they_join_the_contrastive_loss():
    """Before ``bootstrap`` a random pair would feed only the cycle term: its share goes to the same-image pairs."""
    cfg = TrainConfig(steps=100, bootstrap=0.1)
    assert cfg.mix_at(0) == cfg.mix_at(9) == (0.5, 0.25, 0.0) and cfg.mix_at(10) == cfg.mix_at(None) == cfg.pair_mix
    assert TrainConfig(steps=100, teacher_flow=True).mix_at(0) == cfg.pair_mix  # the teacher's flow: they join at once
    assert TrainConfig(steps=100, random_at_bootstrap=False).mix_at(0) == cfg.pair_mix
    assert TrainConfig(steps=100, pair_mix=(0.0, 0.0, 1.0)).mix_at(0) == (0.0, 0.0, 1.0)  # nothing to give it to
    legacy = json.loads(cfg.to_json())
    del legacy["random_at_bootstrap"]
    assert TrainConfig.from_json(json.dumps(legacy)).random_at_bootstrap is False  # old runs resume as they trained
    t = _trainer(steps=40, bootstrap=0.5)
    early = [k for step in range(20) for r in t.recipes(step) for k in r.kinds]
    late = [k for step in range(20, 40) for r in t.recipes(step) for k in r.kinds]
    assert "random" not in early and {"warp", "self"} <= set(early)
    assert 0.15 < late.count("random") / len(late) < 0.35
    assert t._global_counts(0, 0)["target"] == t._global_counts(0, 0)["all"]
    assert t._global_counts(39, 0)["target"] == sum(k != "random" for k in t.recipes(39)[0].kinds)


def test_pairs_are_drawn_ahead_and_built_where_asked():
    """Trainer.recipes is what batch workers make (the draws; procedural images as parameters); building them gives
    the trainer's batches, the same on every call."""
    import pickle

    from coat_model.train.data.faces import FaceDraw

    t = _trainer(steps=3, palette_share=0.5, blur_share=0.5)
    recipes = t.recipes(1)
    assert isinstance(recipes[0].images, FaceDraw) and len(pickle.dumps(recipes)) < 200_000
    built, again = recipes[0].build("cpu"), t.pairs(1)[0]
    for name in ("content", "style", "target", "flow", "flow_valid", "has_target"):
        assert torch.equal(getattr(built, name), getattr(again, name))
    assert built.kinds == again.kinds and built.seeds == again.seeds
    same = [i for i, k in enumerate(built.kinds) if k != "random"]
    assert not torch.equal(built.content[same], built.target[same])  # the appearance change happened


def _run(out, nproc):
    args = ["-m", "coat_model.train", "--preset", "tiny", "--steps", "3", "--batch-size", "4", "--out", str(out),
            "--log-every", "1", "--threads", "1", "--sample-every", "0", "--seed", "5",
            "--ccl-hybrid-weight", "1"]  # every term, the hybrid's (off by default) included
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + os.getpid() % 1000)] + args
    else:
        cmd = [sys.executable] + args
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_follow_the_single_process_loss_curve(tmp_path):
    """Same global batch, split over two processes: the loss curves agree to 1e-4 (relative)."""
    one, two = _run(tmp_path / "one", 1), _run(tmp_path / "two", 2)
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "rec", "ccl", "ccl_hybrid"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (key, a[key], b[key])


def test_flow_targets_identity_and_shift():
    r, s = 32, 4
    flow = identity_flow(r)
    target, ok = flow_targets(flow, torch.ones(1, 1, r, r, dtype=torch.bool), r, s, (8, 8))
    assert ok.all() and torch.equal(target[0], torch.arange(64))
    shifted = flow.clone()
    shifted[:, 0] += 2 * s * 2 / (r - 1)  # two cells to the right
    target, ok = flow_targets(shifted, torch.ones(1, 1, r, r, dtype=torch.bool), r, s, (8, 8))
    cells = torch.arange(64).view(8, 8)
    assert torch.equal(target[0].view(8, 8)[:, :6], cells[:, 2:])
    assert not ok[0].view(8, 8)[:, 6:].any()


def test_adversarial_training_runs_discriminator_and_r1():
    trainer = _trainer(steps=2, adv_weight=0.1, r1_every=1)
    stats = trainer.train_step()
    assert {"adv", "d", "r1"} <= set(stats) and all(torch.isfinite(torch.tensor(stats[k])) for k in ("adv", "d", "r1"))
    before = [p.clone() for p in trainer.disc.parameters()]
    trainer.train_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.disc.parameters()))


def test_progress_eta_counts_only_the_steps_of_this_process(capsys):
    from coat_model.train.cli import _progress

    # A run resumed at step 1000 that did 10 steps in 20 s has 90 steps left: 180 s, not 90 * 20 / 1010.
    _progress(1010, 1100, {"loss": 1.0, "images_per_s": 8.0}, 20.0, first_step=1000)
    assert "eta 3.0 min" in capsys.readouterr().err


def test_run_record_keeps_the_command_that_began_a_resumed_run(tmp_path):
    from coat_model.train.cli import _write_run_record

    path = tmp_path / "run.json"
    _write_run_record(path, 0, {"command": "coat-train --steps 100"})
    _write_run_record(path, 100, {"command": "coat-train --resume --steps 300"})
    record = json.loads(path.read_text())
    assert record["command"] == "coat-train --resume --steps 300"
    assert record["history"] == [{"command": "coat-train --steps 100", "start_step": 0},
                                 {"command": "coat-train --resume --steps 300", "start_step": 100}]
    path.write_text("{not json")  # a damaged record is replaced, never fatal
    _write_run_record(path, 300, {"command": "c"})
    assert json.loads(path.read_text())["history"] == [{"command": "c", "start_step": 300}]


def test_command_line_overrides_are_typed_and_checked():
    import pytest

    from coat_model.model.config import parse_overrides
    from coat_model.train.cli import parse_args

    assert parse_overrides(TrainConfig, ["betas=0.9,0.99", "ccl_detach_keys=true", "ccl-queries=128", "align_mode=hard"]) \
        == {"betas": (0.9, 0.99), "ccl_detach_keys": True, "ccl_queries": 128, "align_mode": "hard"}
    assert parse_overrides(COATConfig, ["position_input=0", "scales=8,4"]) == {"position_input": False, "scales": (8, 4)}
    with pytest.raises(ValueError, match="FIELD one of"):
        parse_overrides(TrainConfig, ["warp_speed=9"])
    with pytest.raises(ValueError, match="true or false"):
        parse_overrides(TrainConfig, ["colour_remap=maybe"])
    with pytest.raises(ValueError, match="invalid literal"):
        parse_overrides(TrainConfig, ["ccl_queries=many"])
    args = parse_args(["--out", "x", "--set", "lr_decay_start=0.5", "--model-set", "w_dim=16"])
    assert args.train_overrides == {"lr_decay_start": 0.5} and args.model_overrides == {"w_dim": 16}
    with pytest.raises(SystemExit):  # a resumed run keeps its architecture
        parse_args(["--out", "x", "--resume", "--model-set", "w_dim=16"])
    # --set of a field with its own option is that option (it used to reach TrainConfig twice: a TypeError)
    args = parse_args(["--out", "x", "--set", "ccl_hybrid_weight=0.5", "--set", "lr=1e-3", "--set", "pair_mix=1,0,0"])
    assert (args.ccl_hybrid_weight, args.lr) == (0.5, 1e-3) and args.train_overrides == {"pair_mix": (1.0, 0.0, 0.0)}
    assert parse_args(["--out", "x", "--lr", "1e-3", "--set", "lr=1e-3"]).lr == 1e-3  # the same value twice
    for clash in (["--lr", "5e-4", "--set", "lr=1e-3"], ["--set", "freeze_decoder=true"]):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", *clash])


def test_set_of_a_flagged_field_reaches_the_run(tmp_path, capsys):
    from coat_model.train.cli import main

    out = tmp_path / "run"
    assert main(["--data", "procedural:faces", "--preset", "tiny", "--resolution", "32", "--out", str(out),
                 "--set", "steps=1", "--set", "ccl_hybrid_weight=0.5", "--batch-size", "2", "--threads", "1",
                 "--sample-every", "0", "--log-every", "1"]) == 0
    saved = json.loads((out / "run.json").read_text())
    assert saved["train_config"]["steps"] == 1 and saved["train_config"]["ccl_hybrid_weight"] == 0.5


def test_train_states_from_before_ccl_detach_keys_keep_the_stop_gradient():
    legacy = json.loads(TrainConfig().to_json())
    del legacy["ccl_detach_keys"]
    assert TrainConfig.from_json(json.dumps(legacy)).ccl_detach_keys is True
    assert TrainConfig().ccl_detach_keys is False


def test_train_states_from_before_the_appearance_augmentations_keep_their_pairs():
    legacy = json.loads(TrainConfig().to_json())
    del legacy["palette_share"], legacy["blur_share"]
    restored = TrainConfig.from_json(json.dumps(legacy))
    assert restored.palette_share == 0.0 and restored.blur_share == 0.0


def test_a_worker_dying_mid_handover_falls_back_to_in_process_batches():
    """SIGTERM to the process group can kill a batch worker while it hands over shared memory: the loader then
    raises EOFError (or ConnectionError), and the step goes on with batches built in this process."""
    t = _trainer(steps=2)

    def dying():
        raise EOFError
        yield

    t.workers, t._loader, t._loader_step = 1, dying(), t.step
    batches = t._next_batches()
    assert t.workers == 0 and len(batches) == t.config.accumulate
    reference = t._pairs(t.step)
    assert torch.equal(batches[0].content, reference[0].content)


def test_fit_to_time_shortens_the_one_copy_of_the_settings():
    """The step module computes the losses with the trainer's config (one object), so a schedule shortened by
    fit-to-time reaches the curricula (hard negatives, bootstrap) as well as the learning rate."""
    from coat_model.train.cli import _fit_schedule

    trainer = _trainer(steps=1000)
    assert trainer.step_module.config is trainer.config
    trainer.step = 100
    cfg = _fit_schedule(trainer, steps_per_s=1.0, max_seconds=200.0, elapsed=100.0)
    assert cfg is trainer.config is trainer.step_module.config and cfg.steps == 100 + int(100 * 0.97)


def test_step_module_returns_what_the_trainer_reads_and_owns_only_the_model():
    """The training step returns its loss, stats, the fake images and the per-layer latent means (no state kept
    on the module); the discriminator is passed in, never part of the module's state_dict."""
    trainer = _trainer(steps=2, adv_weight=0.1)
    assert set(trainer.step_module.state_dict()) == {f"model.{k}" for k in trainer.model.state_dict()}
    batch = trainer._pairs(0)[0]
    counts = trainer._global_counts(0, 0)
    with torch.no_grad():
        result = trainer.step_module(batch, 0, counts, discriminator=trainer.disc)
        plain = trainer.step_module(batch, 0, counts)
    assert "adv" in result.stats and "adv" not in plain.stats
    assert result.fake.shape == batch.content.shape and not result.fake.requires_grad
    with torch.no_grad():
        assert len(result.layer_means) == len(trainer.model.encode(batch.content).maps) > 0
    assert all(m.shape == trainer.model.w_avg.shape for m in result.layer_means)
    loss, stats = result[:2]
    assert loss is result.loss and stats is result.stats


def test_local_grid_sizes_the_part_motion_lattice_of_the_warp_pairs():
    """``local_grid`` reaches the warp draws (a coarser lattice moves larger parts); runs saved before the field keep
    the 8 x 8 lattice, and a lattice of fewer than two nodes a side is refused."""
    coarse = _trainer(steps=1, local_warp=0.06, local_grid=5).recipes(1)[0].warp.coarse
    fine = _trainer(steps=1, local_warp=0.04).recipes(1)[0].warp.coarse
    assert coarse.shape[-2:] == (5, 5) and fine.shape[-2:] == (8, 8)
    legacy = json.loads(TrainConfig(local_warp=0.04).to_json())
    del legacy["local_grid"]
    assert TrainConfig.from_json(json.dumps(legacy)).local_grid == 8
    with pytest.raises(ValueError, match="local_grid"):
        TrainConfig(local_grid=1)
