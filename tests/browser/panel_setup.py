"""Shared setup of the panel tests: a tiny seeded checkpoint in the server's `coat` folder, and the example workflows
pointed at it. Their images (coat_example_*.png) are in the server's input folder since the pack loaded
(nodes/example_images.py)."""
from __future__ import annotations

import copy
import json

import torch

import coat_model
import comfy_harness

CKPT = "coat_panel_test.safetensors"
TEMPLATES = comfy_harness.REPO / "example_workflows"   # UI format
WORKFLOWS = comfy_harness.REPO / "examples" / "workflows"  # the API twins


def prepare(server) -> None:
    """Idempotent: write the checkpoint (fixed seed, so the same matches every run)."""
    path = server.root / "models" / "coat" / CKPT
    if not path.exists():
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            coat_model.COAT(coat_model.COATConfig.tiny()).save(path)


def ui_workflow(seed: int) -> dict:
    """example_workflows/coat_transfer.json (UI format) on the test checkpoint; ``seed`` makes the run new."""
    wf = json.loads((TEMPLATES / "coat_transfer.json").read_text())
    for node in wf["nodes"]:
        if node["type"] == "COATModelLoader":
            node["widgets_values"][0] = CKPT
        if node["type"] == "COATTransfer":
            node["widgets_values"][2] = seed  # widgets: n_content_layers, style_strength, seed, mode, fill, mirror_search
    return wf


def api_workflow(seed: int) -> dict:
    """The API-format twin, for headless runs."""
    prompt = json.loads((WORKFLOWS / "coat_transfer_api.json").read_text())
    for node in prompt.values():
        if node["class_type"] == "COATModelLoader":
            node["inputs"]["ckpt_name"] = CKPT
        if node["class_type"] == "COATTransfer":
            node["inputs"]["seed"] = seed
    return copy.deepcopy(prompt)
