#!/usr/bin/env python3
"""Make docs/panel.png: the COAT Transfer template run in the real UI, with its match panel and result.

Starts ComfyUI (``$COMFYUI_DIR`` or .comfyui/ComfyUI, ``--cpu``) with the pack and the newest frontend in a temporary
folder, opens it in headless Chromium, loads the COAT Transfer template from the Templates dialog as a user does
(example_workflows/coat_transfer.json: the pack's sample images and the bundled checkpoints/coat_faces.safetensors),
presses Run, waits until the match panel shows matches and Save Image shows the result, frames the loaded images,
the panel and the result, writes the PNG and stops the server::

    .venv/bin/python tools/panel_screenshot.py                 # -> docs/panel.png
    .venv/bin/python tools/panel_screenshot.py --out /tmp/p.png

The server, the browser and the page come from the test helpers (tests/comfy_harness.py, tests/browser/).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import comfy_harness  # noqa: E402
import pytest  # noqa: E402  (the helpers report failures with pytest.fail)
from browser import comfy_page  # noqa: E402

TEMPLATE = "coat_transfer"
CHECKPOINT = "coat_faces.safetensors"
PANEL = ".coat-match-panel"
FRAMED = ("LoadImage", "COATTransfer", "SaveImage", "MaskPreview")  # everything but the model loader
VIEWPORT = {"width": 1600, "height": 1200}


def log(msg: str) -> None:
    print(f"[panel_screenshot] {msg}", file=sys.stderr, flush=True)


def open_template(ui: comfy_page.ComfyPage, name: str) -> None:
    """Templates (sidebar) -> comfyui-coat -> the template's card, as in tests/test_templates_browser.py."""
    ui.page.locator('button[aria-label="Templates"]').first.click()
    ui.page.get_by_text("comfyui-coat", exact=True).first.click()
    card = ui.page.locator(f'[data-testid="template-workflow-{name}"]')
    card.wait_for(state="visible", timeout=60_000)
    card.click()
    ui.page.wait_for_function("""() => window.app.graph.nodes.some(n => n.type === 'COATTransfer')
                                 && !document.querySelector('[data-testid="template-workflows-content"]')""",
                              timeout=60_000)


def frame(ui: comfy_page.ComfyPage, types, margin: float = 8, max_scale: float = 1.0) -> dict:
    """Zoom and pan so the nodes of ``types`` (with their titles and source badges) fit the canvas right of the
    sidebar and below the tabs and action bar; returns their client rectangle plus ``margin`` as a screenshot clip."""
    clip = ui.page.evaluate("""([types, margin, maxScale]) => {
        const app = window.app, ds = app.canvas.ds;
        const title = window.LiteGraph.NODE_TITLE_HEIGHT + 24;  // + the source badge above it
        const nodes = app.graph.nodes.filter(n => types.includes(n.type));
        const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
        const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
        const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
        const c = app.canvas.canvas.getBoundingClientRect();
        const side = document.querySelector('.side-tool-bar-container')?.getBoundingClientRect();
        const left = Math.max(c.left, side ? side.right : 0) + margin;
        const top = c.top + 90 + margin;  // below the workflow tabs and the floating action bar
        const w = c.right - margin - left, h = c.bottom - margin - top;
        const s = Math.min(maxScale, w / (x1 - x0), h / (y1 - y0));
        ds.scale = s;
        ds.offset = [(left - c.left) / s - x0, (top - c.top) / s - y0];
        app.canvas.setDirty(true, true);
        return {x: left - margin, y: top - margin,
                width: (x1 - x0) * s + 2 * margin, height: (y1 - y0) * s + 2 * margin};
    }""", [list(types), margin, max_scale])
    ui.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    ui.page.wait_for_timeout(500)
    return clip


def shoot(browser, server, out: Path) -> None:
    comfy_page.post_setting(server.url, "Comfy.TutorialCompleted", True)  # no first-run template dialog
    comfy_page.post_setting(server.url, "Comfy.VueNodes.Enabled", False)  # the classic canvas
    comfy_page.post_setting(server.url, "Comfy.Minimap.Visible", False)   # it would cover the result
    ui = comfy_page.ComfyPage(browser, server.url)
    try:
        ui.page.set_viewport_size(VIEWPORT)
        ui.open("coat.matchPanel", timeout_ms=300_000)
        open_template(ui, TEMPLATE)
        ckpt = ui.page.evaluate("""() => {
            const w = window.app.graph.nodes.find(n => n.type === 'COATModelLoader').widgets[0];
            return {value: w.value, options: w.options.values};
        }""")
        if ckpt["value"] != CHECKPOINT or CHECKPOINT not in ckpt["options"]:
            raise SystemExit(f"the template's COAT Model Loader has {ckpt['value']!r}; the server offers "
                             f"{ckpt['options']} (expected the bundled checkpoints/{CHECKPOINT})")
        log("pressing Run")
        ui.queue_and_wait(timeout_ms=600_000, press_run=True)
        ui.page.wait_for_function(f"""() => {{
            const p = document.querySelector('{PANEL}');
            const save = window.app.graph.nodes.find(n => n.type === 'SaveImage');
            return p?.dataset.state === 'ready' && +p.dataset.matchCount > 0
                && save.imgs?.length > 0 && save.imgs.every(i => i.complete && i.naturalWidth > 0);
        }}""", timeout=120_000)
        count = ui.page.evaluate("sel => document.querySelector(sel).dataset.matchCount", PANEL)
        log(f"the panel draws {count} matches")
        clip = frame(ui, FRAMED)
        out.parent.mkdir(parents=True, exist_ok=True)
        ui.page.screenshot(path=str(out), clip=clip)
        errors = ui.errors("coat")
        if errors:
            log("console errors that mention coat:\n  " + "\n  ".join(errors))
    finally:
        ui.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "panel.png", help="PNG to write (docs/panel.png)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server to start (600)")
    a = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    try:
        with tempfile.TemporaryDirectory(prefix="coat_panel_") as root:
            log("starting ComfyUI")
            server = comfy_harness.start_server(Path(root), timeout=a.timeout,
                                                frontend=comfy_harness.frontend_dir("newest"))
            try:
                log(f"ComfyUI at {server.url} (log {server.log_path})")
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=comfy_page.chromium_path(), headless=True,
                                                args=comfy_page.CHROMIUM_FLAGS)
                    try:
                        shoot(browser, server, a.out)
                    finally:
                        browser.close()
            except BaseException:
                log(f"ComfyUI log tail:\n{comfy_harness.log_tail(server.log_path)}")
                raise
            finally:
                server.stop()
    except pytest.fail.Exception as e:  # the helpers' failures, without a pytest traceback
        raise SystemExit(f"panel_screenshot: {e}") from None
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
