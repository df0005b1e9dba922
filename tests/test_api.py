"""The COAT nodes through a real ComfyUI server: the shipped API workflows, outputs via /history and /view, node
errors, and the UI-format twins. A tiny random checkpoint goes into the server's extra `coat` model folder."""
import copy
import io
import json
import sys
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

WORKFLOWS = comfy_harness.REPO / "examples" / "workflows"
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
    for name in ("content.png", "style.png"):
        comfy_client.upload_image(comfy_server.url, SAMPLES / name)
    return comfy_server


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
    assert json.loads((WORKFLOWS / f"{name}.json").read_text()) == api_to_ui.to_ui(copy.deepcopy(api), info), (
        f"regenerate: python examples/api_to_ui.py --url <server> examples/workflows/{name}_api.json")
