#!/usr/bin/env python3
"""Make the drag-and-drop (UI-format) twin of an API-format workflow, using a running server's /object_info.

    python examples/api_to_ui.py --url http://127.0.0.1:8188 examples/workflows/coat_transfer_api.json
    # -> example_workflows/coat_transfer.json (the pack's templates, listed in ComfyUI's Templates browser)

Nodes are laid out in columns by graph depth. Widget values come from the API inputs in the node definition's
order (plus the extra values the frontend stores: LoadImage's upload button, a seed's control mode).
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "example_workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def depth(prompt: dict, node_id: str, memo: dict) -> int:
    if node_id not in memo:
        links = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
        memo[node_id] = 1 + max((depth(prompt, src, memo) for src in links), default=-1)
    return memo[node_id]


def to_ui(prompt: dict, object_info: dict) -> dict:
    ids = {key: i + 1 for i, key in enumerate(prompt)}
    links, nodes, memo = [], [], {}
    out_links: dict[tuple[str, int], list[int]] = {}
    for key, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                links.append([len(links) + 1, ids[value[0]], value[1], ids[key], None, None, name])
                out_links.setdefault((value[0], value[1]), []).append(len(links))
    rows: dict[int, int] = {}
    for order, (key, node) in enumerate(prompt.items()):
        info = object_info[node["class_type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        names = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        inputs, widgets = [], []
        for name in names:
            spec = specs[name] if len(specs[name]) > 1 else [specs[name][0], {}]
            value = node["inputs"].get(name)
            if is_widget(spec) and not isinstance(value, list):
                widgets.append(value if name in node["inputs"] else spec[1].get("default"))
                if spec[1].get("image_upload"):
                    widgets.append("image")
                if spec[1].get("control_after_generate"):
                    widgets.append("fixed")
                continue
            link = next((l for l in links if l[3] == ids[key] and l[6] == name), None)
            if link is not None:
                link[4], link[5] = len(inputs), spec[0]
            inputs.append({"name": name, "type": spec[0], "link": link[0] if link else None})
        outputs = [{"name": n, "type": t, "links": out_links.get((key, i), []), "slot_index": i}
                   for i, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
        column = depth(prompt, key, memo)
        row = rows.get(column, 0)
        height = 80 + 26 * max(len(inputs), len(outputs)) + 26 * len(widgets)
        height += 260 if node["class_type"] in ("LoadImage", "SaveImage", "MaskPreview", "COATMatchPreview") else 0
        rows[column] = row + height + 40
        entry = {"id": ids[key], "type": node["class_type"], "pos": [60 + 380 * column, 60 + row],
                 "size": [340, height], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                 "outputs": outputs, "properties": {"Node name for S&R": node["class_type"]},
                 "widgets_values": widgets}
        if node.get("_meta", {}).get("title"):
            entry["title"] = node["_meta"]["title"]
        nodes.append(entry)
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes,
            "links": [l[:6] for l in links], "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--out-dir", type=Path, default=TEMPLATES, help="where the UI files go (default: %(default)s)")
    ap.add_argument("workflows", nargs="+", type=Path, help="API-format files named *_api.json")
    a = ap.parse_args(argv)
    with urllib.request.urlopen(a.url.rstrip("/") + "/object_info", timeout=60) as r:
        object_info = json.load(r)
    for path in a.workflows:
        if not path.name.endswith("_api.json"):
            sys.exit(f"{path}: expected a name ending in _api.json")
        target = a.out_dir / path.name.replace("_api.json", ".json")
        target.write_text(json.dumps(to_ui(json.loads(path.read_text()), object_info), indent=1) + "\n")
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
