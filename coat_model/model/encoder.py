"""Encoder E: residual CNN with anti-aliased downsampling, an FPN top-down path, latent and descriptor heads.

Outputs, for an image batch at the model resolution R (docs/METHOD.md "Encoder and latents"):
- ``features[s]``: FPN maps [B, feature_dim, R/s, R/s] for every aligned scale s (a divisor of R), and for s = 1
  with ``pixel_latents`` (full-resolution latents, no descriptors);
- ``descriptors[s]``: L2-normalised matching descriptors [B, descriptor_dim, R/s, R/s] (and [B, refine_dim, R, R]
  at s = 1 with ``refine_dim``);
- ``offsets[l]``: per-layer latent offsets [B, w_dim, R/s(l), R/s(l)]; the latent is w_avg + offset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import COATConfig
from .layers import Downsample, EqualConv2d, FusedLeakyReLU, GroupNorm
from .matching import coordinate_grid, untokens


class ConvAct(nn.Sequential):
    """Convolution, GroupNorm of ``groups`` groups when > 0 (``COATConfig.encoder_norm_groups``), leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, groups: int = 0):
        conv = EqualConv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        norm = (GroupNorm(groups, out_ch),) if groups else ()
        super().__init__(conv, *norm, FusedLeakyReLU(out_ch))


class ResBlock(nn.Module):
    """StyleGAN2 discriminator block: two convs with blur-downsampling, a 1x1 skip, sum scaled by 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 0):
        super().__init__()
        self.conv1 = ConvAct(in_ch, in_ch, groups=groups)
        self.down = Downsample()
        self.conv2 = ConvAct(in_ch, out_ch, groups=groups)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.down(self.conv1(x)))
        return (out + self.skip(self.down(x))) / math.sqrt(2)


class Encoder(nn.Module):
    def __init__(self, config: COATConfig):
        super().__init__()
        self.config = config
        ch = config.encoder_channels
        levels, g = config.encoder_levels, config.encoder_norm_groups
        self.from_rgb = ConvAct(3 + 2 * config.position_input, ch[0], kernel=1, groups=g)
        self.blocks = nn.ModuleList(ResBlock(ch[i - 1], ch[i], groups=g) for i in range(1, levels))
        level_of = {s: int(math.log2(s)) for s in config.latent_scales}
        self.level_of = level_of
        d = config.feature_dim
        self.lateral = nn.ModuleDict({str(s): EqualConv2d(ch[level_of[s]], d, 1) for s in config.latent_scales})
        self.smooth = nn.ModuleDict({str(s): ConvAct(d, d, groups=g) for s in config.latent_scales})
        self.descriptor = nn.ModuleDict({
            str(s): nn.Sequential(EqualConv2d(d, d, 1), nn.ReLU(), EqualConv2d(d, config.descriptor_dim, 1))
            for s in config.scales
        })
        if config.refine_dim:  # full-resolution descriptors of the refinement stage
            self.descriptor["1"] = nn.Sequential(EqualConv2d(d, d, 1), nn.ReLU(), EqualConv2d(d, config.refine_dim, 1))
        # Latent heads: one 3x3 trunk per scale shared by the layers that read it, then a 1x1 map per layer.
        self.latent_trunk = nn.ModuleDict({str(s): ConvAct(d, d, groups=g) for s in config.latent_scales})
        self.latent_heads = nn.ModuleList(EqualConv2d(d, config.w_dim, 1) for _ in range(config.n_layers))
        for head in self.latent_heads:  # start small, so that latents start near the average latent
            head.weight.data.mul_(0.1)

    def pyramid(self, images: torch.Tensor, finest: int | None = None) -> dict[int, torch.Tensor]:
        """[B, 3, R, R] in [-1, 1] -> FPN features per encoder scale (``config.latent_scales``), down to the scale
        ``finest`` when given (e.g. the finest aligned scale, when only descriptors are needed)."""
        if self.config.position_input:  # where a pixel sits in the frame: tells a left eye from a right one
            b, _, h, w = images.shape
            grid = untokens(coordinate_grid(h, w, images.device, images.dtype)[None], h, w)
            images = torch.cat([images, grid.expand(b, -1, -1, -1)], dim=1)
        x = self.from_rgb(images)
        levels = [x]
        for block in self.blocks:
            x = block(x)
            levels.append(x)
        features, top = {}, None
        for s in self.config.latent_scales:  # coarse to fine
            if finest is not None and s < finest:
                break
            lateral = self.lateral[str(s)](levels[self.level_of[s]])
            if top is not None:
                lateral = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            top = lateral
            features[s] = self.smooth[str(s)](lateral)
        return features

    def descriptors(self, features: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """L2-normalised descriptors of every descriptor scale present in ``features`` (the aligned scales, and the
        full resolution of the refinement stage)."""
        return {s: F.normalize(self.descriptor[str(s)](features[s]), dim=1)
                for s in self.config.descriptor_scales if s in features}

    def latent_offsets(self, features: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        trunk = {s: self.latent_trunk[str(s)](f) for s, f in features.items()}
        return [head(trunk[self.config.layer_scale(l)]) for l, head in enumerate(self.latent_heads)]
