"""Checkpoints, for callers: the file format (:mod:`coat_model.checkpoint_format`) and the models built from it
(:mod:`coat_model.checkpoints`) under one name, ``from coat_model.io import load, grow, save, CheckpointError``.
"""

from __future__ import annotations

from .checkpoint_format import (
    FORMAT, FORMAT_VERSION, CheckpointError, atomic_save_file, checked_config, metadata, read_config, save,
)
from .checkpoints import grow, import_stylegan2, load

__all__ = [
    "FORMAT", "FORMAT_VERSION", "CheckpointError", "atomic_save_file", "checked_config", "grow", "import_stylegan2",
    "load", "metadata", "read_config", "save",
]
