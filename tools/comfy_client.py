#!/usr/bin/env python3
"""Headless client for any ComfyUI server: upload inputs, queue an API-format prompt, follow it, fetch outputs.

Library use::

    name = upload_image(url, "photo.png")                 # -> "photo.png", usable as LoadImage's `image`
    pid = queue_prompt(url, prompt, client_id)            # raises ComfyError (with node_errors) on HTTP 400
    entry = wait(url, pid, client_id, on_progress=print)  # history entry; raises ComfyError if execution failed
    pid, entry = run_prompt(url, prompt, on_progress=print)  # both in one, without missing early events
    paths = download_outputs(url, pid, "out/")

CLI::

    python tools/comfy_client.py --url http://127.0.0.1:8188 run workflow_api.json \\
        --set 5.steps=200 --upload 1.image=photo.png --out out/

Progress goes to stderr, output paths (one per line) to stdout. Only the standard library is needed; progress
comes over the ``/ws`` websocket when ``aiohttp`` is importable (it is in ComfyUI's environment), otherwise
``/history`` is polled.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

Progress = Callable[[str, dict], None]  # (message type, data) from the websocket


class ComfyError(RuntimeError):
    """A prompt was rejected or failed; ``details`` holds the server's JSON."""

    def __init__(self, message: str, details=None):
        super().__init__(message)
        self.details = details


def _request(url: str, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    req = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def get_json(url: str, path: str):
    return json.loads(_request(url, path))


def upload_image(url: str, path: str | Path, subfolder: str = "", overwrite: bool = True) -> str:
    """POST /upload/image; returns the name to put into LoadImage's ``image`` input."""
    path = Path(path)
    boundary = uuid.uuid4().hex
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    fields = {"overwrite": str(overwrite).lower(), "subfolder": subfolder, "type": "input"}
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items())
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
             f"Content-Type: {ctype}\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    res = json.loads(_request(url, "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    return f"{res['subfolder']}/{res['name']}" if res.get("subfolder") else res["name"]


def queue_prompt(url: str, prompt: dict, client_id: str) -> str:
    """POST /prompt; returns the prompt id. A 400 becomes a ComfyError listing the node errors."""
    data = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
    try:
        res = json.loads(_request(url, "/prompt", data, {"Content-Type": "application/json"}))
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            details = json.loads(body)
        except ValueError:
            raise ComfyError(f"/prompt answered {e.code}: {body[:2000]}") from None
        lines = [f"prompt rejected ({e.code}): {details.get('error', {}).get('message', details.get('error'))}"]
        for node_id, ne in (details.get("node_errors") or {}).items():
            for err in ne.get("errors", []):
                lines.append(f"  node {node_id} ({ne.get('class_type')}): {err.get('message')}: {err.get('details')}")
        raise ComfyError("\n".join(lines), details) from None
    return res["prompt_id"]


def _finished(url: str, prompt_id: str):
    """The history entry once the prompt has finished (ComfyUI writes it at the end, success or not), else None."""
    return get_json(url, f"/history/{prompt_id}").get(prompt_id) or None


def _check(entry: dict) -> dict:
    status = entry.get("status", {})
    if status.get("status_str") == "error":
        errs = [d for kind, d in status.get("messages", []) if kind in ("execution_error", "execution_interrupted")]
        msg = "; ".join(f"node {e.get('node_id')} ({e.get('node_type')}): {e.get('exception_type')}: "
                        f"{(e.get('exception_message') or 'interrupted').strip()}" for e in errs) or "unknown error"
        raise ComfyError(f"prompt failed: {msg}", entry)
    return entry


async def _follow_ws(url: str, client_id: str, on_progress: Progress | None, deadline: float,
                     prompt_id: str | None = None, prompt: dict | None = None):
    """Follow a prompt over /ws (queueing ``prompt`` once connected, so no event is missed); (id, entry|None)."""
    import aiohttp

    ws_url = url.replace("http", "ws", 1).rstrip("/") + f"/ws?clientId={client_id}"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, heartbeat=30) as ws:
        if prompt is not None:
            prompt_id = queue_prompt(url, prompt, client_id)
        while time.monotonic() < deadline:
            try:
                msg = await ws.receive(timeout=1.0)
            except asyncio.TimeoutError:  # quiet: maybe it finished before the socket connected
                entry = _finished(url, prompt_id)
                if entry:
                    return prompt_id, entry
                continue
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue  # binary preview frames
            m = json.loads(msg.data)
            kind, data = m.get("type"), m.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if on_progress:
                on_progress(kind, data)
            if kind in ("execution_success", "execution_error", "execution_interrupted"):
                break  # the history entry follows within moments; the caller polls for it
    return prompt_id, None


def _follow(url, client_id, on_progress, timeout, prompt_id=None, prompt=None) -> tuple[str, dict]:
    deadline = time.monotonic() + timeout
    entry = None
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        if prompt is not None:
            prompt_id = queue_prompt(url, prompt, client_id)
    else:
        prompt_id, entry = asyncio.run(_follow_ws(url, client_id, on_progress, deadline, prompt_id, prompt))
    while entry is None and time.monotonic() < deadline:  # no aiohttp, or the socket closed: poll
        entry = _finished(url, prompt_id)
        if entry is None:
            time.sleep(0.5)
    if entry is None:
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
    return prompt_id, _check(entry)


def wait(url: str, prompt_id: str, client_id: str, on_progress: Progress | None = None, timeout: float = 600) -> dict:
    """Block until the prompt finishes; return its /history entry. Raises ComfyError on failure, TimeoutError."""
    return _follow(url, client_id, on_progress, timeout, prompt_id=prompt_id)[1]


def run_prompt(url: str, prompt: dict, on_progress: Progress | None = None, timeout: float = 600) -> tuple[str, dict]:
    """queue_prompt + wait, connecting the websocket first so every progress event arrives; (prompt_id, entry)."""
    return _follow(url, uuid.uuid4().hex, on_progress, timeout, prompt=prompt)


def download_outputs(url: str, prompt_id: str, dest_dir: str | Path, types=("output", "temp")) -> list[Path]:
    """Fetch every file (images, gifs, audio, ...) the prompt's nodes reported; returns local paths."""
    entry = get_json(url, f"/history/{prompt_id}")[prompt_id]
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for node_id, out in entry.get("outputs", {}).items():
        for items in out.values():
            for f in items if isinstance(items, list) else []:
                if not (isinstance(f, dict) and "filename" in f and f.get("type", "output") in types):
                    continue
                q = urllib.parse.urlencode({"filename": f["filename"], "subfolder": f.get("subfolder", ""),
                                            "type": f.get("type", "output")})
                target = dest / f["filename"]
                if target in paths:
                    target = dest / f"{node_id}_{f['filename']}"
                target.write_bytes(_request(url, f"/view?{q}", timeout=300))
                paths.append(target)
    return paths


# --- CLI -----------------------------------------------------------------------------------------------
def _parse_value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def _assign(prompt: dict, spec: str, value) -> None:
    key, _, _ = spec.partition("=")
    node_id, _, name = key.partition(".")
    if node_id not in prompt or not name:
        raise SystemExit(f"bad --set/--upload {spec!r}: expected NODE_ID.input=value with NODE_ID in the workflow "
                         f"(ids: {', '.join(prompt)})")
    prompt[node_id].setdefault("inputs", {})[name] = value


def _print_progress(kind: str, data: dict) -> None:
    if kind == "execution_start":
        print(f"started {data.get('prompt_id')}", file=sys.stderr, flush=True)
    elif kind == "executing" and data.get("node"):
        print(f"executing node {data['node']}", file=sys.stderr, flush=True)
    elif kind == "progress":
        print(f"  node {data.get('node')}: {data.get('value')}/{data.get('max')}", file=sys.stderr, flush=True)
    elif kind == "execution_cached" and data.get("nodes"):
        print(f"cached: {', '.join(map(str, data['nodes']))}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188", help="ComfyUI base URL")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an API-format workflow (UI: Workflow > Export (API))")
    r.add_argument("workflow", type=Path)
    r.add_argument("--set", action="append", default=[], metavar="NODE_ID.input=value",
                   help="override an input; value parsed as JSON if possible, else a string")
    r.add_argument("--upload", action="append", default=[], metavar="NODE_ID.input=path",
                   help="upload a local image and set the input to its server name")
    r.add_argument("--out", type=Path, default=Path("comfy_outputs"), help="where outputs are downloaded")
    r.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args(argv)

    prompt = json.loads(a.workflow.read_text())
    prompt = prompt.get("prompt", prompt)
    if "nodes" in prompt and "links" in prompt:
        raise SystemExit(f"{a.workflow} is a UI-format workflow; export it with 'Export (API)'")
    for spec in a.set:
        _assign(prompt, spec, _parse_value(spec.partition("=")[2]))
    for spec in a.upload:
        _assign(prompt, spec, upload_image(a.url, spec.partition("=")[2]))
    t0 = time.monotonic()
    try:
        pid, _ = run_prompt(a.url, prompt, _print_progress, a.timeout)
        print(f"prompt {pid} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    except ComfyError as e:
        print(e, file=sys.stderr)
        return 1
    for p in download_outputs(a.url, pid, a.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
