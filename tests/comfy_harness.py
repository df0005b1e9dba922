"""Run the provisioned ComfyUI for tests: as a server subprocess, or imported in-process.

ComfyUI lives in ``$COMFYUI_DIR`` or ``.comfyui/ComfyUI`` (``make setup`` provisions it). Nothing here imports
ComfyUI at module import time, so tests that do not use these helpers never touch it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FRONTEND = REPO / ".comfyui" / "frontend"                # the newest frontend (scripts/setup_env.py)
FRONTEND_PINNED = REPO / ".comfyui" / "frontend-pinned"  # the one ComfyUI's requirements.txt pins
FRONTENDS = {"newest": FRONTEND, "pinned": FRONTEND_PINNED}
VENV_PY = REPO / ".venv" / "bin" / "python"


def comfyui_dir() -> Path:
    """The ComfyUI checkout to use; fails the test (no skip) if it is not provisioned."""
    d = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI").resolve()
    if not (d / "main.py").is_file():
        pytest.fail(f"ComfyUI is not provisioned at {d}: run `make setup` (or set COMFYUI_DIR)", pytrace=False)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def frontend_dir(kind: str) -> Path:
    """The provisioned frontend ``kind`` (``newest`` or ``pinned``); fails the test (no skip) if it is missing."""
    if kind not in FRONTENDS:
        raise ValueError(f"unknown frontend {kind!r}; expected one of {sorted(FRONTENDS)}")
    d = FRONTENDS[kind]
    if not (d / "index.html").is_file() or not (d / "VERSION").is_file():
        pytest.fail(f"the {kind} frontend is not provisioned at {d}: run `make setup`", pytrace=False)
    return d


def frontend_version(kind: str) -> str:
    return (frontend_dir(kind) / "VERSION").read_text().strip()


@dataclass
class ComfyServer:
    url: str
    log_path: Path
    proc: subprocess.Popen
    root: Path  # tmp root holding input/, output/, temp/, user/, models/coat/ (an extra `coat` model folder)
    frontend: str | None = None          # set by the ui_server fixture: "newest" or "pinned"
    frontend_version: str | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_server(root: Path, timeout: float = 120.0, frontend: Path | None = None) -> ComfyServer:
    """Start ``main.py --cpu`` on a free port with all writable dirs under ``root``; wait for /system_stats.

    ``frontend``: the web root to serve (default: the newest provisioned frontend when present, else ComfyUI's own).
    """
    comfy = comfyui_dir()
    dirs = {k: root / k for k in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # A private `coat` model folder (root/models/coat) through an extra_model_paths.yaml, as users add folders.
    (root / "models" / "coat").mkdir(parents=True, exist_ok=True)
    (root / "extra_model_paths.yaml").write_text(f"tests:\n  base_path: {root / 'models'}\n  coat: coat\n")
    port = free_port()
    cmd = [str(VENV_PY if VENV_PY.exists() else sys.executable), "main.py", "--cpu",
           "--listen", "127.0.0.1", "--port", str(port),
           "--input-directory", str(dirs["input"]), "--output-directory", str(dirs["output"]),
           "--temp-directory", str(dirs["temp"]), "--user-directory", str(dirs["user"]),
           "--database-url", "sqlite:///:memory:",
           "--extra-model-paths-config", str(root / "extra_model_paths.yaml")]
    if frontend is not None:
        if not (frontend / "index.html").is_file():
            raise FileNotFoundError(f"no frontend at {frontend} (index.html missing)")
        cmd += ["--front-end-root", str(frontend)]
    elif (FRONTEND / "index.html").is_file():
        cmd += ["--front-end-root", str(FRONTEND)]
    log_path = root / "comfyui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ComfyServer(f"http://127.0.0.1:{port}", log_path, proc, root)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited with {proc.returncode} during startup; log {log_path}:\n"
                        f"{log_tail(log_path)}", pytrace=False)
        try:
            with urllib.request.urlopen(server.url + "/system_stats", timeout=2) as r:
                json.load(r)
            return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"ComfyUI did not answer /system_stats within {timeout:.0f} s; log {log_path}:\n"
                        f"{log_tail(log_path)}", pytrace=False)
        time.sleep(0.3)


# --- in-process (docs/COMFYUI.md "Testing against a real ComfyUI") -------------------------------------------------------------------
_inproc: dict = {}


def run_async(coro):
    """Run a coroutine on the kept-open in-process loop (PromptServer.send_sync needs it alive).

    When this thread already runs an event loop (Playwright's sync API keeps one running once the browser tests
    started Chromium), asyncio refuses a second one here, so the kept loop then runs in a worker thread."""
    loop = _inproc["loop"]
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return loop.run_until_complete(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(loop.run_until_complete, coro).result()


def load_inprocess(root: Path, pack_dir: Path = REPO):
    """Import ComfyUI into this process, load ``pack_dir`` as a custom node pack; return the ``nodes`` module.

    Writable dirs are redirected under ``root``. Idempotent per process (the first call wins).
    """
    if "nodes" in _inproc:
        return _inproc["nodes"]
    comfy = str(comfyui_dir())
    mod = sys.modules.get("nodes")
    if mod is not None and not str(getattr(mod, "__file__", "")).startswith(comfy):
        del sys.modules["nodes"]  # e.g. this repo's own nodes/ package: ComfyUI's top-level `nodes` must win
    if comfy not in sys.path:
        sys.path.insert(0, comfy)
    cwd = os.getcwd()
    os.chdir(comfy)
    try:
        from comfy.cli_args import args
        args.cpu = True                      # before anything imports comfy.model_management
        import utils.install_util  # noqa: F401  (pitfall 6: before nodes/server)
        import folder_paths
        for name in ("input", "output", "temp", "user"):
            (root / name).mkdir(parents=True, exist_ok=True)
            getattr(folder_paths, f"set_{name}_directory")(str(root / name))
        from server import PromptServer
        import nodes

        loop = asyncio.new_event_loop()      # kept open for the session (pitfall 7)
        asyncio.set_event_loop(loop)
        _inproc["loop"] = loop

        async def _load():
            PromptServer(loop)               # so @PromptServer.instance.routes works at pack import
            return await nodes.load_custom_node(str(pack_dir))

        if not run_async(_load()):
            pytest.fail(f"ComfyUI could not import the custom node pack {pack_dir} (traceback in the captured log)",
                        pytrace=False)
    finally:
        os.chdir(cwd)
    _inproc["nodes"] = nodes
    return nodes


def close_inprocess() -> None:
    loop = _inproc.pop("loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()
