"""COAT Train's run folder, ``<output>/coat_runs/<run_name>/``: the layout of ``coat_model.train.run_dir`` (the same
files and the same resume rule as ``coat-train``) with ``node_run.json`` as its record, the check that a resumed run keeps
its settings, and ``losses.jsonl`` (the loss of every step, for the curve)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import folder_paths

from coat_model import COATInputError
from coat_model.train.run_dir import NODE_RECORD, RunDirectory

RUNS = "coat_runs"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]*")


def run_dir(run_name: str) -> Path:
    """``<output>/coat_runs/<run_name>``; the name is one folder name, no paths."""
    name = run_name.strip()
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise COATInputError(f"invalid run_name {run_name!r}: use letters, digits, spaces, '_', '-' and '.' "
                             f"(one folder name; the run is kept in output/{RUNS}/<run_name>)")
    return Path(folder_paths.get_output_directory()) / RUNS / name


def node_run(directory) -> RunDirectory:
    """The node's run in ``directory`` (its record is ``node_run.json``)."""
    return RunDirectory(directory, NODE_RECORD)


def check_same_run(run: RunDirectory, settings: dict) -> None:
    """A saved state continues only with the settings it was started with (``steps`` may change)."""
    saved = (run.read_record() or {}).get("settings")
    if not isinstance(saved, dict):
        raise COATInputError(f"{run.path} holds a training state that COAT Train did not start: use another "
                             "run_name, or set restart to true to replace it")
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    if changed:
        raise COATInputError(f"run '{run.name}' was started with other settings ({'; '.join(changed)}). "
                             "To continue it, set those back; to start over, set restart to true or use another "
                             "run_name. Only steps may change between runs")


def read_losses(path: Path, up_to: int) -> list[tuple[int, float]]:
    """Per-step losses up to the resumed step (a later entry of the same step wins; later steps are dropped)."""
    by_step: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                step, loss = int(entry["step"]), float(entry["loss"])
            except (ValueError, KeyError, TypeError):
                continue
            if step <= up_to:
                by_step[step] = loss
    return sorted(by_step.items())


def write_losses(path: Path, losses: list[tuple[int, float]]) -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in losses))


def append_loss(path: Path, step: int, loss: float) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "loss": loss}) + "\n")
