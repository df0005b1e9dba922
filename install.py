#!/usr/bin/env python3
"""Post-install step run by ComfyUI-Manager (``python install.py`` in the pack folder, after requirements.txt).

Idempotent and offline-safe: it never touches torch, changes nothing when everything is in place, and a failed
optional install is reported, not fatal. Optional xformers (faster soft alignment on NVIDIA GPUs) is installed
only when ``COAT_INSTALL_XFORMERS=1`` is set and the running torch is a CUDA build; without network access that
step fails with a warning and COAT falls back to PyTorch SDPA.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PACK = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[comfyui-coat] {msg}", flush=True)


def missing_requirements() -> list[str]:
    """Lines of requirements.txt whose module does not import (pip names equal module names here, except pillow)."""
    modules = {"pillow": "PIL"}
    names = [line.split("#")[0].strip() for line in (PACK / "requirements.txt").read_text().splitlines()]
    return [n for n in names if n and importlib.util.find_spec(modules.get(n.lower(), n)) is None]


def pip(*args: str) -> bool:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd).returncode == 0


def torch_build() -> tuple[str, str | None] | None:
    """(torch version, CUDA version or None) of the running torch, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__.split("+")[0], torch.version.cuda


def install_xformers() -> None:
    """An xformers wheel built for the installed torch; the constraint keeps pip from replacing torch."""
    build = torch_build()
    if importlib.util.find_spec("xformers") is not None:
        log("xformers already installed")
    elif build is None or build[1] is None:
        log("xformers skipped: this torch is not a CUDA build")
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(f"torch=={build[0]}\n")
        try:
            if not pip("-c", f.name, "xformers"):
                log("WARNING: xformers did not install (offline, or no wheel for this torch); SDPA will be used")
        finally:
            os.unlink(f.name)


def main() -> int:
    missing = missing_requirements()
    if missing and not pip(*missing):
        log(f"WARNING: could not install {missing}; install them into ComfyUI's Python by hand")
    if os.environ.get("COAT_INSTALL_XFORMERS") == "1":
        install_xformers()
    log("ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
