"""benchmarks/gpu_check.py --smoke runs on CPU (< 60 s) and writes the JSON every section fills."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "xformers", "sdpa", "parity", "align", "transfer", "train", "pairs", "loss")


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: stable on a busy machine
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(SECTIONS) | {"summary", "seconds", "smoke"} <= set(result)
    failed = {name: result[name].get("error") for name in SECTIONS if not result[name]["ok"]}
    assert not failed, failed
    assert result["xformers"]["xformers_available"] is False  # CPU
    assert result["sdpa"]["bench C64 Cv66 fp32 padded"]  # a kernel name
    errors = result["parity"]["errors"]
    assert errors["fp32 sdpa"]["flow"] < 1e-3 and errors["fp32 chunked"]["flow"] < 1e-3
    assert any("ms" in row for row in result["align"]["rows"])
    pairs = result["pairs"]  # built where drawn: equal
    assert pairs["max_abs_content"] == 0 and pairs["max_abs_flow"] == 0 and pairs["valid_mismatch"] == 0
    assert result["loss"]["steps_done"] > 0 and result["loss"]["all_finite"]
    assert proc.stdout.strip().splitlines()[-1].startswith("loss")  # the table comes last
