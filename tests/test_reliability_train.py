"""Interrupted ``coat-train`` runs (``python -m coat_model.train``, tiny preset, CPU, fixed seed, a checkpoint
every 2 steps): SIGKILL at a random step, a checkpoint write killed midway, SIGTERM to the whole process group.
Each time the last good checkpoint loads, at most one checkpoint interval is lost, and ``--resume`` ends with
exactly the weights of an uninterrupted run.

The kill points are random; the seed is printed in every failure message (set COAT_TEST_SEED to replay one).
"""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import coat_model
from coat_model.train.state import load_state

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 8, 2
SEED = int(os.environ.get("COAT_TEST_SEED") or random.SystemRandom().randrange(2**31))
RNG = random.Random(SEED)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Kills itself with SIGKILL while writing the N-th safetensors file (half of it written): a crash mid-save.
TEAR = """
import os, signal, sys
import safetensors.torch as st
original, calls, tear_at = st.save_file, [0], int(os.environ["COAT_TEAR_AT"])
def torn(tensors, filename, metadata=None):
    calls[0] += 1
    if calls[0] == tear_at:
        data = st.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return original(tensors, filename, metadata=metadata)
st.save_file = torn
from coat_model.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def args(out, *extra):
    return ["--preset", "tiny", "--device", "cpu", "--threads", "1", "--seed", "7", "--steps", str(STEPS),
            "--batch-size", "4", "--ckpt-every", str(EVERY), "--log-every", "1", "--sample-every", "0",
            "--out", str(out), *extra]


def train(out, *extra, code=None, env=None):
    cmd = [sys.executable] + (["-c", code] if code else ["-m", "coat_model.train"]) + args(out, *extra)
    return subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=300)


def start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "coat_model.train", *args(out, *extra)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def logged_step(out) -> int:
    """The last step written to metrics.jsonl (written right after each step, before its checkpoint)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [int(m.group(1)) for m in map(re.compile(r'"step": (\d+)').search, lines) if m]
    return steps[-1] if steps else 0


def wait_for_step(proc, out, step, timeout=120):
    deadline = time.monotonic() + timeout
    while logged_step(out) < step:
        assert proc.poll() is None, f"training ended early (seed {SEED}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s (seed {SEED})"
        time.sleep(0.01)
    return logged_step(out)


def weights(path):
    return load_file(str(path))


def assert_same_weights(run, reference):
    a, b = weights(run / "coat.safetensors"), weights(reference / "coat.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different[:5]} (seed {SEED})"
    assert load_state(run / "train_state.safetensors")["step"] == STEPS


def assert_good_checkpoint(out):
    """Both files of the run load (the EMA model through the library); returns (state step, model step)."""
    state_step = load_state(out / "train_state.safetensors")["step"]
    model_step = int(coat_model.io.metadata(out / "coat.safetensors")["steps"])
    coat_model.load(out / "coat.safetensors")
    return state_step, model_step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    done = train(out)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_stop_at_then_a_bare_resume_equals_an_uninterrupted_run(tmp_path, reference):
    """``--stop-at`` ends the run at a step; ``--resume`` with nothing else (no --seed, no --steps) goes on with
    the run's own schedule, seed and pairs (it once took the command line's defaults: seed 0, 20000 steps)."""
    stopped = train(tmp_path, "--stop-at", "3")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "stopped (--stop-at) at step 3" in stopped.stderr
    assert load_state(tmp_path / "train_state.safetensors")["step"] == 3
    bare = ["--device", "cpu", "--threads", "1", "--ckpt-every", str(EVERY), "--log-every", "1", "--sample-every",
            "0", "--out", str(tmp_path), "--resume"]
    done = subprocess.run([sys.executable, "-m", "coat_model.train", *bare], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(tmp_path, reference)
    assert coat_model.io.metadata(tmp_path / "coat.safetensors")["seed"] == "7"


def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    kill_at = RNG.randint(EVERY + 1, STEPS - 1)
    proc = start(tmp_path)
    wait_for_step(proc, tmp_path, kill_at)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_steps = logged_step(tmp_path)
    state_step, model_step = assert_good_checkpoint(tmp_path)
    assert state_step % EVERY == 0 and model_step in (state_step, state_step - EVERY)
    lost = done_steps - state_step
    assert 0 <= lost <= EVERY, f"lost {lost} steps, more than one interval of {EVERY} (seed {SEED})"
    done = train(tmp_path, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed {tmp_path} at step {state_step}" in done.stderr
    assert_same_weights(tmp_path, reference)


def test_checkpoint_write_killed_midway_keeps_the_last_good_checkpoint(tmp_path, reference):
    # Each checkpoint writes train_state then coat.safetensors; tear one of the writes of checkpoints 2..STEPS/2.
    tear_at = RNG.randint(3, STEPS)
    torn = train(tmp_path, code=TEAR, env={"COAT_TEAR_AT": str(tear_at)})
    assert torn.returncode == -signal.SIGKILL, torn.stderr[-2000:]
    leftovers = list(tmp_path.glob(".*.tmp"))
    assert len(leftovers) == 1, f"expected the torn temporary file, found {leftovers} (seed {SEED})"
    with pytest.raises(coat_model.CheckpointError, match="truncated"):   # the torn file itself is unreadable...
        coat_model.io.metadata(_as_safetensors(leftovers[0]))
    state_step, model_step = assert_good_checkpoint(tmp_path)          # ...the last good checkpoint is intact
    j = (tear_at + 1) // 2   # the checkpoint being written (1-based, every EVERY steps)
    if tear_at % 2:          # torn train_state: both files are still the previous checkpoint
        assert (state_step, model_step) == (EVERY * (j - 1), EVERY * (j - 1)), (tear_at, SEED)
    else:                    # torn coat.safetensors: the state is the new checkpoint, the model the previous one
        assert (state_step, model_step) == (EVERY * j, EVERY * (j - 1)), (tear_at, SEED)
    done = train(tmp_path, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(tmp_path, reference)
    assert not list(tmp_path.glob(".*.tmp")), "the next save removes the temporary file of the killed writer"


def _as_safetensors(tmp: Path) -> Path:
    """A copy of a temporary file under a .safetensors name, for the library's checks."""
    target = tmp.with_name("torn_copy.safetensors")
    target.write_bytes(tmp.read_bytes())
    return target


def test_sigterm_to_the_process_group_saves_a_resumable_checkpoint(tmp_path, reference):
    stop_at = RNG.randint(1, STEPS - 2)
    proc = start(tmp_path, "--workers", "1")
    seen = wait_for_step(proc, tmp_path, stop_at)
    os.killpg(proc.pid, signal.SIGTERM)      # the main process and its batch worker
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    stopped = re.search(r"stopped at step (\d+)", err)
    assert stopped, err[-2000:]
    step = int(stopped.group(1))
    assert seen <= step <= seen + 2, (seen, step, SEED)
    assert assert_good_checkpoint(tmp_path) == (step, step)
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker outlives the run
        os.killpg(proc.pid, 0)
    done = train(tmp_path, "--resume", "--workers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed {tmp_path} at step {step}" in done.stderr
    assert_same_weights(tmp_path, reference)
