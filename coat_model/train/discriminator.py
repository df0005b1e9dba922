"""StyleGAN2 residual discriminator, for from-scratch training (adversarial loss with lazy R1)."""

from __future__ import annotations

import torch
from torch import nn

from ..model.config import COATConfig
from ..model.encoder import ConvAct, ResBlock
from ..model.layers import EqualLinear


class Discriminator(nn.Module):
    """Images [B, 3, R, R] in [-1, 1] -> realism logits [B, 1]."""

    def __init__(self, config: COATConfig, stddev_group: int = 4):
        super().__init__()
        ch = config.decoder_channels
        r = config.resolution
        self.from_rgb = ConvAct(3, ch(r), kernel=1)
        blocks = []
        while r > 4:
            blocks.append(ResBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.stddev_group = stddev_group
        self.final_conv = ConvAct(ch(4) + 1, ch(4))
        self.final = nn.Sequential(EqualLinear(ch(4) * 16, ch(4), activation=True), EqualLinear(ch(4), 1))

    def minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        group = min(b, self.stddev_group)
        while b % group:
            group -= 1
        std = x.view(group, -1, c, h, w).var(dim=0, unbiased=False).add(1e-8).sqrt()
        std = std.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).repeat(group, 1, h, w)
        return torch.cat([x, std], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(images))
        x = self.final_conv(self.minibatch_stddev(x))
        return self.final(x.flatten(1))
