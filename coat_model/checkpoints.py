"""COAT models from checkpoints: :func:`load`, :func:`grow` and :func:`import_stylegan2`.

The file format (validation, metadata, atomic writes) is :mod:`coat_model.checkpoint_format`. The one pickle reader,
:func:`import_stylegan2`, reads a rosinality-format generator with ``torch.load(weights_only=True)``, which refuses
arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint_format import CheckpointError, checked_config
from .model.coat import COAT
from .model.config import COATConfig
from .model.layers import fused_leaky_relu


def load(path, device=None, dtype=None) -> COAT:
    """Load a COAT model from a ``.safetensors`` checkpoint; eval mode, on ``device`` in ``dtype``."""
    path = Path(path)
    model = COAT(checked_config(path))
    state = load_file(str(path))
    missing, unexpected, wrong = _mismatch(state, model.state_dict())
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path.name} does not match its own config (another architecture or a damaged file): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}"
        )
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    """Keys of ``expected`` missing from ``state``, keys of ``state`` it does not expect, and shared keys whose shapes
    differ (each sorted)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    return missing, unexpected, wrong


def grow(path, **changes) -> COAT:
    """A model of the checkpoint's architecture with config ``changes`` that only *add* modules (such as
    ``pixel_latents=True``) or leave the weights alone (inference defaults), holding every weight of the checkpoint.

    New encoder scales start from the finest existing one: their FPN smoothing and latent trunk are copies of its
    and their lateral input is zero, so the new features start from the upsampled old ones passed through the old
    filters (close to the old latents, not equal: a 3x3 filter sees twice the area at half the scale); training
    takes it from there. Other new modules keep their fresh initialisation. A higher ``resolution`` adds decoder
    blocks; the warped-style gate, which reads the last block, then starts afresh. Training mode, on the CPU.
    """
    path = Path(path)
    base = checked_config(path)
    try:
        config = base.replace(**changes)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot grow {path.name} with {changes}: {e}") from None
    model = COAT(config)
    state, target = load_file(str(path)), model.state_dict()
    _, unexpected, wrong = _mismatch(state, target)  # missing keys are the modules the change adds
    if config.resolution != base.resolution:  # the gate reads the last block's features, whose width follows R
        for k in [k for k in wrong if k.startswith("decoder.style_gate.")]:
            del state[k]
            wrong.remove(k)
    misfit = unexpected + wrong
    if misfit:
        raise CheckpointError(
            f"{changes} changes weights that {path.name} already has ({misfit[:3]}...): only changes that add "
            "modules (e.g. pixel_latents) can start from it; train a new run for the others")
    new_scales = [s for s in config.latent_scales if s not in base.latent_scales]
    source = min(base.latent_scales)
    for s in new_scales:
        for module in ("smooth", "latent_trunk"):
            for k in [k for k in target if k.startswith(f"encoder.{module}.{s}.")]:
                twin = k.replace(f"encoder.{module}.{s}.", f"encoder.{module}.{source}.", 1)
                if twin in state and state[twin].shape == target[k].shape:
                    state[k] = state[twin].clone()
        for k in [k for k in target if k.startswith(f"encoder.lateral.{s}.")]:
            state[k] = torch.zeros_like(target[k])
    model.load_state_dict({**target, **state})
    return model.train()


# -- rosinality StyleGAN2 import -----------------------------------------------------------------------------------


def import_stylegan2(path, config: COATConfig | None = None, *, n_mean: int = 4096, seed: int = 0) -> COAT:
    """Build a :class:`COAT` whose decoder is a rosinality-format StyleGAN2 generator (``g_ema``).

    The encoder stays randomly initialised (train it with the decoder frozen, docs/METHOD.md "Decoder"). The average
    latent comes from ``latent_avg`` when present, otherwise from the mapping network over ``n_mean`` samples.
    The file is read with ``torch.load(weights_only=True)``: no code in it can run.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report every failure the same way
        raise CheckpointError(f"cannot read {path} as a weights-only PyTorch checkpoint: {e}") from None
    g = ckpt.get("g_ema", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(g, dict) or "input.input" not in g or "conv1.conv.weight" not in g:
        raise CheckpointError(f"{path} is not a rosinality StyleGAN2 checkpoint (no g_ema synthesis weights)")
    n_convs = len({k.split(".")[1] for k in g if k.startswith("convs.")})
    resolution = 2 ** (n_convs // 2 + 2)
    w_dim = g["conv1.conv.modulation.weight"].shape[1]
    channels = {4: g["input.input"].shape[1]}
    for i in range(n_convs // 2):
        channels[2 ** (i + 3)] = g[f"convs.{2 * i}.conv.weight"].shape[1]
    if config is None:
        config = COATConfig(
            resolution=resolution, w_dim=w_dim, channel_base=channels[resolution] * resolution,
            channel_max=channels[4],
        )
        if any(config.decoder_channels(r) != c for r, c in channels.items()):
            raise CheckpointError(f"{path}: unusual channel table {channels}; pass a matching COATConfig explicitly")
    model = COAT(config)
    target = model.decoder.state_dict()
    synthesis = {k: v for k, v in g.items() if k in target}
    missing = sorted(set(target) - set(synthesis))
    if missing:
        raise CheckpointError(f"{path}: generator does not fit the config ({len(missing)} missing, e.g. {missing[:3]})")
    model.decoder.load_state_dict(synthesis)
    latent_avg = ckpt.get("latent_avg") if isinstance(ckpt, dict) else None
    model.w_avg.copy_(latent_avg.flatten()[:w_dim] if latent_avg is not None else _mean_latent(g, w_dim, n_mean, seed))
    return model


def _mean_latent(g: dict[str, torch.Tensor], w_dim: int, n: int, seed: int) -> torch.Tensor:
    """Mean of rosinality's mapping network (PixelNorm + EqualLinear with fused leaky ReLU) over n samples."""
    layers = sorted({int(k.split(".")[1]) for k in g if k.startswith("style.") and k.endswith(".weight")})
    if not layers:
        raise CheckpointError("the generator has neither latent_avg nor a mapping network: cannot find w_avg")
    z = torch.randn(n, w_dim, generator=torch.Generator().manual_seed(seed))
    x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    lr_mul = 0.01
    for i in layers:
        weight, bias = g[f"style.{i}.weight"], g[f"style.{i}.bias"]
        x = fused_leaky_relu(x @ (weight * lr_mul / weight.shape[1] ** 0.5).t(), bias * lr_mul)
    return x.mean(dim=0)
