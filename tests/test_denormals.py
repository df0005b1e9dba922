"""Denormal floats are flushed to zero where COAT trains on a CPU (coat_model/train/denormals.py)."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = 1e-39  # below float32's smallest normal number (1.18e-38)

PROBE = """
import torch
{before}
torch.set_num_threads(2)
x = torch.full((1 << 22,), {tiny})
print(int((x * 1.0).count_nonzero()), int((x[:1] * 1.0).count_nonzero()))
"""


def _run(before: str) -> tuple[int, int]:
    code = PROBE.format(before=before, tiny=TINY)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    whole, single = out.stdout.split()
    return int(whole), int(single)


def test_denormals_survive_by_default_and_are_flushed_in_every_thread_when_set_before_the_pool():
    assert _run("") == (1 << 22, 1)
    assert _run("from coat_model.train.denormals import flush_denormals; assert flush_denormals()") == (0, 0)


def test_coat_train_flushes_before_anything_else_runs():
    probe = ("import torch, coat_model.train.cli as t\n"
             "t.parse_args = lambda argv: (_ for _ in ()).throw(SystemExit(int((torch.tensor([%r]) * 1.0).item() != 0)))\n"
             "t.main([])" % TINY)
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr  # exit 0: the denormal was already flushed when main parsed its arguments


def test_a_cpu_trainer_flushes_the_thread_that_trains():
    from coat_model.model.config import COATConfig
    from coat_model.train.data.faces import FaceDataset
    from coat_model.train.trainer import TrainConfig, Trainer

    torch.set_flush_denormal(False)
    try:
        assert (torch.tensor([TINY]) * 1.0).item() != 0
        Trainer(COATConfig.tiny(), TrainConfig(steps=1, batch_size=2), FaceDataset(size=32, length=4))
        assert (torch.tensor([TINY]) * 1.0).item() == 0
    finally:
        torch.set_flush_denormal(False)
