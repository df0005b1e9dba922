"""Training state (optimisers, EMA, RNG, step) as a safetensors file: tensors by flat key, the rest as JSON.

Nothing here unpickles: nested dicts/lists of tensors, numbers, strings, booleans and None round-trip exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint_format import atomic_save_file

_TENSOR = "__tensor__"


def _flatten(obj, prefix: str, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"{prefix}: only str/int dict keys are supported")
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}[{i}]", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{prefix}: cannot store {type(obj).__name__} in a training state")


def _unflatten(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        items = [_unflatten(v, tensors) for v in obj["__list__"]]
        return tuple(items) if obj["tuple"] else items
    return obj


def save_state(state: dict, path) -> None:
    """Atomically write a nested training state to ``path`` (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layout = json.dumps(_flatten(state, "state", tensors))
    atomic_save_file(tensors, path, {"format": "coat-train-state", "layout": layout})


def load_state(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "coat-train-state":
            raise ValueError(f"{path} is not a COAT training state")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return _unflatten(json.loads(meta["layout"]), tensors)
