"""Units of the benchmark reports: durations and byte counts as short text."""

from __future__ import annotations

MiB, GiB = 2**20, 2**30


def fmt_s(s: float) -> str:
    """``12.3 ms`` below a second, ``1.23 s`` above."""
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def fmt_bytes(n: float) -> str:
    """``1.23 GiB``, ``4.5 MiB`` or ``6.7 KiB``."""
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB"
