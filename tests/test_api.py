"""The COAT nodes through a real ComfyUI server: the shipped API workflows, outputs via /history and /view, node
errors, and the UI-format twins. A tiny random checkpoint goes into the server's extra `coat` model folder."""
import copy
import io
import json
import sys
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image

import coat_model
import comfy_harness

sys.path.insert(0, str(comfy_harness.REPO / "tools"))
sys.path.insert(0, str(comfy_harness.REPO / "examples"))
import api_to_ui  # noqa: E402
import comfy_client  # noqa: E402

WORKFLOWS = comfy_harness.REPO / "examples" / "workflows"  # API format
TEMPLATES = comfy_harness.REPO / "example_workflows"       # their UI twins, the pack's templates
SAMPLES = comfy_harness.REPO / "examples" / "images"
CKPT = "coat_api_test.safetensors"


def get(server, path):
    with urllib.request.urlopen(server.url + path, timeout=60) as r:
        return json.load(r)


def view(server, ref) -> Image.Image:
    q = urllib.parse.urlencode({k: ref[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{q}", timeout=60) as r:
        return Image.open(io.BytesIO(r.read()))


@pytest.fixture(scope="module")
def server(comfy_server):
    coat_model.COAT(coat_model.COATConfig.tiny()).save(comfy_server.root / "models" / "coat" / CKPT)
    return comfy_server  # the workflows' images: copied into the input folder when the pack loaded


def workflow(name: str) -> dict:
    prompt = json.loads((WORKFLOWS / name).read_text())
    for node in prompt.values():
        if node["class_type"] == "COATModelLoader":
            node["inputs"]["ckpt_name"] = CKPT
    return prompt


def run(server, prompt):
    pid, entry = comfy_client.run_prompt(server.url, prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    return entry["outputs"]


def test_nodes_and_model_folder_are_served(server):
    info = get(server, "/object_info/COATTransfer")["COATTransfer"]
    assert info["category"] == "COAT" and info["output"] == ["IMAGE", "MASK"]
    assert CKPT in get(server, "/models/coat")  # written after the server started: lists are live
    loader = get(server, "/object_info/COATModelLoader")["COATModelLoader"]
    assert CKPT in loader["input"]["required"]["ckpt_name"][1]["options"]


def test_transfer_workflow(server):
    outputs = run(server, workflow("coat_transfer_api.json"))
    saved, = outputs["5"]["images"]
    assert saved["type"] == "output" and saved["subfolder"] == "coat"
    assert view(server, saved).size == Image.open(SAMPLES / "content.png").size
    mask, = outputs["6"]["images"]
    assert view(server, mask).size == Image.open(SAMPLES / "content.png").size
    entry, = outputs["4"]["coat_matches"]
    assert entry["scales"] == [8, 4, 2] and len(entry["id"]) == 16
    assert view(server, entry["content"][0]).size == view(server, entry["style"][0]).size


def test_chain_workflow(server):
    outputs = run(server, workflow("coat_chain_api.json"))
    saved, = outputs["8"]["images"]
    assert view(server, saved).size == (256, 256)


def test_modular_workflow(server):
    outputs = run(server, workflow("coat_modular_api.json"))
    assert view(server, outputs["8"]["images"][0]).size == Image.open(SAMPLES / "content.png").size
    preview = view(server, outputs["9"]["images"][0])
    assert preview.size == (384 * 2, 384)  # content | style, both square
    assert outputs["6"]["coat_matches"][0]["batch"] == 1


def test_bad_prompts_then_a_good_one(server):
    missing = workflow("coat_transfer_api.json")
    missing["3"]["inputs"]["ckpt_name"] = "missing.safetensors"
    with pytest.raises(comfy_client.ComfyError, match=r"node 3 \(COATModelLoader\).*missing.safetensors.*"
                                                      r"Searched the 'coat' model folders"):
        comfy_client.queue_prompt(server.url, missing, "coat-api-test")

    mismatched = workflow("coat_transfer_api.json")  # 2 contents with 3 styles fails inside COAT Transfer
    mismatched["7"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}}
    mismatched["8"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 3}}
    mismatched["4"]["inputs"].update(content=["7", 0], style=["8", 0])
    with pytest.raises(comfy_client.ComfyError, match=r"node 4 \(COATTransfer\).*2 content image.*3 style image"):
        comfy_client.run_prompt(server.url, mismatched, timeout=300)

    good = workflow("coat_transfer_api.json")
    good["4"]["inputs"]["style_strength"] = 0.5  # not cached
    assert run(server, good)["5"]["images"]


@pytest.mark.parametrize("name", ["coat_transfer", "coat_chain", "coat_modular"])
def test_ui_workflows_are_the_api_twins(server, name):
    """The drag-and-drop files are what examples/api_to_ui.py makes from the API files with today's nodes."""
    info = get(server, "/object_info")
    api = json.loads((WORKFLOWS / f"{name}_api.json").read_text())
    assert json.loads((TEMPLATES / f"{name}.json").read_text()) == api_to_ui.to_ui(copy.deepcopy(api), info), (
        f"regenerate: python examples/api_to_ui.py --url <server> examples/workflows/{name}_api.json")


def test_templates_are_listed_and_served_with_thumbnails(server):
    """ComfyUI's Templates browser lists example_workflows/ (GET /workflow_templates) and fetches each template and
    its .jpg card from /api/workflow_templates/<pack>/; every template has its API twin."""
    listed = get(server, "/workflow_templates")
    pack = "comfyui-coat"  # the folder name under custom_nodes/ (scripts/setup_env.py links the repo there)
    names = sorted(p.stem for p in TEMPLATES.glob("*.json"))
    assert sorted(listed[pack]) == names == ["coat_chain", "coat_modular", "coat_transfer"]
    for name in names:
        assert (WORKFLOWS / f"{name}_api.json").is_file()
        assert get(server, f"/api/workflow_templates/{pack}/{name}.json") == json.loads(
            (TEMPLATES / f"{name}.json").read_text())
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{pack}/{name}.jpg", timeout=30) as r:
            assert Image.open(io.BytesIO(r.read())).format == "JPEG"


def post(server, path, body: dict) -> int:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        return r.status


def loaded_coat_models(server) -> list[str]:
    return [m["name"] for m in get(server, "/coat/models")["loaded"]]


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_free_unloads_coat_models_and_the_next_prompt_loads_them_again(server):
    """COAT models go through comfy.model_management: a run leaves the model loaded (on its load device, the CPU
    here), POST /free {"unload_models": true} (the "Unload Models" button) releases it, the next run loads it."""
    prompt = workflow("coat_transfer_api.json")
    prompt["4"]["inputs"]["style_strength"] = 0.75  # not answered from ComfyUI's cache
    run(server, prompt)
    assert CKPT in loaded_coat_models(server)
    model, = [m for m in get(server, "/coat/models")["loaded"] if m["name"] == CKPT]
    assert model["device"] == "cpu" and model["bytes"] > 0 and model["loaded_bytes"] == model["bytes"]
    assert post(server, "/free", {"unload_models": True}) == 200
    wait_for(lambda: loaded_coat_models(server) == [])
    prompt["4"]["inputs"]["style_strength"] = 0.7   # the loader's output is cached: its model was offloaded
    assert run(server, prompt)["5"]["images"]
    assert CKPT in loaded_coat_models(server)


def train_prompt(steps=2, preview="PreviewImage") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "coat_rerun.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}},
        "3": {"class_type": "COATTrain", "inputs": {"images": ["2", 0], "folder": "", "run_name": "api_rerun",
                                                     "steps": steps, "batch_size": 2, "learning_rate": 0.002,
                                                     "resolution": 32, "seed": 0, "restart": False}},
        "4": {"class_type": preview, "inputs": {"images": ["3", 1]}},
    }


def test_train_reruns_with_unchanged_settings(server, tmp_path):
    """The frontend must not randomise COAT Train's seed (control_after_generate off), and queueing the same
    workflow again, after a downstream change or with ComfyUI's cache emptied by /free, reuses the run; more
    steps continue it."""
    (tmp_path / "coat_rerun.png").write_bytes((SAMPLES / "content.png").read_bytes())
    comfy_client.upload_image(server.url, tmp_path / "coat_rerun.png")
    seed = get(server, "/object_info/COATTrain")["COATTrain"]["input"]["required"]["seed"]
    assert seed[0] == "INT" and seed[1]["control_after_generate"] is False
    losses = server.root / "output" / "coat_runs" / "api_rerun" / "losses.jsonl"

    def steps_logged():
        return len([line for line in losses.read_text().splitlines() if line])

    first = run(server, train_prompt())["4"]["images"]
    assert steps_logged() == 2
    changed = train_prompt()
    changed["5"] = {"class_type": "ImageInvert", "inputs": {"image": ["3", 1]}}   # a downstream change
    changed["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    assert run(server, changed)["6"]["images"]
    assert post(server, "/free", {"unload_models": True, "free_memory": True}) == 200   # empties the cache too
    time.sleep(1.0)                                   # the idle prompt worker handles the flags at once
    _, entry = comfy_client.run_prompt(server.url, train_prompt(), timeout=300)
    cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and "3" not in cached[0], "COAT Train did not run again"   # it ran, with the same run...
    again = entry["outputs"]["4"]["images"]
    assert steps_logged() == 2                                                # ...and trained nothing
    assert view(server, again[0]).tobytes() == view(server, first[0]).tobytes()
    assert run(server, train_prompt(steps=3))["4"]["images"]
    assert steps_logged() == 3


def test_help_pages_are_served_where_the_frontend_looks(server):
    """Frontend 1.58.1 fetches /extensions/<pack folder>/docs/<NodeClass>.md for a custom node's help."""
    with urllib.request.urlopen(server.url + "/extensions/comfyui-coat/docs/COATTransfer.md", timeout=60) as r:
        assert r.read().decode().startswith("# COAT Transfer")
