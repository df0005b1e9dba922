"""Smoke tests of the ComfyUI harness and tools/comfy_client.py against a real ComfyUI (no mocks)."""
import json
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

import comfy_harness

sys.path.insert(0, str(comfy_harness.REPO / "tools"))
import comfy_client  # noqa: E402


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def test_server_answers(comfy_server):
    stats = get(comfy_server.url + "/system_stats")
    assert [d["type"] for d in stats["devices"]] == ["cpu"]
    info = get(comfy_server.url + "/object_info")
    assert {"LoadImage", "ImageScale", "SaveImage"} <= info.keys()


def test_client_runs_core_prompt(comfy_server, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (200, 30, 10)).save(src)
    name = comfy_client.upload_image(comfy_server.url, src)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                      "width": 64, "height": 48, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "harness"}},
    }
    events = []
    pid = comfy_client.queue_prompt(comfy_server.url, prompt, "harness-test")
    entry = comfy_client.wait(comfy_server.url, pid, "harness-test", lambda k, d: events.append(k), timeout=120)
    assert entry["status"]["status_str"] == "success"
    paths = comfy_client.download_outputs(comfy_server.url, pid, tmp_path / "out")
    assert len(paths) == 1 and Image.open(paths[0]).size == (64, 48)


def test_client_reports_node_errors(comfy_server):
    bad = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}  # required `images` missing
    with pytest.raises(comfy_client.ComfyError, match=r"node 1 \(SaveImage\)") as e:
        comfy_client.queue_prompt(comfy_server.url, bad, "harness-test")
    assert e.value.details["node_errors"]["1"]


def test_inprocess_loads_comfyui(comfy_inprocess):
    nodes = comfy_inprocess
    assert Path(nodes.__file__).parent == comfy_harness.comfyui_dir()
    assert "LoadImage" in nodes.NODE_CLASS_MAPPINGS  # core V1 nodes are registered and callable
    scaled, = nodes.NODE_CLASS_MAPPINGS["ImageScale"]().upscale(torch.zeros(1, 8, 8, 3), "nearest-exact", 16, 4, "disabled")
    assert tuple(scaled.shape) == (1, 4, 16, 3)
