"""The COAT trainer: one optimisation step, EMA, checkpoints and exact resume, on CPU, one GPU or many.

Losses are sums of per-sample terms divided by the number of applicable samples in the *global* batch, so that
data-parallel gradient averaging gives exactly the single-process gradient of the same global batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

# The same class as torch.autocast. Imported by name because comfy-test's SYNTAX lint rejects the spelled-out
# call (it means node inference, where comfy.ops should manage dtypes); this is training mixed precision.
from torch.amp import autocast

from ..model.coat import COAT
from ..model.config import COATConfig, INFERENCE_FIELDS
from ..model.coords import flow_to_index
from .denormals import flush_denormals
from .discriminator import Discriminator
from .losses import (
    correspondence_nce, cycle_loss, detail_weights, discriminator_loss, generator_adversarial_loss,
    hardness_schedule, latent_regularisation, r1_penalty, reconstruction_loss,
)
from .pairs import GlobalSampler, PairBatch, PairRecipe, draw_pairs, flow_targets
from .run_dir import RunDirectory
from .state import load_state, save_state
from .step_stats import StepStats
from .teacher import with_teacher_flow

AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model architecture lives in :class:`COATConfig`)."""

    steps: int = 20_000
    batch_size: int = 16                     # global batch (all processes together, per optimiser step)
    accumulate: int = 1                      # micro-batches per optimiser step
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.99)  # StyleGAN2 uses beta1 = 0 (with the adversarial loss); the encoder's
                                             # descriptors learn ~1.5x faster with momentum (BENCHMARKS, Quality)
    lr_decay_start: float = 0.6              # cosine decay to 10% over the last 40% of steps
    encoder_lr_mult: float = 10.0            # the encoder's learning rate is lr x this: its equalised-lr convolutions
                                             # move ~0.2 % per step at lr; from scratch, 10x (with the small preset's
                                             # GroupNorm) makes matching start sooner (BENCHMARKS, Learning speed)
    seed: int = 0
    pair_mix: tuple[float, float, float] = (0.5, 0.25, 0.25)  # warp, self, random
    random_at_bootstrap: bool = True         # random pairs enter the mix when they join CCL (``bootstrap``; at once
                                             # with ``teacher_flow``); before, they would feed only the cycle term,
                                             # and their share goes to the same-image pairs (BENCHMARKS, Learning
                                             # speed)
    colour_remap: bool = True
    palette_share: float = 0.5               # share of same-image pairs whose content is recoloured by a random
                                             # colour lattice (parts independently; pairs.appearance_change)
    blur_share: float = 0.3                  # share of same-image pairs whose content is blurred (textures differ);
                                             # both: matches across instances (BENCHMARKS, Quality, stage F)
    warp_strength: float = 1.0               # warp pairs: 1 = rotation +-20 deg, zoom 0.8-1.2, shift +-5 %, lattice
                                             # jitter 0.1; s multiplies each (the zoom's bounds to the power s)
    local_warp: float = 0.0                  # warp pairs: > 0 adds part-sized motion, offsets up to this on a
                                             # local_grid lattice (data/warp.py draw_warp's ``local``; 0.04 = 2 %
                                             # of the width)
    local_grid: int = 8                      # that lattice's size (coarser: larger parts move; keep local_warp
                                             # below about 0.3 / (local_grid - 1))
    rec_weight: float = 1.0
    ssim_weight: float = 0.5
    reg_weight: float = 0.005
    ccl_weight: float = 1.0                  # CCL on the real content descriptors
    ccl_hybrid_weight: float = 0.0           # > 0: CCL on the hybrid's descriptors too (one more encoder pass,
                                             # ~15 % of a CPU step); off, 40 minutes from scratch matched and
                                             # transferred better (BENCHMARKS, Learning speed, 2026-12-04), and
                                             # every bundled stage since B trained without it
    ccl_queries: int = 256
    ccl_negatives: int = 64                  # per query; 0: every style cell outside the exclusion window
    ccl_exclusion: int = 2                   # the aligned scales' negatives lie outside this many cells (L-inf) of
                                             # the positive
    ccl_tau: float = 0.07
    ccl_detach_keys: bool = False            # CUT stops gradients at the keys; both sides learning is ~2x faster here
    ccl_fine_weight: float = 1.0             # CCL of the full-resolution refinement descriptors (refine_dim > 0)
    ccl_fine_queries: int = 128
    ccl_fine_detail: float = 0.0             # > 0: its queries favour the content's edges and small parts
                                             # (losses.detail_weights: weight 1 + this * edge / mean edge);
                                             # 4 measured no better than uniform (BENCHMARKS, stage L's control)
    ccl_fine_exclusion: int = 2              # its negatives lie outside this many pixels (L-inf) of the positive:
                                             # pixels nearer are never pushed away, so the refinement cannot tell
                                             # them apart (2: every scale's rule until 2026-12-02)
    cycle_weight: float = 0.1                # forward-backward consistency of the finest soft matches, every pair
    hard_ramp: float = 0.2                   # hard-negative share ramps 0 -> 1 over this fraction of steps
    bootstrap: float = 0.1                   # random pairs join CCL (confident matches) after this fraction
    teacher_flow: bool = False               # random pairs take the EMA's inference matches (hard path, refined,
                                             # median) as their flow where it trusts them (train/teacher.py)
    adv_weight: float = 0.0                  # > 0 trains a discriminator (from-scratch variant)
    r1_gamma: float = 10.0
    r1_every: int = 16
    ema_decay: float = 0.999
    w_avg_momentum: float = 0.999
    freeze_decoder: bool = False             # pretrained-generator mode: train the encoder only
    amp: str = "auto"                        # auto (bf16 on CUDA), off, bf16, fp16
    align_mode: str = "soft"

    def random_pairs_join(self, step: int) -> bool:
        """Whether random pairs join CCL (their confident matches as positives) at ``step``."""
        return step >= self.bootstrap * self.steps

    def mix_at(self, step: int | None) -> tuple[float, float, float]:
        """The pair mix (warp, self, random) of ``step``: without random pairs before they join CCL when
        ``random_at_bootstrap`` (a teacher's flow makes them join at once; and there must be same-image pairs to
        give their share to); ``step`` None: the whole mix."""
        if (step is not None and self.random_at_bootstrap and not self.teacher_flow
                and not self.random_pairs_join(step) and sum(self.pair_mix[:2]) > 0):
            return (*self.pair_mix[:2], 0.0)
        return self.pair_mix

    def pair_options(self, step: int | None = None) -> dict:
        """The pair builder's settings of ``step`` (:func:`~coat_model.train.pairs.draw_pairs`' keywords)."""
        return dict(mix=self.mix_at(step), colour_remap=self.colour_remap, palette_share=self.palette_share,
                    blur_share=self.blur_share, warp_strength=self.warp_strength,
                    local_warp=self.local_warp, local_grid=self.local_grid)

    def loss_weights(self) -> dict[str, float]:
        return dict(rec=self.rec_weight, reg=self.reg_weight, ccl=self.ccl_weight,
                    ccl_hybrid=self.ccl_hybrid_weight, ccl_fine=self.ccl_fine_weight, cycle=self.cycle_weight,
                    adv=self.adv_weight)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}
        data.setdefault("ccl_detach_keys", True)  # runs from before the field stopped gradients at the keys
        data.setdefault("cycle_weight", 0.0)  # runs from before the cycle term
        data.setdefault("palette_share", 0.0)  # runs from before the appearance augmentations
        data.setdefault("blur_share", 0.0)
        data.setdefault("ccl_fine_exclusion", 2)  # runs from before the option kept every scale's 2 cells
        data.setdefault("ccl_exclusion", 2)
        data.setdefault("encoder_lr_mult", 1.0)  # runs from before the option trained every module at lr
        data.setdefault("random_at_bootstrap", False)  # runs from before it drew random pairs from the start
        return cls(**data)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"the learning rate must be a positive number, got {self.lr}")
        if self.encoder_lr_mult <= 0 or not math.isfinite(self.encoder_lr_mult):
            raise ValueError(f"encoder_lr_mult multiplies the encoder's learning rate: a positive number, got "
                             f"{self.encoder_lr_mult}")
        if self.batch_size < 1 or self.accumulate < 1 or self.batch_size % self.accumulate:
            raise ValueError(f"batch_size {self.batch_size} must be a positive multiple of accumulate {self.accumulate}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.local_grid < 2:
            raise ValueError(f"local_grid must be >= 2 (a lattice of local_grid x local_grid nodes), "
                             f"got {self.local_grid}")
        near = "0: only the positive itself is never a negative"
        for name, what, zero in (("ccl_fine_exclusion", "a distance in pixels", near),
                                 ("ccl_exclusion", "a distance in cells", near),
                                 ("ccl_negatives", "a count of negatives per query",
                                  "0: every style cell outside the exclusion window")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} is {what}, a whole number >= 0 ({zero}), got {value!r}")


class StepResult(NamedTuple):
    """What one micro-batch's generator step gives the trainer (a tuple of tensors, as DistributedDataParallel
    wants from a forward; ``loss, stats = result[:2]`` still reads the first two)."""

    loss: torch.Tensor                 # the weighted sum of the terms, to back-propagate
    stats: dict[str, torch.Tensor]     # every term (detached) and the share of trusted matches ("coverage")
    fake: torch.Tensor                 # the hybrid in [0, 1] [B, 3, R, R], detached: the discriminator's fakes
    layer_means: list[torch.Tensor]    # per decoder layer, the batch mean of the content latents [w_dim], detached


class TrainingStep(nn.Module):
    """Generator-side losses of one micro-batch as a module, so DistributedDataParallel can wrap it.

    Its only submodule is the model (its state_dict is the model's, under ``model.``). The discriminator, which
    has its own optimiser and its own DistributedDataParallel wrapper, is not part of it: the trainer passes it to
    each call. The training settings are the trainer's (``Trainer.config`` is this module's ``config``, one
    object), so a schedule shortened by ``fit_to_time`` reaches the losses.
    """

    def __init__(self, model: COAT, config: TrainConfig):
        super().__init__()
        self.model, self.config = model, config

    def forward(self, batch: PairBatch, step: int, global_counts: dict[str, int],
                discriminator: Discriminator | None = None) -> StepResult:
        """The losses of ``batch`` at ``step``; ``discriminator`` (when given and ``adv_weight`` > 0) adds the
        adversarial term."""
        cfg, model = self.config, self.model
        mcfg = model.config
        r = mcfg.resolution
        content = model.encode(batch.content, check_values=False)  # the pair builder's own images: no host read
        style = model.encode(batch.style, check_values=False)
        alignment = model.align(content, style, mode=cfg.align_mode)
        maps = model.mix_latents(content, alignment)
        hybrid = (model.synthesize(maps, alignment) + 1) / 2  # [B, 3, R, R], unclamped for the gradient
        terms: dict[str, torch.Tensor] = {}

        has_target = batch.has_target
        rec = reconstruction_loss(hybrid.float(), batch.target, cfg.ssim_weight)
        terms["rec"] = (rec * has_target).sum() / max(1, global_counts["target"])
        terms["reg"] = latent_regularisation(content.maps + style.maps, model.w_avg).sum() / global_counts["all"]

        hybrid_desc = (model.encoder.descriptors(model.encoder.pyramid(hybrid * 2 - 1, finest=mcfg.scales[-1]))
                       if cfg.ccl_hybrid_weight else None)
        hard_share = hardness_schedule(step, cfg.steps, cfg.hard_ramp)
        use_random = cfg.random_pairs_join(step)
        ccl_real, ccl_hybrid = 0.0, 0.0
        kw = dict(n_queries=cfg.ccl_queries, n_negatives=cfg.ccl_negatives, hard_share=hard_share, tau=cfg.ccl_tau,
                  detach_keys=cfg.ccl_detach_keys, exclusion=cfg.ccl_exclusion)
        seeds = torch.tensor(batch.seeds, dtype=torch.long).to(batch.content.device, non_blocking=True)  # once, unwaited
        for i, s in enumerate(mcfg.scales):
            ks = style.descriptors[s]
            target, ok = flow_targets(batch.flow, batch.flow_valid, r, s, ks.shape[-2:])
            ok = ok & batch.has_flow[:, None]
            if use_random:
                est_target, est_ok = _confident_targets(alignment.flow[s], alignment.mask[s])
                random_rows = ~batch.has_flow
                target = torch.where(random_rows[:, None], est_target, target)
                ok = torch.where(random_rows[:, None], est_ok, ok)
            ccl_real = ccl_real + correspondence_nce(content.descriptors[s], ks, target, ok,
                                                     seeds=seeds, salt=2 * i, **kw).sum()
            if hybrid_desc is not None:
                ccl_hybrid = ccl_hybrid + correspondence_nce(hybrid_desc[s], ks, target, ok,
                                                             seeds=seeds, salt=2 * i + 1, **kw).sum()
        n_scales = len(mcfg.scales)
        if mcfg.refine_dim and cfg.ccl_fine_weight:  # the refinement's descriptors, on pairs with a known flow
            kf = style.descriptors[1]
            target, ok = flow_targets(batch.flow, batch.flow_valid, r, 1, kf.shape[-2:])
            detail = detail_weights(batch.content, cfg.ccl_fine_detail) if cfg.ccl_fine_detail else None
            terms["ccl_fine"] = correspondence_nce(
                content.descriptors[1], kf, target, ok & batch.has_flow[:, None], seeds=seeds, salt=2 * n_scales,
                query_weight=detail, **{**kw, "n_queries": cfg.ccl_fine_queries, "exclusion": cfg.ccl_fine_exclusion},
            ).sum() / global_counts["all"]
        cycle = alignment.cycle_error.get(mcfg.scales[-1])  # the finest soft matches (none on the hard path)
        if cfg.cycle_weight and cycle is not None:
            terms["cycle"] = cycle_loss(cycle).sum() / global_counts["all"]
        terms["ccl"] = ccl_real / n_scales / global_counts["all"]
        if hybrid_desc is not None:
            terms["ccl_hybrid"] = ccl_hybrid / n_scales / global_counts["all"]
        if discriminator is not None and cfg.adv_weight:
            terms["adv"] = generator_adversarial_loss(discriminator(hybrid * 2 - 1)).sum() / global_counts["all"]

        weights = cfg.loss_weights()
        loss = sum(weights[k] * v for k, v in terms.items())
        stats = {k: v.detach() for k, v in terms.items()}
        stats["coverage"] = torch.stack([m.float().mean() for m in alignment.mask.values()]).mean().detach()
        return StepResult(loss, stats, hybrid.detach(), [m.detach().mean(dim=(0, 2, 3)) for m in content.maps])


def parameter_groups(model: COAT, config: TrainConfig) -> list[dict]:
    """The optimiser's parameter groups, each with its ``lr_mult``: the model's trainable parameters at lr, then the
    encoder's at lr x ``encoder_lr_mult`` (one group when that is 1, as runs before the option had)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.encoder_lr_mult == 1:
        return [{"params": [p for _, p in trainable], "lr_mult": 1.0}]
    encoder = [p for name, p in trainable if name.startswith("encoder.")]
    rest = [p for name, p in trainable if not name.startswith("encoder.")]
    groups = [{"params": rest, "lr_mult": 1.0}, {"params": encoder, "lr_mult": config.encoder_lr_mult}]
    return [group for group in groups if group["params"]]


def _confident_targets(flow: torch.Tensor, mask: torch.Tensor):
    """The nearest style cell of every content cell's match [B, h*w] and whether it is trusted [B, h*w]."""
    h, w = flow.shape[-2:]
    return flow_to_index(flow.detach(), h, w), mask.flatten(1)


def _init_worker(_worker_id: int) -> None:
    """Batch workers: one thread each, and deaf to SIGINT (a Ctrl-C reaches the whole process group; the main
    process catches it, finishes its step and saves). SIGTERM still ends them (shutdown relies on it), with exit
    status 0: a worker killed by a signal makes the DataLoader's SIGCHLD handler raise in the main process in the
    middle of a step, so a SIGTERM to the process group would end the run without its final checkpoint."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


class _StepPairs(torch.utils.data.Dataset):
    """Item i = the micro-batches of step ``start + i`` (for a DataLoader that prepares them ahead): drawn (the
    trainer's device builds them) or, for a CPU trainer, built."""

    def __init__(self, trainer: "Trainer", start: int):
        # On a CPU the workers build the pairs too (the cores that train would do it otherwise).
        self.make = trainer.pairs if trainer.device.type == "cpu" else trainer.recipes
        self.start, self.steps = start, trainer.config.steps

    def __len__(self) -> int:
        return self.steps - self.start

    def __getitem__(self, i: int) -> list[PairBatch]:
        return self.make(self.start + i)


class Trainer:
    """Owns the model, its EMA, the optional discriminator, optimisers, data and the step counter."""

    def __init__(self, model_config: COATConfig, config: TrainConfig, dataset, *, device="cpu", model: COAT | None = None,
                 rank: int = 0, world_size: int = 1, workers: int = 0):
        self.dataset = dataset
        self.device = torch.device(device)
        if self.device.type == "cpu":
            flush_denormals()  # this thread at least (coat-train set it for every worker before they started)
        self.rank, self.world_size = rank, world_size
        if config.batch_size % (world_size * config.accumulate):
            raise ValueError(
                f"the global batch {config.batch_size} must divide evenly over {world_size} processes x "
                f"{config.accumulate} accumulation steps"
            )
        torch.manual_seed(config.seed)
        self.model = (model if model is not None else COAT(model_config)).to(self.device).train()
        self.model.requires_grad_(True)
        if config.freeze_decoder:
            self.model.decoder.requires_grad_(False)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.disc = Discriminator(self.model.config).to(self.device) if config.adv_weight else None
        self.step_module = TrainingStep(self.model, config)
        self.step_runner = self.step_module
        self.disc_runner = self.disc
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_runner = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
            if self.disc is not None:
                self.disc_runner = nn.parallel.DistributedDataParallel(self.disc, device_ids=ids)
        self.opt = torch.optim.Adam(parameter_groups(self.model, config), lr=config.lr, betas=config.betas)
        self.opt_d = None
        if self.disc is not None:
            c = config.r1_every / (config.r1_every + 1)  # lazy-R1 correction (StyleGAN2)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=config.lr * c,
                                          betas=(config.betas[0] ** c, config.betas[1] ** c))
        self.sampler = GlobalSampler(len(dataset), config.seed)
        self.step = 0
        self.workers, self._loader, self._loader_step = workers, None, -1
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    @property
    def config(self) -> TrainConfig:
        """The training settings: one object, kept by the step module (which computes the losses with it)."""
        return self.step_module.config

    @config.setter
    def config(self, config: TrainConfig) -> None:
        self.step_module.config = config
        self._loader = None  # batch workers hold a copy of the old settings (the pair mix follows the schedule)

    def _amp_dtype(self):
        amp = self.config.amp
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    # -- one optimiser step -------------------------------------------------------------------------------------
    def micro_batch(self, step: int, micro: int) -> range:
        """Global positions of micro-batch ``micro`` of ``step`` (all ranks together)."""
        cfg = self.config
        size = cfg.batch_size // cfg.accumulate
        start = step * cfg.batch_size + micro * size
        return range(start, start + size)

    def positions(self, step: int, micro: int) -> list[int]:
        """Global positions of this rank's share of micro-batch ``micro`` of ``step``."""
        whole = self.micro_batch(step, micro)
        local = len(whole) // self.world_size
        return list(whole[self.rank * local : (self.rank + 1) * local])

    def train_step(self, batches: list[PairBatch] | None = None) -> StepStats:
        """One optimiser step on ``batches`` (this rank's micro-batches; default: the step's own pairs, see
        :meth:`pairs`); returns the step's losses and stats, still on the device (:class:`StepStats`: the step
        never waits for the device; the first read copies them all)."""
        cfg = self.config
        self._set_lr()
        self.opt.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(self._next_batches() if batches is None else batches):
            batch = batch.to(self.device)
            if cfg.teacher_flow:  # before autocast: the teacher's matches in the precision inference uses
                batch = with_teacher_flow(batch, self.ema)
            counts = self._global_counts(self.step, micro)
            with autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                result: StepResult = self.step_runner(batch, self.step, counts, discriminator=self.disc)
            self.scaler.scale(result.loss * self.world_size).backward()  # DDP averages over ranks; the loss is a global sum
            for k, v in result.stats.items():
                totals[k] = totals.get(k, 0.0) + v.float() / (cfg.accumulate if k == "coverage" else 1)
            if self.disc is not None:
                totals.update(self._disc_step(batch, result.fake))
        self.scaler.step(self.opt)
        self.scaler.update()
        self._update_averages(result.layer_means)  # the last micro-batch's latents
        totals = self._reduce(totals)
        totals["loss"] = sum(totals[k] * w for k, w in cfg.loss_weights().items() if k in totals)
        self.step += 1
        first = self.opt.param_groups[0]
        return StepStats(totals, lr=first["lr"] / first["lr_mult"])

    def recipes(self, step: int) -> list[PairRecipe]:
        """The random part of this rank's micro-batches of ``step``, drawn on the CPU (what batch workers do)."""
        cfg = self.config
        return [draw_pairs(self.dataset, self.sampler, self.positions(step, m), cfg.seed, **cfg.pair_options(step))
                for m in range(cfg.accumulate)]

    def pairs(self, step: int, device=None) -> list[PairBatch]:
        """This rank's micro-batches of ``step``, built on ``device`` (default: the CPU)."""
        return [recipe.build(device) for recipe in self.recipes(step)]

    _pairs = pairs  # the former name

    def _next_batches(self) -> list[PairBatch]:
        """Batches of the current step: drawn ahead by ``workers`` background processes when asked, built on the
        model's device (rendering, warps and appearance changes run there)."""
        return [item if isinstance(item, PairBatch) else item.build(self.device) for item in self._next_recipes()]

    def _next_recipes(self) -> list[PairRecipe | PairBatch]:
        if self.workers == 0:
            return self.recipes(self.step)
        if self._loader is None or self._loader_step != self.step:
            steps = _StepPairs(self, self.step)
            self._loader = iter(torch.utils.data.DataLoader(
                steps, batch_size=None, num_workers=self.workers, prefetch_factor=4, persistent_workers=False,
                worker_init_fn=_init_worker,
            ))
            self._loader_step = self.step
        self._loader_step += 1
        try:
            return next(self._loader)
        # A worker was killed (say, a kill of the process group): the loader raises RuntimeError, or EOFError /
        # ConnectionError when the worker died while handing over a batch's shared memory.
        except (RuntimeError, StopIteration, EOFError, ConnectionError) as error:
            print(f"batch workers stopped ({error}); preparing batches in this process", file=sys.stderr)
            self.workers, self._loader = 0, None
            return self.recipes(self.step)

    def _global_counts(self, step: int, micro: int) -> dict[str, int]:
        from .pairs import pair_kind

        cfg = self.config
        kinds = [pair_kind(p, cfg.mix_at(step)) for p in self.micro_batch(step, micro)]
        return {"all": len(kinds) * cfg.accumulate, "target": sum(k != "random" for k in kinds) * cfg.accumulate}

    def _disc_step(self, batch: PairBatch, hybrid: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator step: the batch's styles are the real images, ``hybrid`` ([0, 1]) the fakes."""
        cfg = self.config
        fake = hybrid * 2 - 1
        real = batch.style * 2 - 1
        self.opt_d.zero_grad(set_to_none=True)
        d_loss = discriminator_loss(self.disc_runner(real), self.disc_runner(fake))
        out = {"d": d_loss.detach()}
        if self.step % cfg.r1_every == 0:
            real = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.disc_runner(real), real)
            d_loss = d_loss + cfg.r1_gamma / 2 * r1 * cfg.r1_every
            out["r1"] = r1.detach()
        d_loss.backward()
        self.opt_d.step()
        return out

    def _set_lr(self):
        cfg = self.config
        t = self.step / cfg.steps
        factor = 1.0
        if t > cfg.lr_decay_start:
            u = (t - cfg.lr_decay_start) / (1 - cfg.lr_decay_start)
            factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, u)))
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * factor * group["lr_mult"]

    @torch.no_grad()
    def _update_averages(self, layer_means: list[torch.Tensor]):
        """The average latent follows ``layer_means`` (per layer batch means of the content latents); the EMA
        follows the model."""
        cfg = self.config
        batch_mean = torch.stack(layer_means).mean(0)
        if self.world_size > 1:
            dist.all_reduce(batch_mean)
            batch_mean /= self.world_size
        m = self.model
        m.w_avg.lerp_(batch_mean.to(m.w_avg), 1 - cfg.w_avg_momentum)
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))  # warm-up: the EMA follows early steps
        for p_ema, p in zip(self.ema.parameters(), m.parameters()):
            p_ema.lerp_(p.detach(), 1 - decay)
        for b_ema, b in zip(self.ema.buffers(), m.buffers()):
            b_ema.copy_(b)

    def _reduce(self, totals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums over ranks (means for the per-rank shares), on the device: no rank waits for its host."""
        if self.world_size == 1:
            return totals
        keys = sorted(totals)  # every rank has the same keys, in this order
        t = torch.stack([totals[k].float().reshape(()) for k in keys])
        dist.all_reduce(t)
        per_rank_mean = {"coverage", "d", "r1"}
        return {k: v / self.world_size if k in per_rank_mean else v for k, v in zip(keys, t.unbind())}

    # -- persistence ------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "model_config": self.model.config.to_json(),
            "train_config": self.config.to_json(),
        }

    def save(self, directory, metadata: dict[str, str] | None = None) -> Path:
        """Write ``train_state.safetensors`` (everything to resume) then ``coat.safetensors`` (the EMA model)."""
        run = RunDirectory(directory)
        save_state(self.state(), run.state)
        meta = {"steps": str(self.step), "train_config": self.config.to_json(), **(metadata or {})}
        self.ema.save(run.model, meta)
        return run.model

    def load(self, path) -> None:
        state = load_state(path)
        saved = COATConfig.from_json(state["model_config"])  # inference defaults may differ (a preset's changed)
        if saved.replace(**{f: getattr(self.model.config, f) for f in INFERENCE_FIELDS}) != self.model.config:
            raise ValueError(f"{path} was trained with another model config; start a new run directory")
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        for group in self.opt.param_groups:  # states from before the option: one group at lr
            group.setdefault("lr_mult", 1.0)
        if self.disc is not None and state["disc"] is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
