"""The match panel (web/coat_panel.js) in a real browser: headless Debian Chromium through Playwright, against the
real ComfyUI server with the newest frontend (1.58.1) and with the one ComfyUI 0.3.75 pins (1.32.9), each once in the
classic canvas mode and once with Nodes 2.0 (Vue nodes). Screenshots go to artifacts/panel_<mode>.png (+ _panel.png,
the panel alone) for the newest frontend, artifacts/panel_<mode>_pinned.png for the pinned one."""
import json
import urllib.request

import pytest

import comfy_harness
from browser import comfy_page, panel_setup

ARTIFACTS = comfy_harness.REPO / "artifacts"
NODE = "COATTransfer"
PANEL = ".coat-match-panel"
MAX_LINES = 400  # web/coat_panel.js


@pytest.fixture(scope="module")
def server(ui_server):
    panel_setup.prepare(ui_server)
    comfy_page.post_setting(ui_server.url, "Comfy.TutorialCompleted", True)  # no first-run template dialog
    yield ui_server
    comfy_page.post_setting(ui_server.url, "Comfy.VueNodes.Enabled", False)


def panel_attrs(page) -> dict:
    return page.evaluate("sel => ({...document.querySelector(sel).dataset})", PANEL)


def wait_painted(page) -> None:
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def canvas_stats(page) -> dict:
    """Share of canvas pixels that differ from the background (its corner pixel), and a checksum."""
    wait_painted(page)
    return page.evaluate("""sel => {
        const c = document.querySelector(sel + ' canvas.coat-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const bg = [d[0], d[1], d[2]];
        let other = 0, sum = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (Math.abs(d[i] - bg[0]) + Math.abs(d[i + 1] - bg[1]) + Math.abs(d[i + 2] - bg[2]) > 24) other++;
            sum = (sum * 31 + d[i] + 3 * d[i + 1] + 7 * d[i + 2]) % 1000000007;
        }
        return {share: other / (d.length / 4), sum, width: c.width, height: c.height};
    }""", PANEL)


def set_threshold(page, value: float) -> int:
    page.evaluate("""([sel, v]) => {
        const s = document.querySelector(sel + ' input.coat-threshold');
        s.value = String(v);
        s.dispatchEvent(new Event('input', {bubbles: true}));
    }""", [PANEL, value])
    return int(panel_attrs(page)["matchCount"])


def client_point(page, rect_attr: str, uv) -> tuple[float, float]:
    """Client (page) coordinates of uv in the content or style image of the panel's canvas."""
    box = page.evaluate("""sel => {
        const c = document.querySelector(sel + ' canvas.coat-canvas');
        const b = c.getBoundingClientRect();
        return {left: b.left, top: b.top, sx: b.width / c.clientWidth, sy: b.height / c.clientHeight};
    }""", PANEL)
    x, y, w, h = (float(v) for v in panel_attrs(page)[rect_attr].split(","))
    return box["left"] + (x + uv[0] * w) * box["sx"], box["top"] + (y + uv[1] * h) * box["sy"]


def hit_is_panel(page, x, y) -> bool:
    return page.evaluate("([x, y, sel]) => !!document.elementFromPoint(x, y)?.closest(sel)", [x, y, PANEL])


def fetch_matches(server, match_id: str) -> dict:
    with urllib.request.urlopen(f"{server.url}/api/coat/matches/{match_id}", timeout=30) as r:
        return json.load(r)


def node_state(page) -> dict:
    return page.evaluate("""type => {
        const n = window.app.graph.nodes.find(n => n.type === type);
        return {size: [...n.size], match: n.properties.coat_match || null};
    }""", NODE)


@pytest.mark.parametrize("mode", ["canvas", "nodes2"])
def test_match_panel(server, browser, mode):
    vue = mode == "nodes2"
    comfy_page.post_setting(server.url, "Comfy.VueNodes.Enabled", vue)
    ui = comfy_page.ComfyPage(browser, server.url)
    try:
        ui.open("coat.matchPanel")
        assert ui.frontend_version() == server.frontend_version
        assert ui.page.evaluate("() => window.app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is vue
        ui.load_workflow(panel_setup.ui_workflow(seed=1000 + vue))
        ui.focus_node(NODE)
        assert ui.page.locator(PANEL).count() == 1, "the COAT Transfer node has no match panel"
        if vue:
            assert ui.page.locator(f"[data-node-id] {PANEL}").count() == 1, "the panel is not inside a Vue node"
        assert panel_attrs(ui.page)["state"] == "empty"
        # COAT Align gets the panel too.
        assert ui.page.evaluate("""() => {
            const n = window.LiteGraph.createNode('COATAlign');
            return n.widgets.filter(w => w.name === 'coat_match_panel' && w.element?.classList.contains('coat-match-panel')).length;
        }""") == 1

        ui.queue_and_wait()
        ui.page.wait_for_function(f"() => document.querySelector('{PANEL}')?.dataset.state === 'ready'",
                                  timeout=60_000)
        attrs = panel_attrs(ui.page)
        count = int(attrs["matchCount"])
        assert count > 0, attrs
        ui.focus_node(NODE)

        # What the panel draws is what the route serves: count at the default threshold (0.5) per scale.
        match_id = node_state(ui.page)["match"]["id"]
        data = fetch_matches(server, match_id)
        level = next(lv for lv in data["items"][0]["levels"] if str(lv["scale"]) == attrs["scale"])
        conf = level["confidence"]
        expect = lambda t: min(MAX_LINES, sum(c >= t for c in conf))  # noqa: E731
        assert count == expect(0.5)

        stats = canvas_stats(ui.page)
        assert stats["width"] > 100 and stats["height"] > 100, stats
        assert stats["share"] > 0.3, f"the canvas is mostly background: {stats}"

        # Hover the most confident drawn match on the content side: its confidence shows.
        best = max(range(len(conf)), key=conf.__getitem__)
        cu = level["content_uv"][2 * best: 2 * best + 2]
        x, y = client_point(ui.page, "contentRect", cu)
        assert hit_is_panel(ui.page, x, y), "something covers the panel's canvas"
        ui.page.mouse.move(x, y)
        ui.page.wait_for_function(f"() => document.querySelector('{PANEL}').dataset.hoverConfidence !== ''",
                                  timeout=5000)
        assert panel_attrs(ui.page)["hoverConfidence"] == f"{conf[best]:.3f}"
        assert "confidence" in ui.page.locator(f"{PANEL} .coat-info").inner_text()
        # ... and on the style side: the content points that map there (the best one among them).
        su = level["style_uv"][2 * best: 2 * best + 2]
        ui.page.mouse.move(*client_point(ui.page, "styleRect", su))
        assert "map here" in ui.page.locator(f"{PANEL} .coat-info").inner_text()
        assert float(panel_attrs(ui.page)["hoverConfidence"]) >= conf[best] - 1e-9
        ARTIFACTS.mkdir(exist_ok=True)
        suffix = "" if server.frontend == "newest" else f"_{server.frontend}"
        ui.page.screenshot(path=str(ARTIFACTS / f"panel_{mode}{suffix}.png"))
        ui.page.locator(PANEL).screenshot(path=str(ARTIFACTS / f"panel_{mode}{suffix}_panel.png"))
        ui.page.mouse.move(5, 5)

        # Raising the threshold lowers the match count (exactly as the data says).
        counts = {t: set_threshold(ui.page, t) for t in (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)}
        assert counts == {t: expect(t) for t in counts}
        assert counts[1.0] < counts[0.5] == count, counts
        assert all(a >= b for a, b in zip(list(counts.values()), list(counts.values())[1:])), counts
        set_threshold(ui.page, 0.5)

        # Heatmap on and lines off change the drawing; lines off keeps the matches (as dots).
        before = canvas_stats(ui.page)["sum"]
        ui.page.locator(f"{PANEL} input.coat-heatmap").click()
        with_heat = canvas_stats(ui.page)["sum"]
        assert with_heat != before
        ui.page.locator(f"{PANEL} input.coat-lines").click()
        assert canvas_stats(ui.page)["sum"] != with_heat
        assert int(panel_attrs(ui.page)["matchCount"]) == count
        ui.page.locator(f"{PANEL} input.coat-lines").click()
        ui.page.locator(f"{PANEL} input.coat-heatmap").click()

        # Another scale from the selector.
        other = next(s for s in data["scales"] if str(s) != attrs["scale"])
        ui.page.locator(f"{PANEL} select.coat-scale").select_option(str(other))
        assert panel_attrs(ui.page)["scale"] == str(other)
        ui.page.locator(f"{PANEL} select.coat-scale").select_option(attrs["scale"])

        # Resizes with the node (a Vue node by its corner handle, as a user drags it: frontend 1.32.9 does not pass
        # LiteGraph's setSize on to Vue nodes).
        width = ui.page.evaluate(f"() => document.querySelector('{PANEL} canvas').clientWidth")
        if vue:
            node_id = ui.page.evaluate("type => window.app.graph.nodes.find(n => n.type === type).id", NODE)
            box = ui.page.locator(f'[data-node-id="{node_id}"] .cursor-se-resize').first.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            ui.page.mouse.move(x, y)
            ui.page.mouse.down()
            ui.page.mouse.move(x + 200, y + 100, steps=8)
            ui.page.mouse.up()
        else:
            ui.page.evaluate("""type => {
                const n = window.app.graph.nodes.find(n => n.type === type);
                n.setSize([n.size[0] + 200, n.size[1] + 100]);
                n.setDirtyCanvas(true, true);
            }""", NODE)
        ui.page.wait_for_function(f"w => document.querySelector('{PANEL} canvas').clientWidth > w + 100",
                                  arg=width, timeout=5000)
        assert canvas_stats(ui.page)["share"] > 0.3

        # The last result comes back after a reload of the page (workflow restored from the browser's storage).
        ui.page.reload()
        ui.open("coat.matchPanel")
        ui.page.wait_for_function(f"() => document.querySelector('{PANEL}')?.dataset.state === 'ready'",
                                  timeout=30_000)
        assert node_state(ui.page)["match"]["id"] == match_id
        assert int(panel_attrs(ui.page)["matchCount"]) == count
        ui.focus_node(NODE)
        assert canvas_stats(ui.page)["share"] > 0.3

        # The saved workflow carries the result: loading it shows it; a result the server forgot says so.
        saved = ui.page.evaluate("() => window.app.graph.serialize()")
        node, = [n for n in saved["nodes"] if n["type"] == NODE]
        assert node["properties"]["coat_match"]["id"] == match_id
        assert len(node["widgets_values"]) == 11  # its eleven widgets (flow_affine the last): the panel adds none
        ui.page.evaluate("() => window.app.graph.clear()")
        ui.load_workflow(saved)
        ui.page.wait_for_function(f"() => document.querySelector('{PANEL}')?.dataset.state === 'ready'",
                                  timeout=30_000)
        assert int(panel_attrs(ui.page)["matchCount"]) == count
        info = ui.page.locator(f"{PANEL} .coat-info")
        assert "mirror" not in info.inner_text()  # the test model does not search the style's mirror image

        # A pair that took another pose of the style says which (the route's answer rewritten as such a run serves
        # it): its mirror image, turned, or both, or re-posed by its own matches.
        for pose, says in (({"mirrored": True}, "matched the style's mirror image ("),
                           ({"rotation": -20.0}, "matched the style turned 20\u00b0 anticlockwise ("),
                           ({"mirrored": True, "rotation": 15.0},
                            "the style's mirror image turned 15\u00b0 clockwise ("),
                           ({"fitted": True, "zoom": 1.25, "turn": -8.0, "shift": [0.1, 0.0]},
                            "the style re-posed by its own matches (shown 1.25x, turned 8\u00b0 anticlockwise, "
                            "moved) ("),
                           ({"mirrored": True, "fitted": True, "zoom": 0.8, "turn": 0.0},
                            "the style's mirror image re-posed by its own matches (shown 0.80x) (")):
            def as_posed(pose):
                def handle(route):
                    body = json.loads(route.fetch().text())
                    for item in body["items"]:
                        item.update(pose)
                    route.fulfill(json=body)
                return handle

            ui.page.route("**/coat/matches/**", as_posed(pose))
            ui.page.evaluate("() => window.app.graph.clear()")
            ui.load_workflow(saved)
            ui.page.wait_for_function(f"() => document.querySelector('{PANEL}')?.dataset.state === 'ready'",
                                      timeout=30_000)
            assert says in info.inner_text()
            assert int(panel_attrs(ui.page)["matchCount"]) == count
            ui.page.unroute("**/coat/matches/**")
        node["properties"]["coat_match"]["id"] = "0123456789abcdef"
        ui.load_workflow(saved)
        ui.page.wait_for_function(f"() => document.querySelector('{PANEL}')?.dataset.state === 'error'",
                                  timeout=30_000)
        assert panel_attrs(ui.page)["matchCount"] == "0"
        assert "run the node again" in ui.page.locator(f"{PANEL} .coat-info").inner_text()

        assert not ui.errors("coat"), ui.errors("coat")
    finally:
        ui.close()
