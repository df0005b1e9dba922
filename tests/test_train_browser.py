"""COAT Train in the browser, on both frontends: a workflow holding COAT Train, built as a user builds it (nodes
added from the node library with their default widgets), queued again and again with the Run button. The frontend
must not change Train's seed after a queue (its seed is part of the run), so a rerun after a change downstream
succeeds, and more steps continue the same run."""
import json

import pytest

from browser import comfy_page

BUILD = """([runName]) => {
    const g = window.app.graph;
    g.clear();
    const add = (type, x, y) => { const n = window.LiteGraph.createNode(type); n.pos = [x, y]; g.add(n); return n; };
    const set = (n, name, v) => { n.widgets.find(w => w.name === name).value = v; };
    const link = (a, slot, b, input) => a.connect(slot, b, b.findInputSlot(input));
    const content = add('LoadImage', 0, 0), style = add('LoadImage', 0, 420);
    set(content, 'image', 'coat_example_content.png');
    set(style, 'image', 'coat_example_style.png');
    const batch = add('ImageBatch', 360, 0);
    link(content, 0, batch, 'image1');
    link(style, 0, batch, 'image2');
    const train = add('COATTrain', 640, 0);
    link(batch, 0, train, 'images');
    set(train, 'run_name', runName);
    set(train, 'steps', 2);
    set(train, 'batch_size', 2);
    set(train, 'resolution', 32);
    const transfer = add('COATTransfer', 1040, 0);
    link(train, 0, transfer, 'model');
    link(content, 0, transfer, 'content');
    link(style, 0, transfer, 'style');
    link(transfer, 0, add('PreviewImage', 1400, 0), 'images');
    link(train, 1, add('PreviewImage', 1400, 420), 'images');
    window.app.canvas.setDirty(true, true);
}"""


@pytest.fixture(scope="module")
def server(ui_server):
    comfy_page.post_setting(ui_server.url, "Comfy.TutorialCompleted", True)
    comfy_page.post_setting(ui_server.url, "Comfy.VueNodes.Enabled", False)
    return ui_server


def train_widgets(page) -> dict:
    """COAT Train's input widgets (not the frontend's own preview widgets, named $$...)."""
    return page.evaluate("""() => Object.fromEntries(window.app.graph.nodes.find(n => n.type === 'COATTrain')
                                   .widgets.filter(w => !w.name.startsWith('$$') && typeof w.value !== 'object')
                                   .map(w => [w.name, w.value]))""")


def set_widget(page, node_type: str, name: str, value) -> None:
    page.evaluate("""([type, name, value]) => {
        const n = window.app.graph.nodes.find(n => n.type === type);
        const w = n.widgets.find(w => w.name === name);
        w.value = value;
        w.callback?.(value);
    }""", [node_type, name, value])


def test_train_workflow_queued_again(server, browser):
    run_name = f"browser_rerun_{server.frontend}"
    ui = comfy_page.ComfyPage(browser, server.url)
    try:
        ui.open("coat.matchPanel")
        assert ui.frontend_version() == server.frontend_version
        ui.page.evaluate(BUILD, [run_name])
        before = train_widgets(ui.page)
        assert before["seed"] == 0 and before["steps"] == 2, before

        ui.queue_and_wait(timeout_ms=180_000, press_run=True)          # 1: a new run of 2 steps
        assert train_widgets(ui.page) == before, "the frontend changed COAT Train's widgets after a queue"

        set_widget(ui.page, "COATTransfer", "style_strength", 0.5)      # 2: a change downstream only
        ui.queue_and_wait(timeout_ms=180_000, press_run=True)
        assert train_widgets(ui.page) == before

        set_widget(ui.page, "COATTrain", "steps", 3)                     # 3: one more step continues the run
        ui.queue_and_wait(timeout_ms=180_000, press_run=True)
        losses = (server.root / "output" / "coat_runs" / run_name / "losses.jsonl").read_text().splitlines()
        assert len(losses) == 3, losses
        assert len({json.dumps(json.loads(line), sort_keys=True) for line in losses}) == 3
        assert not ui.errors("coat"), ui.errors("coat")
    finally:
        ui.close()
