#!/usr/bin/env python3
"""``make demo``: run examples/workflows/coat_transfer_api.json on a headless ComfyUI and print the result's path.

Starts ComfyUI (``$COMFYUI_DIR`` or .comfyui/ComfyUI) on a free port with its writable folders under
artifacts/demo/, uploads examples/images/content.png and style.png, queues the workflow through /prompt,
follows it on the websocket, downloads the outputs to artifacts/demo/out/ and stops the server.

    python tools/demo.py                  # CPU, the bundled checkpoint (checkpoints/coat_faces.safetensors)
    python tools/demo.py --gpu            # let ComfyUI pick its GPU
    python tools/demo.py --random-weights # no checkpoint at hand: an untrained model (the output is noise)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import comfy_client

REPO = Path(__file__).resolve().parent.parent
COMFY = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI").resolve()
FRONTEND = REPO / ".comfyui" / "frontend"
WORKFLOW = REPO / "examples" / "workflows" / "coat_transfer_api.json"
IMAGES = REPO / "examples" / "images"
WORK = REPO / "artifacts" / "demo"


def log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_checkpoint(name: str) -> Path | None:
    for folder in (REPO / "checkpoints", COMFY / "models" / "coat"):
        if (folder / name).is_file():
            return folder / name
    return None


def random_checkpoint(name: str, folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    import coat_model

    path = folder / name
    coat_model.COAT(coat_model.COATConfig.small()).save(path, metadata={"note": "untrained demo weights"})
    return path


def start_server(port: int, gpu: bool, extra_paths: Path | None) -> subprocess.Popen:
    dirs = {k: WORK / "server" / k for k in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port),
           "--input-directory", str(dirs["input"]), "--output-directory", str(dirs["output"]),
           "--temp-directory", str(dirs["temp"]), "--user-directory", str(dirs["user"]),
           "--database-url", "sqlite:///:memory:"]
    cmd += [] if gpu else ["--cpu"]
    cmd += ["--front-end-root", str(FRONTEND)] if (FRONTEND / "index.html").is_file() else []
    cmd += ["--extra-model-paths-config", str(extra_paths)] if extra_paths else []
    log_file = open(WORK / "comfyui.log", "wb")
    return subprocess.Popen(cmd, cwd=COMFY, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited with {proc.returncode} at startup; see {WORK / 'comfyui.log'}")
        try:
            with urllib.request.urlopen(url + "/system_stats", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"ComfyUI did not answer within {timeout:.0f} s; see {WORK / 'comfyui.log'}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def progress(kind: str, data: dict) -> None:
    if kind == "executing" and data.get("node"):
        log(f"running node {data['node']}")
    elif kind == "progress":
        log(f"  node {data.get('node')}: step {data.get('value')}/{data.get('max')}")
    elif kind == "executed":
        for entry in data.get("output", {}).get("coat_matches", []):
            log(f"  matches {entry['id']}: coverage per scale {entry['coverage']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="run ComfyUI on its GPU instead of --cpu")
    ap.add_argument("--random-weights", action="store_true",
                    help="if the checkpoint is missing, use an untrained model (for trying the plumbing only)")
    a = ap.parse_args(argv)
    if not (COMFY / "main.py").is_file():
        raise SystemExit(f"no ComfyUI at {COMFY}: run `make setup` (or set COMFYUI_DIR)")
    prompt = json.loads(WORKFLOW.read_text())
    ckpt = prompt["3"]["inputs"]["ckpt_name"]
    for old in (WORK / "out", WORK / "server" / "output"):  # fresh results, numbered from 00001
        shutil.rmtree(old, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    extra = None
    if find_checkpoint(ckpt) is None:
        if not a.random_weights:
            raise SystemExit(f"checkpoint {ckpt} is in neither {REPO / 'checkpoints'} nor {COMFY / 'models/coat'}; "
                             "add it, or pass --random-weights to try the plumbing with an untrained model")
        models = WORK / "models"
        models.mkdir(exist_ok=True)
        log(f"WARNING: {ckpt} not found; using untrained weights {random_checkpoint(ckpt, models)}")
        extra = WORK / "extra_model_paths.yaml"
        extra.write_text(f"coat_demo:\n  coat: {models}\n")

    t0 = time.monotonic()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, a.gpu, extra)
    try:
        wait_ready(url, proc)
        log(f"ComfyUI ready at {url} in {time.monotonic() - t0:.1f} s (log: {WORK / 'comfyui.log'})")
        for node, image in (("1", "content.png"), ("2", "style.png")):
            prompt[node]["inputs"]["image"] = comfy_client.upload_image(url, IMAGES / image)
        t1 = time.monotonic()
        pid, _ = comfy_client.run_prompt(url, prompt, progress, timeout=600)
        log(f"prompt {pid} finished in {time.monotonic() - t1:.1f} s")
        paths = comfy_client.download_outputs(url, pid, WORK / "out")
    except comfy_client.ComfyError as e:
        log(str(e))
        return 1
    finally:
        stop(proc)
    result = [p for p in paths if p.name.startswith("transfer")]
    for p in paths:
        log(f"downloaded {p}")
    print(result[0] if result else "\n".join(map(str, paths)))
    log(f"done in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
