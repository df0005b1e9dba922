"""Counter-based random numbers: one independent stream per image, drawn for a whole batch in a few tensor ops.

``uniform(seeds, n, salt)[i, j]`` depends only on ``(seeds[i], salt, j)``: an image draws the same numbers alone or
inside any batch, on any device and in any process, which keeps data-parallel runs equal to single-process ones
without a Python loop or a ``torch.Generator`` per image. The hash is splitmix64 (Steele et al., 2014) in int64
arithmetic, which wraps on overflow on every torch backend; :func:`uniform_reference` is the plain-Python oracle.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser of ``x + golden``, bitwise, on int64 tensors."""
    z = x + _signed(_GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed(_M1)
    z = (z ^ _shr(z, 27)) * _signed(_M2)
    return z ^ _shr(z, 31)


def uniform(seeds: torch.Tensor, n: int, salt: int = 0) -> torch.Tensor:
    """[B, n] float32 in [0, 1) on ``seeds.device``: stream ``salt`` of each image's seed, numbers 0..n-1.

    Args:
        seeds: [B] integer seeds (any int64 values).
        salt: tells apart the streams of one image (say, one per scale and loss term).
    """
    key = _mix(seeds.long().view(-1, 1) ^ _signed(_mix_int(salt & _MASK)))
    counter = torch.arange(n, device=seeds.device, dtype=torch.long) * _signed(_GOLDEN)
    bits = _mix(key + counter)
    return _shr(bits, 40).float() / float(1 << 24)  # the top 24 bits: exact in float32


def _mix_int(x: int) -> int:
    """The same finaliser on a plain Python integer in [0, 2**64)."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def mix_seed(*values: int) -> int:
    """Mix integers into one 63-bit seed, so nearby seeds give unrelated streams: the seed of every dataset item
    (:mod:`coat_model.train.data.faces`), pair and loss stream (:mod:`coat_model.train.pairs`) of a run.

    A splitmix64-style chain over ``values`` (each folded in by xor, then multiplied and shifted with the splitmix64
    constants); the top 63 bits, so the result is a valid ``torch.Generator`` seed and int64.
    """
    z = _GOLDEN
    for v in values:
        z = (z ^ (int(v) & _MASK)) * _M1 & _MASK
        z = (z ^ (z >> 31)) * _M2 & _MASK
    return z >> 1


def uniform_reference(seed: int, n: int, salt: int = 0) -> list[float]:
    """The same numbers for one image, in plain Python integers (the test oracle)."""
    key = _mix_int((seed & _MASK) ^ _mix_int(salt & _MASK))
    return [(_mix_int((key + j * _GOLDEN) & _MASK) >> 40) / float(1 << 24) for j in range(n)]
