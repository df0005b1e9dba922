"""COAT Train: train a COAT model, or fine-tune one, inside the graph (from an IMAGE batch or an image folder).

The run lives in ``<output>/coat_runs/<run_name>/`` (the output folder, because ComfyUI empties its temp folder at
start-up): ``train_state.safetensors`` (everything to resume), ``coat.safetensors`` (the EMA model),
``losses.jsonl`` (the loss of every step, for the curve), ``metrics.jsonl`` and ``node_run.json`` (the settings
the run was started with). Cancel saves the state at the last finished step; queuing the node again with the same
run name continues from there, exactly as if it had not stopped.

ComfyUI runs nodes under ``torch.inference_mode()`` (docs/COMFYUI.md, "Training inside the graph"): training runs inside
``torch.inference_mode(False)`` + ``torch.enable_grad()``, on clones of the input tensors and a fresh copy of the
base model's weights (the base model itself is never changed).

The node's parts live in their own modules: ``train_data`` (the IMAGE batch or a folder inside the allowed data
roots), ``train_run`` (the run folder: ``coat_model.train.run_dir`` with ``node_run.json``, the settings check, the
per-step losses) and ``loss_plot`` (the loss curve and LOSS_MAP outputs).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.v0_0_2 import io
from PIL import Image

from coat_model import COAT, COATConfig, COATInputError
from coat_model.images import grid, to_pil
from coat_model.train.cli import fit
from coat_model.train.pairs import GlobalSampler, build_pairs
from coat_model.train.trainer import TrainConfig, Trainer

from .loader import offload_device, pick_backend
from .loss_plot import loss_curve, loss_map
from .train_data import DATA_ROOTS_ENV, MIN_IMAGES, data_roots, folder_options, resolve_folder, training_data
from .train_run import RUNS, append_loss, check_same_run, node_run, read_losses, run_dir, write_losses
from .types import CoatModel, LoadedModel

__all__ = ["COATTrain", "DATA_ROOTS_ENV", "MIN_BATCH", "MIN_IMAGES", "RESOLUTIONS", "RUNS", "check_settings",
           "data_roots", "folder_options", "loss_curve", "loss_map", "preview_grid", "resolve_folder", "run_dir",
           "training_data", "training_memory"]

MIN_BATCH = 2
RESOLUTIONS = [32, 64, 128, 256, 512, 1024]   # the powers of two >= 32 that check_settings accepts


# -- inputs -----------------------------------------------------------------------------------------------------


def check_settings(steps: int, batch_size: int, learning_rate: float, resolution: int) -> None:
    """Clear errors (with the fix) for settings the trainer cannot use."""
    if steps < 1:
        raise COATInputError(f"steps is {steps}: set steps to 1 or more (a few hundred to fine-tune, thousands "
                             "from scratch)")
    if batch_size < MIN_BATCH:
        raise COATInputError(f"batch_size {batch_size} is too small: every batch mixes warp, self and random pairs, "
                             f"so set batch_size to {MIN_BATCH} or more (4-16 works well)")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise COATInputError(f"learning_rate is {learning_rate}: set a positive learning rate, e.g. 0.002 from "
                             "scratch or 0.0005 to fine-tune")
    if resolution < 32 or resolution & (resolution - 1):
        raise COATInputError(f"resolution {resolution} is not a power of two >= 32: use 32, 64, 128 or 256")


# -- pictures ---------------------------------------------------------------------------------------------------


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


@torch.no_grad()
def preview_grid(model: COAT, content: torch.Tensor, style: torch.Tensor) -> Image.Image:
    """Rows of content | style | result with the given (EMA) model, enlarged to about 256 px high."""
    with torch.random.fork_rng(devices=_rng_devices(model.device)):   # the training RNG stays untouched
        c, s = model.encode(content), model.encode(style)
        hybrid = model.decode(c, model.align(c, s))
    rows = torch.stack([content, style, hybrid.float()], 1).flatten(0, 1).cpu()
    image = to_pil(grid(rows, nrow=3))
    factor = max(1, -(-256 // image.height))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


# -- progress ---------------------------------------------------------------------------------------------------


def _progress_text(text: str, node_id: str | None) -> None:
    """The current loss as progress text on node ``node_id`` (ComfyUI's hidden UNIQUE_ID; None outside a prompt)."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = PromptServer.instance
        if server is not None:
            server.send_progress_text(text, node_id, server.client_id)
    except Exception:  # progress text is a nicety: never let it stop training
        pass


def training_memory(config: COATConfig, batch_size: int) -> int:
    """A rough bound (bytes) of what training needs on its device: weights, gradients, two Adam moments and the
    EMA copy (5x the parameters, with a discriminator's share), plus activations for ``batch_size`` pairs."""
    from .types import inference_memory

    try:
        with torch.device("meta"):   # counts the parameters without allocating them
            params = 4 * sum(p.numel() for p in COAT(config).parameters())
    except Exception:  # an estimate only: never let it stop training
        params = 0
    return int(6 * params + 4 * inference_memory(config, batch_size))


def _free_for_training(config: COATConfig, batch_size: int, device: torch.device) -> None:
    """Before training: offload other models (SDXL, other COAT models, ...) from ``device`` through ComfyUI's
    model management until what training needs is free."""
    mm.free_memory(training_memory(config, batch_size), device)


def _interrupted() -> bool:
    """``should_stop`` of :func:`fit`: raises ComfyUI's InterruptProcessingException on Cancel."""
    mm.throw_exception_if_processing_interrupted()
    return False


# -- the node ---------------------------------------------------------------------------------------------------


class COATTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATTrain",
            display_name="COAT Train",
            category="COAT",
            description="Train a COAT model on your own images (a batch or a folder), or fine-tune a loaded one. "
                        "Cancel keeps the run; queue again with the same run name to continue it.",
            inputs=[
                io.Image.Input("images", optional=True,
                               tooltip="Training images as an IMAGE batch (at least 2). Leave unconnected to use "
                                       "'folder' instead."),
                io.Combo.Input("folder", options=folder_options(), default="",
                               tooltip="Or a folder of images (png, jpg, webp, ...; subfolders included): the "
                                       "subfolders of ComfyUI's input folder are listed (press R to refresh after "
                                       "adding one). Folders elsewhere must be allowed with COAT_TRAIN_DATA_ROOTS "
                                       "(README). Leave empty when 'images' is connected."),
                io.String.Input("run_name", default="coat_run",
                                tooltip=f"Name of the run, kept in output/{RUNS}/<run_name>. Queue again with the "
                                        "same name (after Cancel, or with more steps) to continue it."),
                io.Int.Input("steps", default=500, min=1, max=1_000_000,
                             tooltip="Total optimisation steps of the run (a resumed run continues up to this "
                                     "number). Hundreds to fine-tune, thousands from scratch."),
                io.Int.Input("batch_size", default=4, min=MIN_BATCH, max=256,
                             tooltip="Training pairs per step (2 or more). Larger is smoother but slower and uses "
                                     "more memory."),
                io.Float.Input("learning_rate", default=0.002, min=0.000001, max=0.1, step=0.0001, round=0.000001,
                               tooltip="Adam learning rate (cosine decay over the last 40% of steps). About 0.002 "
                                       "from scratch, 0.0005 to fine-tune."),
                io.Combo.Input("resolution", options=RESOLUTIONS, default=64,
                               tooltip="Model resolution in pixels (64 trains in minutes on a CPU; 128-256 need a "
                                       "GPU). Images are centre-cropped and resized to it. Ignored with a base "
                                       "model (its own resolution is used)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of the initial weights, the pair sampling and the augmentations: the "
                                     "same seed and inputs give the same model on the CPU. Part of the run: "
                                     "queueing again with the same seed continues or reuses it, another seed "
                                     "needs restart or a new run_name."),
                CoatModel.Input("base_model", optional=True,
                                tooltip="Optional COAT model to fine-tune (from COAT Model Loader). Unconnected: a "
                                        "fresh 'small' model is trained from scratch."),
                io.Boolean.Input("restart", default=False,
                                 tooltip="Discard the saved state of this run_name and train from step 0. Off: "
                                         "continue the saved run."),
            ],
            outputs=[
                CoatModel.Output(display_name="model",
                                 tooltip="The trained model (exponential moving average of the weights, eval mode)."),
                io.Image.Output(display_name="loss_curve",
                                tooltip="The training loss per step (light) and its running mean (dark)."),
                io.LossMap.Output(display_name="loss_map",
                                  tooltip="The loss of every step as ComfyUI's training nodes give it "
                                          "({'loss': [...]}), e.g. for Plot Loss Graph."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, folder=None) -> bool | str:
        """The folder may be typed (API) instead of picked: check it against the data roots at queue time."""
        if isinstance(folder, str) and folder.strip():
            try:
                resolve_folder(folder)
            except COATInputError as error:
                return str(error)
        return True

    @classmethod
    def execute(cls, run_name="coat_run", steps=500, batch_size=4, learning_rate=0.002, resolution=64, seed=0,
                images=None, folder="", base_model: LoadedModel | None = None, restart=False) -> io.NodeOutput:
        check_settings(steps, batch_size, learning_rate, int(resolution))
        directory = run_dir(run_name)
        device = mm.get_torch_device()
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        with torch.inference_mode(False), torch.enable_grad():
            return cls._train(directory, steps, batch_size, learning_rate, int(resolution), seed, images, folder,
                              base_model, restart, device, node_id)

    @classmethod
    def _train(cls, directory: Path, steps, batch_size, learning_rate, resolution, seed, images, folder,
               base_model, restart, device, node_id=None) -> io.NodeOutput:
        model = None
        if base_model is not None:
            model_cfg = base_model.config
            model = COAT(model_cfg)                                   # float32, normal tensors
            model.load_state_dict(base_model.model.state_dict())      # copies; the base model is not touched
        else:
            model_cfg = COATConfig.small(resolution=resolution)
        dataset, data = training_data(images, folder, model_cfg.resolution)
        settings = {"batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                    "resolution": model_cfg.resolution, "data": data,
                    "base_model": None if base_model is None else
                    f"{base_model.name} {hashlib.sha1(model_cfg.to_json().encode()).hexdigest()[:12]}"}
        run = node_run(directory)
        if restart:
            run.clear()
        resume = run.resumes(not restart)   # the same rule as coat-train --resume (coat_model.train.run_dir)
        if resume:
            check_same_run(run, settings)

        _free_for_training(model_cfg, batch_size, device)

        # Fixed preview pairs (one warp pair, one random pair), drawn before the trainer seeds the RNG.
        with torch.random.fork_rng(devices=_rng_devices(device)):
            shown = build_pairs(dataset, GlobalSampler(len(dataset), seed), [0, 3], seed, (0.5, 0.25, 0.25))
        shown_content, shown_style = shown.content.to(device), shown.style.to(device)

        trainer = Trainer(model_cfg, TrainConfig(steps=steps, batch_size=batch_size, lr=learning_rate, seed=seed),
                          dataset, device=device, model=model)
        if resume:
            trainer.load(run.state)
        run.write_record({"settings": settings, "steps": steps, "device": str(device), "torch": torch.__version__,
                          "model_config": json.loads(model_cfg.to_json())})
        losses = read_losses(run.losses, trainer.step)
        write_losses(run.losses, losses)
        metadata = {"source": "COAT Train", "run": directory.name, "data": data}

        bar = comfy.utils.ProgressBar(steps)
        bar.update_absolute(min(trainer.step, steps), steps)
        last = {"preview": 0.0, "text": 0.0}

        def on_step(step: int, stats: dict) -> None:
            loss = float(stats["loss"])
            losses.append((step, loss))
            append_loss(run.losses, step, loss)
            now = time.monotonic()
            if now - last["text"] >= 0.25 or step == steps:
                last["text"] = now
                _progress_text(f"step {step}/{steps}  loss {loss:.4f}", node_id)
            preview = None
            if now - last["preview"] >= 2.0 or step == steps:
                last["preview"] = now
                preview = ("JPEG", preview_grid(trainer.ema, shown_content, shown_style), None)
            bar.update_absolute(step, steps, preview)   # ComfyUI's hook raises here too when Cancel was pressed

        try:
            fit(trainer, out_dir=directory, ckpt_every=100, log_every=max(10, steps // 50), sample_every=0,
                on_step=on_step, should_stop=_interrupted, metadata=metadata)
        except mm.InterruptProcessingException:
            trainer.save(directory, metadata)      # the state of the last finished step: queue again to resume
            raise
        offload, final_step = offload_device(device), trainer.step
        ema = trainer.ema.eval().requires_grad_(False).to(offload)   # nodes downstream load it when they run
        del trainer
        if device.type != "cpu":
            mm.soft_empty_cache()
        handle = LoadedModel(ema, pick_backend("auto", device), f"{RUNS}/{directory.name} step {final_step}",
                             device, offload)
        return io.NodeOutput(handle, loss_curve(losses), loss_map(losses))
