"""Train a COAT model: ``python -m coat_model.train`` (or ``coat-train``); ``torchrun`` for many GPUs.

Examples::

    coat-train --data procedural:faces --preset small --resolution 64 --steps 20000 --out runs/faces64
    coat-train --data /path/to/cats --resolution 128 --out runs/cats --resume
    torchrun --nproc_per_node=8 -m coat_model.train --data /data/cars --resolution 256 --batch-size 64 --out runs/cars

A run directory (``coat_model.train.run_dir``) holds ``coat.safetensors`` (the EMA model, loadable by ``coat_model.load``
and the ComfyUI loader), ``train_state.safetensors`` (everything ``--resume`` needs), ``metrics.jsonl``,
``samples/*.png`` and ``run.json`` (the settings and the history of the run's invocations).
Checkpoints are written atomically every ``--ckpt-every`` steps, at the end, and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ..io import CheckpointError, grow, import_stylegan2, load
from ..model.config import COATConfig, parse_overrides
from .denormals import flush_denormals
from .run_dir import CLI_RECORD, RunDirectory, write_run_record
from .trainer import AMP_MODES, TrainConfig, Trainer

PRESETS = {"tiny": COATConfig.tiny, "small": COATConfig.small, "default": COATConfig}


def make_dataset(spec: str, resolution: int, seed: int = 0):
    """``procedural:faces`` or ``procedural:cars`` (``-hard`` for the hard split), or an image folder path."""
    if spec.startswith("procedural:"):
        from .data.categories import parse_procedural
        from .data.faces import ProceduralDataset

        try:
            category, split = parse_procedural(spec)
        except ValueError as error:
            raise ValueError(f"{error}, or an image folder path") from None
        return ProceduralDataset(size=resolution, length=1_000_000, seed=seed, split=split, category=category)
    from .data.folder import ImageFolderDataset

    return ImageFolderDataset(spec, resolution)


def fit(
    trainer: Trainer,
    *,
    out_dir: Path | None = None,
    ckpt_every: int = 500,
    log_every: int = 10,
    sample_every: int = 500,
    max_seconds: float | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    metadata: dict[str, str] | None = None,
    fit_to_time: bool = False,
    stop_at: int | None = None,
) -> str:
    """Run ``trainer`` until its configured steps, a stop request, the time budget or step ``stop_at``; returns
    why it stopped ("done", "stopped", "time", "step"). Rank 0 logs, writes samples and checkpoints.

    ``stop_at`` ends this invocation at that step with the schedule unchanged, so ``--resume`` continues the run
    exactly: a learning curve taken in steps rather than minutes (the same curve on a slower or busier machine),
    or a long run in pieces.

    ``fit_to_time`` (with ``max_seconds``): after 100 steps, shorten the schedule (learning-rate decay,
    curricula) to the number of steps the measured speed allows, so that a time-boxed run still finishes its
    schedule.
    """
    main = trainer.rank == 0
    run = RunDirectory(out_dir) if out_dir else None
    log = open(run.metrics, "a") if (main and run) else None
    start, window_start, window_images = time.time(), time.time(), 0
    t50, first_step = start, trainer.step
    reason = "done"
    try:
        while trainer.step < trainer.config.steps:  # fit_to_time may shorten trainer.config
            if stop_at is not None and trainer.step >= stop_at:
                reason = "step"
                break
            stats = trainer.train_step()
            window_images += trainer.config.batch_size
            step = trainer.step
            if step == first_step + 50:
                t50 = time.time()
            if fit_to_time and max_seconds and step == first_step + 100:  # the speed past warm-up
                _fit_schedule(trainer, 50 / max(time.time() - t50, 1e-9), max_seconds, time.time() - start)
            if on_step is not None:
                on_step(step, stats)
            if log_every and (step % log_every == 0 or step == trainer.config.steps):
                elapsed = time.time() - window_start
                stats["images_per_s"] = window_images / max(elapsed, 1e-9)
                window_start, window_images = time.time(), 0
                if main:
                    _progress(step, trainer.config.steps, stats, time.time() - start, first_step)
                    if log:
                        log.write(json.dumps({"step": step, "time": round(time.time() - start, 2), **stats}) + "\n")
                        log.flush()
            if main and out_dir and sample_every and step % sample_every == 0:
                write_samples(trainer, run.sample(step))
            stop = bool(should_stop and should_stop())
            over_time = max_seconds is not None and time.time() - start > max_seconds
            if _agree(trainer, stop or over_time):
                reason = "stopped" if stop else "time"
                break
            if main and out_dir and ckpt_every and step % ckpt_every == 0:
                trainer.save(out_dir, metadata)
    finally:
        if log:
            log.close()
    if main and out_dir:
        trainer.save(out_dir, metadata)
    return reason


_write_run_record = write_run_record  # ``run.json``: RunDirectory.append_invocation (the old name, kept)


def _fit_schedule(trainer: Trainer, steps_per_s: float, max_seconds: float, elapsed: float) -> TrainConfig:
    """Shorten the run to the steps that fit the remaining time at the measured speed (all ranks agree).

    ``trainer.config`` is the one copy of the settings (the trainer's step module computes the losses with the
    same object), so replacing it changes the schedule everywhere; it is also returned."""
    rate = torch.tensor([steps_per_s], dtype=torch.float64, device=trainer.device)
    if trainer.world_size > 1:
        dist.all_reduce(rate, op=dist.ReduceOp.MIN)
    steps = int(trainer.step + rate.item() * (max_seconds - elapsed) * 0.97)
    if steps < trainer.config.steps:
        trainer.config = dataclasses.replace(trainer.config, steps=max(steps, trainer.step + 1))  # reaches the losses too
        if trainer.rank == 0:
            print(f"fit to time: the schedule now ends at step {trainer.config.steps}", file=sys.stderr)
    return trainer.config


def _agree(trainer: Trainer, flag: bool) -> bool:
    """All ranks stop together when any one of them must."""
    if trainer.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device=trainer.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _progress(step: int, total: int, stats: dict, elapsed: float, first_step: int = 0) -> None:
    """One progress line; the time left comes from the speed of this process (a resumed run started at
    ``first_step``)."""
    width = 24
    done = int(width * step / total)
    eta = elapsed / max(step - first_step, 1) * (total - step)
    losses = " ".join(f"{k}={stats[k]:.3f}" for k in ("loss", "rec", "ccl", "ccl_hybrid", "adv", "coverage") if k in stats)
    print(f"[{'#' * done}{'.' * (width - done)}] {step}/{total} {losses} {stats['images_per_s']:.1f} img/s "
          f"eta {eta / 60:.1f} min", file=sys.stderr, flush=True)


@torch.no_grad()
def write_samples(trainer: Trainer, path: Path, n: int = 4) -> None:
    """A grid of content | style | EMA hybrid | target rows for a fixed set of pairs."""
    from ..images import save_grid
    from .pairs import build_pairs

    cfg = trainer.config
    batch = build_pairs(trainer.dataset, trainer.sampler, list(range(n)), cfg.seed, **cfg.pair_options())
    model = trainer.ema
    batch = batch.to(trainer.device)
    content, style = model.encode(batch.content), model.encode(batch.style)
    hybrid = model.decode(content, model.align(content, style))
    rows = torch.cat([batch.content, batch.style, hybrid, batch.target]).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(rows, path, nrow=n)


_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _train_option(p: argparse.ArgumentParser, field: str, help: str, **kw) -> None:
    """``--field-name`` for a :class:`TrainConfig` field: its type and default are the dataclass's (so the two
    cannot drift), and ``--help`` shows the default."""
    default = _TRAIN_DEFAULTS[field]
    p.add_argument("--" + field.replace("_", "-"), type=type(default), default=default,
                   help=f"{help} (default: {default})", **kw)


# The TrainConfig fields with an option of their own: (field, help, extra add_argument keywords). The one list the
# parser, the ``--set`` fold and the run's TrainConfig all read.
_TRAIN_OPTIONS = (
    ("steps", "optimiser steps of the run (with --resume: its new total; without, the run's own)", {}),
    ("batch_size", "global batch over all processes", {}),
    ("accumulate", "micro-batches per optimiser step", {}),
    ("lr", "Adam learning rate", {}),
    ("seed", "seed of the weights, the pairs and the augmentations", {}),
    ("adv_weight", "> 0 adds a discriminator (from scratch)", {}),
    ("ccl_hybrid_weight", "weight of the contrastive loss on the hybrid's descriptors", {}),
    ("amp", "mixed precision (auto: bf16 on CUDA)", {"choices": AMP_MODES}),
)
_FLAGGED = tuple(field for field, _, _ in _TRAIN_OPTIONS)


def _fold_flagged_overrides(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--set FIELD=V`` for a field that has its own option (``--set lr=1e-3``) is that option: one value, one
    place. Both given with different values is an error that names them; ``--set freeze_decoder`` belongs to
    ``--stylegan2``. ``args.set_fields`` keeps every field ``--set`` named (a resumed run refuses them all)."""
    args.set_fields = sorted(args.train_overrides)
    for field in _FLAGGED:
        if field not in args.train_overrides:
            continue
        value, flag = args.train_overrides.pop(field), "--" + field.replace("_", "-")
        given = getattr(args, field)
        if given not in (None, _TRAIN_DEFAULTS[field]) and given != value:
            p.error(f"{flag} {given} and --set {field}={value} disagree: give the value once")
        setattr(args, field, value)
    if "freeze_decoder" in args.train_overrides:
        p.error("--set freeze_decoder: the decoder is frozen by --stylegan2 (training the encoder for an imported "
                "generator), not by a setting")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="coat-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="procedural:faces",
                   help="procedural:faces, procedural:cars (-hard: their hard split) or an image folder")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, logs, samples)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="architecture preset")
    p.add_argument("--resolution", type=int, default=None, help="model resolution (overrides the preset)")
    p.add_argument("--init", type=Path, default=None, help="fine-tune from this COAT .safetensors checkpoint")
    p.add_argument("--stylegan2", type=Path, default=None,
                   help="rosinality StyleGAN2 checkpoint (g_ema): its generator becomes the frozen decoder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    for field, text, kw in _TRAIN_OPTIONS:
        _train_option(p, field, text, **kw)
    p.set_defaults(steps=None)  # not given: a new run's default, a resumed run's own schedule
    p.add_argument("--set", dest="train_set", action="append", metavar="FIELD=VALUE",
                   help="override any TrainConfig field, e.g. --set betas=0,0.99 --set ccl_detach_keys=true")
    p.add_argument("--model-set", action="append", metavar="FIELD=VALUE",
                   help="override any COATConfig field of a new run, e.g. --model-set position_input=true; with "
                        "--init, grow the checkpoint, e.g. --model-set pixel_latents=true")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--workers", type=int, default=0, help="background processes preparing batches")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall-clock time")
    p.add_argument("--fit-to-time", action="store_true",
                   help="with --max-minutes: shorten the schedule to the steps the measured speed allows")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop (and save) at this step, the schedule unchanged: --resume continues the run exactly")
    args = p.parse_args(argv)
    if args.stop_at is not None and args.stop_at < 1:
        p.error(f"--stop-at {args.stop_at}: give the step to stop at, 1 or more")
    if args.stop_at is not None and args.fit_to_time:
        p.error("--stop-at keeps the schedule and --fit-to-time shortens it: give one of them")
    try:
        args.train_overrides = parse_overrides(TrainConfig, args.train_set)
        args.model_overrides = parse_overrides(COATConfig, args.model_set)
    except ValueError as error:
        p.error(str(error))
    _fold_flagged_overrides(p, args)
    if args.model_overrides and (args.resume or args.stylegan2):
        p.error("--model-set only applies to a new run, or with --init to grow a checkpoint (a resumed run keeps "
                "its architecture)")
    return args


def main(argv=None) -> int:
    flush_denormals()  # before the first parallel op starts torch's thread pool, so every worker inherits it
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (args.device is None or args.device.startswith("cuda"))
    device = torch.device(f"cuda:{local_rank}" if cuda and world_size > 1 else (args.device or ("cuda" if cuda else "cpu")))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        return _run(args, device, rank, world_size)
    except CheckpointError as error:  # --init/--resume/--stylegan2 files that cannot start this run
        print(f"coat-train: {error}", file=sys.stderr)
        return 2
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _run(args, device, rank: int, world_size: int) -> int:
    out: Path = args.out
    run = RunDirectory(out, CLI_RECORD)
    resume = run.resumes(args.resume)
    if resume and args.set_fields:  # they would be ignored: a resumed run keeps its own settings
        print(f"coat-train: --set changes the settings of a new run, and {out} resumes with its own (see its "
              f"run.json). To train on with other settings, start a new run from its model: --init {run.model} "
              f"--out NEW_FOLDER --set ...", file=sys.stderr)
        return 2
    train_cfg = TrainConfig(
        **{field: getattr(args, field) for field in _FLAGGED if getattr(args, field) is not None},
        freeze_decoder=args.stylegan2 is not None, **args.train_overrides,
    )
    model = None
    if resume:
        from .state import load_state

        saved = load_state(run.state)
        model_cfg = COATConfig.from_json(saved["model_config"])
        # The run continues with its own settings (its schedule too, unless --steps gives a new total).
        own = TrainConfig.from_json(saved["train_config"])
        train_cfg = own if args.steps is None else dataclasses.replace(own, steps=args.steps)
    elif args.stylegan2 is not None:
        model = import_stylegan2(args.stylegan2)
        model_cfg = model.config
    elif args.init is not None:
        model = grow(args.init, **args.model_overrides) if args.model_overrides else load(args.init).train()
        model_cfg = model.config
    else:
        overrides = {"resolution": args.resolution} if args.resolution else {}
        model_cfg = PRESETS[args.preset](**{**overrides, **args.model_overrides})
    dataset = make_dataset(args.data, model_cfg.resolution, train_cfg.seed)  # resumed: the run's own seed
    trainer = Trainer(model_cfg, train_cfg, dataset, device=device, model=model, rank=rank, world_size=world_size,
                      workers=args.workers)
    if args.resume:
        if resume:
            trainer.load(run.state)
            if rank == 0:
                print(f"resumed {out} at step {trainer.step}", file=sys.stderr)
        elif rank == 0:
            print(f"--resume: no state in {out} yet, starting fresh", file=sys.stderr)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        run.append_invocation(trainer.step, {
            "command": " ".join(sys.argv), "model_config": json.loads(model_cfg.to_json()),
            "train_config": json.loads(train_cfg.to_json()), "world_size": world_size, "device": str(device),
            "torch": torch.__version__,
        })
    stop = {"flag": False}

    def request_stop(signum, _frame):
        stop["flag"] = True
        if rank == 0:
            print(f"\nsignal {signum}: saving a checkpoint after this step", file=sys.stderr)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)
    metadata = {"data": args.data, "seed": str(train_cfg.seed)}
    reason = fit(
        trainer, out_dir=out, ckpt_every=args.ckpt_every, log_every=args.log_every, sample_every=args.sample_every,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None, should_stop=lambda: stop["flag"],
        metadata=metadata, fit_to_time=args.fit_to_time, stop_at=args.stop_at,
    )
    if rank == 0:
        said = "stopped (--stop-at)" if reason == "step" else reason
        print(f"{said} at step {trainer.step}: {run.model}"
              + ("" if reason == "done" else f" (continue with --resume --out {out})"), file=sys.stderr)
    return 0

