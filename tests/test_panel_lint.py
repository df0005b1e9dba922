"""`comfy-test lint` (JavaScript level, strict) over web/: the panel's glue stays isolated and namespaced (no
globals, no document-level listeners or injected CSS, extension names under `coat.`)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import comfy_harness


def test_web_passes_comfy_test_javascript_lint():
    tool = Path(sys.executable).with_name("comfy-test")
    tool = str(tool) if tool.exists() else shutil.which("comfy-test")
    if tool is None:
        pytest.skip("comfy-test is not installed (`make setup` installs it when PyPI is reachable)")
    r = subprocess.run([tool, "lint", "--check", "javascript", "--strict", "--json", str(comfy_harness.REPO)],
                       capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout[r.stdout.index("{"):])
    js = report["results"]["javascript"]
    assert r.returncode == 0 and js["passed"], json.dumps(js["findings"], indent=1)
    assert js["web_dir"] == "web" and js["namespaces"] == ["coat"] and js["findings"] == []
    assert (comfy_harness.REPO / "web" / "coat_panel.js").is_file()
