"""Drive the ComfyUI web UI in headless Chromium (Playwright's sync API, Debian's ``/usr/bin/chromium``).

No browser is downloaded: :func:`chromium_path` finds the system Chromium and, when it is missing and we run as
root, installs Debian's package with apt (COMFYUI_NOTES 1f; ``playwright install`` cannot download here).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request

import pytest

# COMFYUI_NOTES 1f (+ /dev/shm is small in containers).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
VIEWPORT = {"width": 1600, "height": 1000}

# Console noise of frontend 1.58.1 against the 0.3.75 backend, offline (COMFYUI_NOTES 1f + the Jobs API that
# this backend lacks). Anything else that mentions the pack counts as an error of ours.
NOISE = ("Jobs API", "Failed to fetch queue", "Failed to load resource", "api.comfy.org", "user.css",
         "templates", "ERR_NAME_NOT_RESOLVED")


def chromium_path() -> str:
    """Path of the system Chromium; installs Debian's ``chromium`` with apt when missing and running as root."""
    for path in (os.environ.get("COAT_CHROMIUM"), *CANDIDATES, shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    if os.geteuid() != 0:
        pytest.fail("Chromium is missing: install it with `apt-get install -y chromium` (as root), or point "
                    "COAT_CHROMIUM at a Chromium binary", pytrace=False)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}",
                        pytrace=False)
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    pytest.fail("apt installed chromium but no binary was found at " + ", ".join(CANDIDATES), pytrace=False)


def post_setting(url: str, key: str, value) -> None:
    """Store a frontend setting for the server's (single) user, as the settings dialog does."""
    req = urllib.request.Request(f"{url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


class ComfyPage:
    """One page of the ComfyUI UI; collects page errors and console errors for :meth:`errors`."""

    def __init__(self, browser, url: str):
        self.url = url
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def close(self) -> None:
        self.context.close()

    def errors(self, needle: str) -> list[str]:
        """Console / page errors that mention ``needle`` (minus the known offline noise)."""
        return [m for m in self.console if needle in m and not any(n in m for n in NOISE)]

    def open(self, extension: str, timeout_ms: int = 90_000) -> None:
        """Load the UI and wait for the graph and ``extension`` to be registered."""
        self.page.goto(self.url)
        self.page.wait_for_function(
            "name => window.app && window.app.graph && window.app.canvas"
            " && window.app.extensions?.some(e => e.name === name)", arg=extension, timeout=timeout_ms)

    def load_workflow(self, workflow: dict) -> None:
        self.page.evaluate("wf => window.app.loadGraphData(wf)", workflow)

    def frontend_version(self) -> str:
        return self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")

    def queue_and_wait(self, timeout_ms: int = 240_000, press_run: bool = False) -> str:
        """Queue the current graph and wait for ``execution_success``; returns the prompt id.

        ``press_run``: click the Run button as a user does (else ``app.queuePrompt``, what the button calls)."""
        self.page.evaluate("""() => {
            const api = window.comfyAPI.api.api;
            const state = { done: null, prompt: null };
            window.__coatTest = state;
            api.addEventListener('execution_start', e => { if (window.__coatTest === state) state.prompt = e.detail.prompt_id; });
            api.addEventListener('execution_success', e => { if (e.detail.prompt_id === state.prompt) state.done = 'success'; });
            api.addEventListener('execution_error', e => { if (window.__coatTest === state) state.done = 'error: ' + JSON.stringify(e.detail).slice(0, 2000); });
        }""")
        if press_run:
            self.run_button().click()
        else:
            self.page.evaluate("() => window.app.queuePrompt(0, 1)")
        self.page.wait_for_function("() => window.__coatTest.done", timeout=timeout_ms)
        done = self.page.evaluate("() => window.__coatTest.done")
        assert done == "success", f"the workflow failed in the UI: {done}"
        return self.page.evaluate("() => window.__coatTest.prompt")

    def run_button(self):
        """The Run (queue) button of the action bar, in frontend 1.32.9 and 1.58.1 alike."""
        button = self.page.get_by_role("button", name="Run", exact=True)
        button.first.wait_for(state="visible", timeout=10_000)
        return button.first

    def focus_node(self, node_type: str, left: float = 160, top: float = 140) -> None:
        """Zoom 1 with the first node of ``node_type`` near the top-left corner of the canvas."""
        self.page.evaluate("""([type, left, top]) => {
            const n = window.app.graph.nodes.find(n => n.type === type);
            const ds = window.app.canvas.ds;
            ds.scale = 1;
            ds.offset = [left - n.pos[0], top - n.pos[1]];
            window.app.canvas.setDirty(true, true);
        }""", [node_type, left, top])
        self.page.wait_for_timeout(300)
