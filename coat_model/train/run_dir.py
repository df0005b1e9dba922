"""A training run's folder: the names of its files and the one rule that decides whether a run resumes.

Both ways of training write the same layout, so a folder reads the same wherever it came from:

- ``coat.safetensors``: the EMA model (``coat_model.load``, the ComfyUI loader);
- ``train_state.safetensors``: everything needed to resume (optimisers, EMA, RNG, step);
- ``metrics.jsonl``: a line of losses every few steps; ``samples/step_NNNNNNN.png``: sample grids (command line);
- ``losses.jsonl``: the loss of every step (the COAT Train node's curve);
- the run record, JSON: ``run.json`` for ``coat-train`` (its settings and the history of its invocations),
  ``node_run.json`` for the COAT Train node (the settings a resumed run must keep). The two names are kept as
  they are, so folders of either kind written before this class still resume.

The resume rule (:meth:`RunDirectory.resumes`) is the same for both: a run continues from its saved state exactly
when the caller asks for it (``--resume``; the node's ``restart`` off) and the folder holds a training state;
otherwise it starts at step 0.
"""

from __future__ import annotations

import json
from pathlib import Path

CLI_RECORD = "run.json"
NODE_RECORD = "node_run.json"


class RunDirectory:
    """The files of one run in ``path``; ``record`` names its run record (:data:`CLI_RECORD` or
    :data:`NODE_RECORD`)."""

    MODEL = "coat.safetensors"
    STATE = "train_state.safetensors"
    METRICS = "metrics.jsonl"
    LOSSES = "losses.jsonl"
    SAMPLES = "samples"

    def __init__(self, path, record: str = CLI_RECORD):
        if record not in (CLI_RECORD, NODE_RECORD):
            raise ValueError(f"a run record is {CLI_RECORD} or {NODE_RECORD}, got {record!r}")
        self.path, self.record_name = Path(path), record

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r}, record={self.record_name!r})"

    # -- paths ------------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def losses(self) -> Path:
        return self.path / self.LOSSES

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    def sample(self, step: int) -> Path:
        """The sample grid written at ``step``."""
        return self.samples / f"step_{step:07d}.png"

    @property
    def record(self) -> Path:
        return self.path / self.record_name

    @property
    def run_files(self) -> tuple[Path, ...]:
        """What :meth:`clear` removes: the state, the model, the logs and this run's record (samples stay)."""
        return self.state, self.model, self.losses, self.metrics, self.record

    # -- the resume rule --------------------------------------------------------------------------------------------
    def has_state(self) -> bool:
        return self.state.is_file()

    def resumes(self, requested: bool) -> bool:
        """Whether the run continues from its saved state: when ``requested`` and the folder holds one."""
        return bool(requested) and self.has_state()

    def clear(self) -> None:
        """Start over: remove :attr:`run_files` (a missing file is fine)."""
        for path in self.run_files:
            path.unlink(missing_ok=True)

    # -- the run record ---------------------------------------------------------------------------------------------
    def read_record(self) -> dict | None:
        """The run record, or None when it is missing or unreadable (never a reason to stop training)."""
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def write_record(self, record: dict) -> None:
        """Replace the run record (creating the folder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(record, indent=2))

    def append_invocation(self, step: int, record: dict) -> None:
        """Write ``record`` (this invocation's settings, with its ``command``) as the run record, plus ``history``:
        every invocation of the run so far with the step it started at (a resumed run keeps the command that began
        it)."""
        write_run_record(self.record, step, record)


def write_run_record(path, step: int, record: dict) -> None:
    """:meth:`RunDirectory.append_invocation` for a record file ``path``."""
    path = Path(path)
    history = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            history = previous.get("history") or [{"command": previous.get("command"), "start_step": 0}]
        except (OSError, ValueError, AttributeError):
            history = []  # an unreadable record is replaced, never a reason to stop training
    record["history"] = history + [{"command": record["command"], "start_step": step}]
    path.write_text(json.dumps(record, indent=2))
