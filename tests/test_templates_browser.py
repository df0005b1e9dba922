"""The pack's templates as a new user meets them, in headless Chromium on both frontends (newest and the one
ComfyUI 0.3.75 pins): open the Templates dialog from the sidebar, pick comfyui-coat under Extensions, click the
COAT Transfer card, press Run with nothing uploaded or copied by hand, and see the match panel fill."""
import pytest

import comfy_harness
from browser import comfy_page

PANEL = ".coat-match-panel"
IMAGES = {"coat_example_content.png": "content.png", "coat_example_style.png": "style.png"}
SAMPLES = comfy_harness.REPO / "examples" / "images"


@pytest.fixture(scope="module")
def server(ui_server):
    comfy_page.post_setting(ui_server.url, "Comfy.TutorialCompleted", True)  # no first-run template dialog
    comfy_page.post_setting(ui_server.url, "Comfy.VueNodes.Enabled", False)
    return ui_server


def test_template_runs_on_the_first_try(server, browser):
    # The pack put its sample images into the (fresh) input folder when it loaded; nobody uploaded anything.
    for name, sample in IMAGES.items():
        assert (server.root / "input" / name).read_bytes() == (SAMPLES / sample).read_bytes()
    ui = comfy_page.ComfyPage(browser, server.url)
    try:
        ui.open("coat.matchPanel")
        assert ui.frontend_version() == server.frontend_version
        ui.page.locator('button[aria-label="Templates"]').first.click()
        ui.page.get_by_text("comfyui-coat", exact=True).first.click()
        card = ui.page.locator('[data-testid="template-workflow-coat_transfer"]')
        card.wait_for(state="visible", timeout=20_000)
        # Its card shows the thumbnail beside the template (example_workflows/coat_transfer.jpg, 528 x 176).
        ui.page.wait_for_function("""() => [...document.querySelectorAll(
                '[data-testid="template-workflow-coat_transfer"] img')].some(i =>
                i.complete && i.naturalWidth === 528 && i.naturalHeight === 176)""", timeout=20_000)
        card.click()
        ui.page.wait_for_function("""() => window.app.graph.nodes.some(n => n.type === 'COATTransfer')
                                     && !document.querySelector('[data-testid="template-workflows-content"]')""",
                                  timeout=30_000)
        loaded = ui.page.evaluate("""() => window.app.graph.nodes.filter(n => n.type === 'LoadImage')
                                         .map(n => n.widgets.find(w => w.name === 'image').value).sort()""")
        assert loaded == sorted(IMAGES), loaded

        ui.queue_and_wait(timeout_ms=180_000, press_run=True)
        ui.page.wait_for_function(f"() => document.querySelector('{PANEL}')?.dataset.state === 'ready'",
                                  timeout=60_000)
        assert int(ui.page.evaluate(f"() => document.querySelector('{PANEL}').dataset.matchCount")) > 0
        assert not ui.errors("coat"), ui.errors("coat")
    finally:
        ui.close()
