"""benchmarks/gpu_session.sh --smoke: the GPU session rehearsed on CPU; every stage leaves its files in $OUT."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("coat.safetensors", "metrics.jsonl", "run.json", "train.log", "quality_easy.json", "quality_hard.json",
         "results_grid.png", "n_content_sweep.png", "speed.json", "gpu_check.json")


def test_gpu_session_smoke_trains_benches_and_checks(tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "OUT": str(out), "RUN": str(run), "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    missing = [name for name in FILES if not (out / name).is_file()]
    assert not missing, (missing, proc.stdout[-3000:])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps and steps[-1] == 4
    for split in ("easy", "hard"):
        record = json.loads((out / f"quality_{split}.json").read_text())
        assert record["split"] == split and record["methods"]["coat"]["paa"] is not None
    assert json.loads((out / "speed.json").read_text())
    check = json.loads((out / "gpu_check.json").read_text())
    assert check["loss"]["ok"] and check["train"]["ok"]
    assert "session:" in proc.stdout
