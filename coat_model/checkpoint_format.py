"""The COAT checkpoint file format: ``.safetensors`` only, with the JSON config and a format version in the metadata.

Reading and writing files, nothing about the model: :func:`save` takes any module with a ``config`` and a
``state_dict``, so the model imports this module and this module never imports the model. Building models from
checkpoints (``load``, ``grow``, ``import_stylegan2``) lives in :mod:`coat_model.checkpoints`; :mod:`coat_model.io`
gathers both for callers. Reading never unpickles.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import tempfile
from pathlib import Path

import torch

from .model.config import COATConfig

FORMAT = "coat"
FORMAT_VERSION = "1"
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do."""


def _inspect(path: Path) -> dict[str, str]:
    """Validate the safetensors container without executing anything; return its metadata."""
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path.name}: COAT checkpoints are .safetensors files (got {path.suffix or 'no suffix'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path.name} is empty or truncated ({size} bytes): re-download or re-save it")
        (header_len,) = struct.unpack("<Q", head)
        header = f.read(header_len) if header_len <= min(_MAX_HEADER, size - 8) else b""
        if not header.startswith(b"{"):  # not a safetensors header: say what it is when we can tell
            # (a safetensors header's length can start with 0x80 too: only a file that is not one is a pickle)
            if head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
                raise CheckpointError(
                    f"{path.name} is a PyTorch pickle/zip file renamed to .safetensors; COAT never unpickles. "
                    "Convert it with coat_model.io.import_stylegan2 (generators) or re-save it as safetensors"
                )
            raise CheckpointError(f"{path.name} is not a valid safetensors file (truncated or corrupt header)")
    try:
        meta = json.loads(header)
    except ValueError:
        raise CheckpointError(f"{path.name} is not a valid safetensors file (unreadable header)") from None
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(f"{path.name} is truncated ({size} bytes, needs {8 + header_len + end}): re-save it")
    metadata = meta.get("__metadata__") or {}
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path.name} is a safetensors file but not a COAT checkpoint (no COAT config inside)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has COAT format version {metadata.get('format_version')!r}; "
            f"this version reads {FORMAT_VERSION!r}: update comfyui-coat"
        )
    return metadata


def read_config(path) -> COATConfig:
    return COATConfig.from_json(_inspect(Path(path))["config"])


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary file in the same folder, fsync and rename: a crash at any
    moment leaves either the old file or the new one, never a torn one."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _remove_orphans(path)


def _remove_orphans(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` killed midway: those whose writer process
    (the pid in the name) no longer runs. A live writer's file is never touched."""
    for stray in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stray.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            stray.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: never a reason to fail a save


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def save(model, path, metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``model`` (a :class:`~coat_model.COAT`: its ``state_dict`` and ``config``) to ``path``
    (temporary file + rename)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"save to a .safetensors path, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    atomic_save_file(tensors, path, meta)


def metadata(path) -> dict[str, str]:
    """The metadata of a COAT checkpoint (config JSON, format version, training notes)."""
    return _inspect(Path(path))


def checked_config(path: Path) -> COATConfig:
    """The config of a checkpoint, validated (a :class:`CheckpointError` that says why otherwise)."""
    metadata = _inspect(path)
    try:
        return COATConfig.from_json(metadata["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path.name} holds an invalid COAT config: {e}") from None
