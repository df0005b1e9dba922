"""StyleGAN2 building blocks in pure PyTorch: equalised learning rate, FIR resampling, modulated convolution.

The functional core is :func:`modulated_conv2d`, which accepts spatially varying styles ``[B, C_in, h, w]`` and
reduces exactly to StyleGAN2's modulated convolution when the styles are spatially constant.
:func:`modulated_conv2d_reference` is StyleGAN2's per-sample grouped convolution (rosinality's fused path), kept
as the test oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)


def make_kernel(taps=BLUR_KERNEL) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter depthwise, downsample. ``x``: [B, C, H, W]."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    weight = torch.flip(kernel, (0, 1)).to(x)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel() * upsample_factor**2, persistent=False)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling (StyleGAN2's skip upsampler)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel() * factor**2, persistent=False)
        p = len(BLUR_KERNEL) - factor
        self.factor, self.pad = factor, ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Downsample(nn.Module):
    """2x anti-aliased downsampling: blur, then keep every second pixel."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel(), persistent=False)
        p = len(BLUR_KERNEL) - factor
        self.factor, self.pad = factor, ((p + 1) // 2, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, down=self.factor, pad=self.pad)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, slope: float = 0.2) -> torch.Tensor:
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, slope) * math.sqrt(2.0)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class GroupNorm(nn.Module):
    """Group normalisation with a per-channel affine map (``nn.GroupNorm``'s parameters and state-dict names)."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class EqualConv2d(nn.Module):
    """Conv with the equalised learning rate of StyleGAN (weights ~ N(0, 1), scaled at run time)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; ``activation`` fuses StyleGAN2's leaky ReLU."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        return fused_leaky_relu(out, self.bias * self.lr_mul) if self.activation else out + self.bias * self.lr_mul


def apply_channelwise(linear: EqualLinear, maps: torch.Tensor) -> torch.Tensor:
    """Apply an :class:`EqualLinear` as a 1x1 convolution: [B, in, h, w] -> [B, out, h, w]."""
    weight = (linear.weight * linear.scale)[:, :, None, None]
    return F.conv2d(maps, weight, linear.bias * linear.lr_mul)


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if maps.shape[-2:] == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    upsample: Blur | None = None,
    padding: int = 0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Modulated convolution with per-pixel styles (docs/METHOD.md "Decoder").

    Args:
        x: input features [B, C_in, H, W].
        weight: base weight [C_out, C_in, k, k], already multiplied by its equalised-lr scale.
        styles: [B, C_in] (constant) or [B, C_in, h, w] (spatial); resized bilinearly to the input resolution,
            and for demodulation to the output resolution.
        demodulate: divide by the per-pixel norm d_o(q) = (sum_i s_i(q)^2 sum_k W_oik^2 + eps)^-1/2.
        upsample: for an up-conv, the blur applied after the stride-2 transposed convolution.
    """
    if styles.dim() == 2:
        styles = styles[:, :, None, None]
    x = x * _resize(styles, x.shape[-2:])
    if upsample is not None:
        y = upsample(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
    else:
        y = F.conv2d(x, weight, padding=padding)
    if demodulate:
        power = F.conv2d(_resize(styles, y.shape[-2:]).square(), weight.square().sum((2, 3))[:, :, None, None])
        y = y * torch.rsqrt(power + eps)
    return y


def modulated_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    upsample: Blur | None = None,
    padding: int = 0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """StyleGAN2's modulated convolution with one modulated weight per sample (grouped conv); styles [B, C_in]."""
    b, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    w_mod = weight[None] * styles[:, None, :, None, None]  # [B, C_out, C_in, k, k]
    if demodulate:
        w_mod = w_mod * torch.rsqrt(w_mod.square().sum((2, 3, 4), keepdim=True) + eps)
    x = x.reshape(1, b * c_in, h, w)
    if upsample is not None:
        w_t = w_mod.transpose(1, 2).reshape(b * c_in, c_out, k, k)
        y = F.conv_transpose2d(x, w_t, stride=2, groups=b)
        return upsample(y.reshape(b, c_out, *y.shape[-2:]))
    y = F.conv2d(x, w_mod.reshape(b * c_out, c_in, k, k), padding=padding, groups=b)
    return y.reshape(b, c_out, *y.shape[-2:])
