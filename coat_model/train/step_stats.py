"""A training step's losses and stats, left on the model's device until someone reads them.

Reading a CUDA tensor's value (``float(t)``, ``t.item()``) makes the host wait for every kernel queued before it.
A step that did so for each of its ten-odd stats would stall the GPU at every step; :class:`StepStats` keeps them
as tensors and copies them all to the host in one transfer, on the first read (the progress line every
``log_every`` steps, a ComfyUI progress hook). Steps nobody reads never wait.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import torch


class StepStats(MutableMapping):
    """``{name: float}`` for the reader; 0-dim tensors (``pending``) until the first read asks for their values."""

    def __init__(self, pending: dict[str, torch.Tensor] | None = None, **floats: float):
        self._pending = {k: v.detach() for k, v in (pending or {}).items()}
        self._floats = dict(floats)

    def _host(self) -> dict[str, float]:
        if self._pending:
            keys = list(self._pending)
            values = torch.stack([self._pending[k].float().reshape(()) for k in keys]).tolist()  # one copy
            self._floats = {**dict(zip(keys, values)), **self._floats}
            self._pending = {}
        return self._floats

    def tensors(self) -> dict[str, torch.Tensor]:
        """The values not yet read, as the step left them (for a caller that reduces them on the device)."""
        return dict(self._pending)

    def __getitem__(self, key: str) -> float:
        if key not in self._pending and key in self._floats:
            return self._floats[key]
        return self._host()[key]

    def __setitem__(self, key: str, value: float) -> None:
        self._pending.pop(key, None)
        self._floats[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._pending:
            del self._pending[key]
        else:
            del self._floats[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._pending
        yield from (k for k in self._floats if k not in self._pending)

    def __len__(self) -> int:
        return len(self._pending) + sum(k not in self._pending for k in self._floats)

    def __repr__(self) -> str:
        return f"StepStats({dict(self)})"
