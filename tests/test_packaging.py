"""The pack as ComfyUI's tooling sees it: `comfy-test lint` (Python syntax level and JavaScript level) passes,
requirements never pin torch or xformers, and pyproject carries the [tool.comfy] table."""

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_comfy_test_lint_passes_on_the_whole_pack():
    tool = Path(sys.executable).with_name("comfy-test")
    assert tool.exists(), "comfy-test is missing: run `make setup`"
    r = subprocess.run([str(tool), "lint", str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[SYNTAX] PASSED" in r.stdout and "[JAVASCRIPT] PASSED" in r.stdout


def test_requirements_leave_torch_and_xformers_to_the_host():
    names = [line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
             for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert names and not {"torch", "xformers", "torchvision", "torchaudio"} & set(names)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"]
    assert "torch" in deps and not any(d.startswith(("torch=", "torch>", "torch<", "torch ")) for d in deps)
    assert project["project"]["optional-dependencies"]["cuda"] == ["xformers>=0.0.35"]
    comfy = project["tool"]["comfy"]
    assert comfy["DisplayName"] and comfy["PublisherId"]
