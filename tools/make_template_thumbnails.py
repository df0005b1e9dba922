#!/usr/bin/env python3
"""Make the Templates-browser thumbnails ``example_workflows/<name>.jpg`` from real runs of the templates.

Each thumbnail is content | style | the template's saved result, from the API twin of the template
(``examples/workflows/<name>_api.json``, the same graph) queued on a running ComfyUI with the pack loaded and the
bundled checkpoint:

    python tools/make_template_thumbnails.py --url http://127.0.0.1:8188

ComfyUI's frontend shows ``/api/workflow_templates/<pack>/<name>.jpg`` as the card of template ``<name>``.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import comfy_client  # noqa: E402

TEMPLATES = REPO / "example_workflows"
WORKFLOWS = REPO / "examples" / "workflows"
SAMPLES = REPO / "examples" / "images"
TILE = 176  # three tiles side by side: 528 x 176


def view(url: str, ref: dict) -> Image.Image:
    q = urllib.parse.urlencode({k: ref[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{url}/view?{q}", timeout=60) as r:
        return Image.open(io.BytesIO(r.read())).convert("RGB")


def saved_image(url: str, prompt: dict, outputs: dict) -> Image.Image:
    """The first image of the workflow's SaveImage node."""
    for node_id, node in prompt.items():
        if node["class_type"] == "SaveImage" and outputs.get(node_id, {}).get("images"):
            return view(url, outputs[node_id]["images"][0])
    raise SystemExit("the workflow saved no image")


def thumbnail(result: Image.Image) -> Image.Image:
    tiles = [Image.open(SAMPLES / "content.png"), Image.open(SAMPLES / "style.png"), result]
    sheet = Image.new("RGB", (TILE * len(tiles), TILE), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile.convert("RGB").resize((TILE, TILE), Image.LANCZOS), (i * TILE, 0))
    return sheet


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    a = ap.parse_args(argv)
    url = a.url.rstrip("/")
    names = sorted(p.stem for p in TEMPLATES.glob("*.json"))
    if not names:
        raise SystemExit(f"no templates in {TEMPLATES}")
    for name in names:
        twin = WORKFLOWS / f"{name}_api.json"
        if not twin.is_file():
            raise SystemExit(f"template {name} has no API twin {twin}")
        prompt = json.loads(twin.read_text())
        _, entry = comfy_client.run_prompt(url, prompt, timeout=600)
        out = TEMPLATES / f"{name}.jpg"
        thumbnail(saved_image(url, prompt, entry["outputs"])).save(out, quality=88)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
