"""COAT Train: train a COAT model, or fine-tune one, inside the graph (from an IMAGE batch or an image folder).

The run lives in ``<output>/coat_runs/<run_name>/`` (the output folder, because ComfyUI empties its temp folder at
start-up): ``train_state.safetensors`` (everything to resume), ``coat.safetensors`` (the EMA model),
``losses.jsonl`` (the loss of every step, for the curve), ``metrics.jsonl`` and ``node_run.json`` (the settings
the run was started with). Cancel saves the state at the last finished step; queuing the node again with the same
run name continues from there, exactly as if it had not stopped.

ComfyUI runs nodes under ``torch.inference_mode()`` (docs/COMFYUI.md, "Training inside the graph"): training runs inside
``torch.inference_mode(False)`` + ``torch.enable_grad()``, on clones of the input tensors and a fresh copy of the
base model's weights (the base model itself is never changed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io

from coat_model import COAT, COATConfig, COATInputError
from coat_model.images import grid, to_pil
from coat_model.pairs import GlobalSampler, build_pairs
from coat_model.train import fit
from coat_model.trainer import TrainConfig, Trainer

from .loader import offload_device, pick_backend
from .types import CoatModel, LoadedModel

RUNS = "coat_runs"
MIN_BATCH = 2
MIN_IMAGES = 2
RUN_FILES = ("train_state.safetensors", "coat.safetensors", "losses.jsonl", "metrics.jsonl", "node_run.json")
RESOLUTIONS = [32, 64, 128, 256, 512, 1024]   # the powers of two >= 32 that check_settings accepts
MAX_FOLDER_OPTIONS = 500                      # the folder dropdown lists at most this many folders
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]*")


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


def run_dir(run_name: str) -> Path:
    """``<output>/coat_runs/<run_name>``; the name is one folder name, no paths."""
    name = run_name.strip()
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise COATInputError(f"invalid run_name {run_name!r}: use letters, digits, spaces, '_', '-' and '.' "
                             f"(one folder name; the run is kept in output/{RUNS}/<run_name>)")
    return Path(folder_paths.get_output_directory()) / RUNS / name


DATA_ROOTS_ENV = "COAT_TRAIN_DATA_ROOTS"


def data_roots() -> list[Path]:
    """The folders COAT Train may read: ComfyUI's input folder, plus those the machine's owner lists in the
    environment variable ``COAT_TRAIN_DATA_ROOTS`` (separated by ``os.pathsep``) when starting ComfyUI. A client
    of the server cannot widen this, so a prompt over the API reads no folder the owner did not open."""
    listed = os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep)
    roots = [folder_paths.get_input_directory(), *(p.strip() for p in listed if p.strip())]
    return [Path(os.path.abspath(os.path.expanduser(r))) for r in roots]


def folder_options(depth: int = 2) -> list[str]:
    """The folder dropdown: "" (none: use 'images'), the subfolders of ComfyUI's input folder (relative, up to
    ``depth`` levels) and the extra data roots with their direct subfolders (absolute). Hidden folders are left
    out; any other allowed folder can still be typed through the API."""
    roots = data_roots()
    options: list[str] = [""]

    def walk(base: Path, rel: Path, level: int, absolute: bool) -> None:
        try:
            children = sorted(c for c in base.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        for child in children:
            if len(options) >= MAX_FOLDER_OPTIONS:
                return
            options.append(str(child) if absolute else (rel / child.name).as_posix())
            if level + 1 < depth:
                walk(child, rel / child.name, level + 1, absolute)

    walk(roots[0], Path(), 0, absolute=False)
    for root in roots[1:]:
        if root.is_dir() and len(options) < MAX_FOLDER_OPTIONS and str(root) not in options:
            options.append(str(root))
            walk(root, Path(), 1, absolute=True)
    return options


def resolve_folder(folder: str) -> Path:
    """A folder path as typed (quotes and ``~`` allowed); relative paths are taken from ComfyUI's input folder.

    The path must lie inside one of :func:`data_roots` (``..`` is collapsed first; links placed inside a root by
    the owner are followed)."""
    text = folder.strip().strip('"').strip("'")
    roots = data_roots()
    path = Path(os.path.abspath(roots[0] / os.path.expanduser(text)))  # roots[0] is the input folder
    if not any(path == root or root in path.parents for root in roots):
        raise COATInputError(
            f"folder {path} is outside the folders COAT Train may read ({', '.join(map(str, roots))}). Fix: put the "
            f"images (or a link to their folder) into {roots[0]} and type its name, or start ComfyUI with "
            f"{DATA_ROOTS_ENV}={path} to allow that folder")
    return path


def training_data(images: torch.Tensor | None, folder: str, resolution: int):
    """(dataset of [3, R, R] images, a fingerprint of the data) from the IMAGE batch or the folder."""
    from coat_model.data.folder import ImageFolderDataset, images_to_dataset

    has_folder = bool(folder and folder.strip())
    if images is None and not has_folder:
        raise COATInputError("no training images: connect an IMAGE batch to 'images' (e.g. from Load Image, "
                             "batched) or type a folder of images into 'folder'")
    if images is not None and has_folder:
        raise COATInputError("both 'images' and 'folder' are given: use one of them (disconnect 'images' or clear "
                             "'folder')")
    if images is not None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise COATInputError(f"images must be a ComfyUI IMAGE [B, H, W, C], got {shape}")
        if images.shape[0] < MIN_IMAGES:
            raise COATInputError(f"only {images.shape[0]} image: random pairs need different images, so give at "
                                 f"least {MIN_IMAGES} (batch images with 'Image Batch', or use 'folder')")
        x = images.detach().clone().float().cpu().movedim(-1, 1)   # a normal tensor, not an inference tensor
        quantised = (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
        digest = hashlib.sha1(quantised.numpy().tobytes()).hexdigest()[:16]
        return images_to_dataset(x, size=resolution), f"images {tuple(images.shape[:3])} sha1 {digest}"
    path = resolve_folder(folder)
    try:
        dataset = ImageFolderDataset(path, resolution)
    except ValueError as error:
        raise COATInputError(f"{error}. Fix: put images (png, jpg, webp, ...) into that folder, type another "
                             f"folder (relative paths start in {folder_paths.get_input_directory()}), or connect an "
                             "IMAGE batch instead") from None
    if len(dataset) < MIN_IMAGES:
        raise COATInputError(f"{path} holds only {len(dataset)} usable image: random pairs need different images, "
                             f"so add images until there are at least {MIN_IMAGES}")
    return dataset, f"folder {path.resolve()} ({len(dataset)} images)"


# -- the run folder ---------------------------------------------------------------------------------------------


def _start_fresh(directory: Path) -> None:
    for name in RUN_FILES:
        (directory / name).unlink(missing_ok=True)


def _check_same_run(directory: Path, settings: dict) -> None:
    """A saved state continues only with the settings it was started with (``steps`` may change)."""
    try:
        saved = json.loads((directory / "node_run.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        raise COATInputError(f"{directory} holds a training state that COAT Train did not start: use another "
                             "run_name, or set restart to true to replace it") from None
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    if changed:
        raise COATInputError(f"run '{directory.name}' was started with other settings ({'; '.join(changed)}). "
                             "To continue it, set those back; to start over, set restart to true or use another "
                             "run_name. Only steps may change between runs")


def _read_losses(path: Path, up_to: int) -> list[tuple[int, float]]:
    """Per-step losses up to the resumed step (a later entry of the same step wins; later steps are dropped)."""
    by_step: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                step, loss = int(entry["step"]), float(entry["loss"])
            except (ValueError, KeyError, TypeError):
                continue
            if step <= up_to:
                by_step[step] = loss
    return sorted(by_step.items())


def _write_losses(path: Path, losses: list[tuple[int, float]]) -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in losses))


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


def loss_curve(losses: list[tuple[int, float]], width: int = 512, height: int = 256) -> torch.Tensor:
    """The loss per step (light) and its running mean (dark) as a ComfyUI IMAGE [1, H, W, 3]."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, width - 12, 22, height - 26
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if not losses:
        draw.text((left + 10, (top + bottom) // 2), "no training steps yet", fill=(90, 90, 90), font=font)
    else:
        steps = [s for s, _ in losses]
        values = [v if math.isfinite(v) else float("nan") for _, v in losses]
        finite = sorted(v for v in values if not math.isnan(v)) or [0.0]
        lo = finite[0]
        hi = finite[min(len(finite) - 1, int(0.98 * len(finite)))] if len(finite) >= 20 else finite[-1]
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

        def xy(step: float, value: float) -> tuple[float, float]:
            v = min(max(value, lo), hi)
            return (left + (step - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))

        for i in range(1, 4):  # grid lines
            y = top + i * (bottom - top) / 4
            draw.line([(left, y), (right, y)], fill=(232, 232, 232))
        raw = [xy(s, v) for s, v in zip(steps, values) if not math.isnan(v)]
        smooth, mean, k = [], None, 2 / (1 + max(1, len(values) // 20))
        for s, v in zip(steps, values):
            if not math.isnan(v):
                mean = v if mean is None else mean + k * (v - mean)
                smooth.append(xy(s, mean))
        for points, colour in ((raw, (150, 190, 235)), (smooth, (20, 70, 170))):
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            elif points:
                x, y = points[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((4, top - 4), f"{hi:.3g}", fill=(60, 60, 60), font=font)
        draw.text((4, bottom - 8), f"{lo:.3g}", fill=(60, 60, 60), font=font)
        draw.text((left, bottom + 6), f"step {steps[0]}", fill=(60, 60, 60), font=font)
        last = f"step {steps[-1]}"
        draw.text((right - 6 * len(last), bottom + 6), last, fill=(60, 60, 60), font=font)
        draw.text((left, 5), f"COAT training loss  last {values[-1]:.4g}  min {finite[0]:.4g}", fill=(20, 20, 20),
                  font=font)
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return (array.float() / 255)[None].to(mm.intermediate_device())


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


def loss_map(losses: list[tuple[int, float]]) -> dict:
    """LOSS_MAP as ComfyUI's own training nodes give it (``{"loss": [...]}``, one value per step, in order), for
    core nodes such as Plot Loss Graph."""
    return {"loss": [v for _, v in losses]}


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
        state_path = directory / "train_state.safetensors"
        if restart:
            _start_fresh(directory)
        if state_path.is_file():
            _check_same_run(directory, settings)

        _free_for_training(model_cfg, batch_size, device)

        # Fixed preview pairs (one warp pair, one random pair), drawn before the trainer seeds the RNG.
        with torch.random.fork_rng(devices=_rng_devices(device)):
            shown = build_pairs(dataset, GlobalSampler(len(dataset), seed), [0, 3], seed, (0.5, 0.25, 0.25))
        shown_content, shown_style = shown.content.to(device), shown.style.to(device)

        trainer = Trainer(model_cfg, TrainConfig(steps=steps, batch_size=batch_size, lr=learning_rate, seed=seed),
                          dataset, device=device, model=model)
        if state_path.is_file():
            trainer.load(state_path)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "node_run.json").write_text(json.dumps(
            {"settings": settings, "steps": steps, "device": str(device), "torch": torch.__version__,
             "model_config": json.loads(model_cfg.to_json())}, indent=2))
        losses_path = directory / "losses.jsonl"
        losses = _read_losses(losses_path, trainer.step)
        _write_losses(losses_path, losses)
        metadata = {"source": "COAT Train", "run": directory.name, "data": data}

        bar = comfy.utils.ProgressBar(steps)
        bar.update_absolute(min(trainer.step, steps), steps)
        last = {"preview": 0.0, "text": 0.0}

        def on_step(step: int, stats: dict) -> None:
            loss = float(stats["loss"])
            losses.append((step, loss))
            with open(losses_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": loss}) + "\n")
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
