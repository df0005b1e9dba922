"""StyleGAN2 synthesis network driven by spatial latent maps (one map per layer, docs/METHOD.md "Decoder").

Parameter names follow rosinality's ``Generator`` (``input.input``, ``conv1``, ``to_rgb1``, ``convs.i``,
``to_rgbs.i``, ``noises.noise_i``) so that a pretrained ``g_ema`` synthesis network loads unchanged
(see :mod:`coat_model.io`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import COATConfig
from .layers import Blur, EqualConv2d, EqualLinear, FusedLeakyReLU, Upsample, apply_channelwise, modulated_conv2d


class ModulatedConv(nn.Module):
    """A modulated conv whose style comes from a latent map through an affine 1x1 map (bias init 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, w_dim: int, *, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))  # rosinality layout
        self.scale = 1 / math.sqrt(in_ch * kernel**2)
        self.modulation = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.padding, self.demodulate = kernel // 2, demodulate
        self.blur = None
        if upsample:
            p = (4 - 2) - (kernel - 1)
            self.blur = Blur(pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def styles(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, w_dim] or [B, w_dim, h, w] latent -> styles with C_in channels, same layout."""
        if latent.dim() == 2:
            return self.modulation(latent)
        return apply_channelwise(self.modulation, latent)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return modulated_conv2d(
            x, self.weight[0] * self.scale, self.styles(latent),
            demodulate=self.demodulate, upsample=self.blur, padding=self.padding,
        )


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, w_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, 3, w_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x, latent, noise):
        return self.activate(self.noise(self.conv(x, latent), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, w_dim: int, upsample: bool = True):
        super().__init__()
        self.upsample = Upsample() if upsample else None
        self.conv = ModulatedConv(in_ch, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, latent, skip=None):
        out = self.conv(x, latent) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class Decoder(nn.Module):
    """Synthesis network: latents ``[W_0 .. W_{L-1}]`` (each [B, w_dim] or [B, w_dim, h, w]) -> RGB in [-1, 1]."""

    def __init__(self, config: COATConfig):
        super().__init__()
        self.config = config
        ch, w_dim = config.decoder_channels, config.w_dim
        self.input = ConstantInput(ch(4))
        self.conv1 = StyledConv(ch(4), ch(4), w_dim)
        self.to_rgb1 = ToRGB(ch(4), w_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        self.noises.register_buffer("noise_0", torch.randn(1, 1, 4, 4))
        in_ch = ch(4)
        for i in range(3, config.log2_resolution + 1):
            res = 2**i
            self.convs.append(StyledConv(in_ch, ch(res), w_dim, upsample=True))
            self.convs.append(StyledConv(ch(res), ch(res), w_dim))
            self.to_rgbs.append(ToRGB(ch(res), w_dim))
            for j in (1, 2):
                self.noises.register_buffer(f"noise_{2 * (i - 3) + j}", torch.randn(1, 1, res, res))
            in_ch = ch(res)
        self.n_layers = config.n_layers
        if config.warp_style:  # where to take the warped style's colours: from the last features, the colours, trust
            self.style_gate = EqualConv2d(in_ch + 3 + 3 + 1, 1, 1)
            self.style_gate.bias.data.fill_(1.0)  # starts mostly open: the matches learn from the colours at once

    def fixed_noise(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(len(self.convs) + 1)]

    def random_noise(self, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        ref = self.noises.noise_0
        return [
            torch.randn(batch, 1, *n.shape[-2:], generator=generator, device="cpu").to(ref)
            for n in self.fixed_noise()
        ]

    def forward(self, latents: list[torch.Tensor], noise: list[torch.Tensor] | None = None, *,
                warped: torch.Tensor | None = None, trust: torch.Tensor | None = None) -> torch.Tensor:
        """``warped`` [B, 3, R, R] in [-1, 1] and ``trust`` [B, 1, R, R] in [0, 1] (``warp_style`` models): the
        output takes the warped style's colours by a learned gate, never more than ``trust`` allows."""
        if len(latents) != self.n_layers:
            raise ValueError(f"the decoder needs {self.n_layers} latents, got {len(latents)}")
        noise = self.fixed_noise() if noise is None else noise
        x = self.input(latents[0].shape[0])
        x = self.conv1(x, latents[0], noise[0])
        skip = self.to_rgb1(x, latents[1])
        i = 1
        for up, conv, to_rgb in zip(self.convs[::2], self.convs[1::2], self.to_rgbs):
            x = up(x, latents[i], noise[i])
            x = conv(x, latents[i + 1], noise[i + 1])
            skip = to_rgb(x, latents[i + 2], skip)
            i += 2
        if warped is not None and trust is not None and self.config.warp_style:
            skip = blend_warped(skip, warped, trust, self.style_gate(torch.cat([x, skip, warped, trust], 1)))
        return skip


def blend_warped(rendered: torch.Tensor, warped: torch.Tensor, trust: torch.Tensor, gate_logits: torch.Tensor):
    """``rendered + trust * sigmoid(gate) * (warped - rendered)``: trust 1 and an open gate give the warped style
    itself, trust 0 the rendering."""
    weight = trust * torch.sigmoid(gate_logits)
    return rendered + weight * (warped.to(rendered) - rendered)
