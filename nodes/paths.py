"""The ``coat`` model folder: ``models/coat``, any ``extra_model_paths.yaml`` entry, and the pack's ``checkpoints/``.

ComfyUI reads ``extra_model_paths.yaml`` before it imports custom nodes, so a ``coat:`` entry there may already
have created the folder; :func:`register` keeps those paths and adds ours around them.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

FOLDER = "coat"
EXTENSIONS = {".safetensors"}
BUNDLED = Path(__file__).resolve().parent.parent / "checkpoints"  # shipped with the pack


def default_dir() -> str:
    """``<ComfyUI>/models/coat``: where COAT Save Model writes."""
    return os.path.join(folder_paths.models_dir, FOLDER)


def register() -> None:
    """Register the ``coat`` folder (safetensors only): models/coat first, extra paths, the bundled weights last."""
    paths = list(folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0])
    if default_dir() not in paths:
        paths.insert(0, default_dir())
    if str(BUNDLED) not in paths:
        paths.append(str(BUNDLED))
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def searched() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER)


def checkpoints() -> list[str]:
    """File names (relative to their folder) of every COAT checkpoint found, for the loader's list."""
    return folder_paths.get_filename_list(FOLDER)


def missing_message(name: str) -> str:
    return (f"COAT checkpoint {name!r} not found. Searched the 'coat' model folders "
            f"{searched()} for .safetensors files; put the file into one of them "
            "(models/coat, an extra_model_paths.yaml 'coat:' entry, or the pack's checkpoints/) and refresh")


def resolve(name: str) -> str:
    """Full path of checkpoint ``name``; a clear error naming the searched folders and the expected type."""
    if Path(name).suffix.lower() not in EXTENSIONS:
        raise ValueError(f"{name!r} is not a .safetensors file: COAT loads .safetensors checkpoints only")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(missing_message(name))
    return path
