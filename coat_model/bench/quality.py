"""Transfer quality against exact ground truth on procedural faces (COAT_SPEC C.2), with the C.4 baselines.

    python -m coat_model.bench quality --ckpt checkpoints/coat_faces.safetensors --pairs 200 --split easy --json q.json

Methods, all in one run on the same held-out pairs:
- ``coat``: the checkpoint's transfer (hard matches, confidence filtering, propagate fill);
- ``coat_global``: the same network with every aligned map replaced by the global style code (the
  Swapping-Autoencoder-like ablation that isolates correspondence);
- ``coat_flow_warp``: the style image sampled at the network's own finest matches (no decoder);
- ``identity``, ``reinhard`` (global colour transfer) and ``gt_warp`` (the ground-truth correspondence oracle).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import baselines
from ..data.faces import sample_pairs
from ..io import load
from ..metrics import compute_metrics

KEYS = ("paa", "de_part", "psnr", "pck05", "pck10", "conf_precision", "conf_coverage", "bg_l1")
EVAL_SEED = 987_654_321  # held out: training draws images from other seeds


def cell_flow_to_pixels(flow: torch.Tensor, scale: int, resolution: int) -> torch.Tensor:
    """Matches of a cell grid (cell-centre convention, [B, 2, h, w]) -> a per-pixel flow [B, 2, R, R] in image
    coordinates (align_corners=True over R pixels): every pixel takes its cell's match, placed at the centre
    of the matched style cell."""
    h, w = flow.shape[-2:]
    cells = (flow + 1) / 2 * torch.tensor([w - 1, h - 1], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    pixels = cells * scale + (scale - 1) / 2
    image = pixels / (resolution - 1) * 2 - 1
    return F.interpolate(image, size=(resolution, resolution), mode="nearest")


@torch.no_grad()
def coat_outputs(model, content: torch.Tensor, style: torch.Tensor) -> dict[str, dict]:
    """Outputs and matches of the network and of its two ablations for one batch."""
    c, s = model.encode(content), model.encode(style)
    alignment = model.align(c, s)
    finest = alignment.scales[-1]
    r = model.config.resolution
    flow = cell_flow_to_pixels(alignment.flow[finest], finest, r)
    global_code = model.align(c, s, fill="global", confidence_threshold=2.0)  # no match is trusted
    warp = F.grid_sample(style, flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=True)
    return {
        "coat": dict(output=model.decode(c, alignment), pred_flow=flow,
                     confidence=F.interpolate(alignment.mask[finest].float(), size=(r, r), mode="nearest") > 0.5),
        "coat_global": dict(output=model.decode(c, global_code)),
        "coat_flow_warp": dict(output=warp, pred_flow=flow),
    }


def evaluate(model, n_pairs: int = 200, split: str = "easy", batch_size: int = 25, seed: int = EVAL_SEED,
             device=None) -> dict[str, dict[str, float | None]]:
    """Metrics per method, pooled over ``n_pairs`` pairs (weighted by batch size)."""
    r = model.config.resolution
    device = device or model.w_avg.device
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for start in range(0, n_pairs, batch_size):
        n = min(batch_size, n_pairs - start)
        pairs = sample_pairs(n, seed=seed + start, size=r, split=split)
        content, style = pairs.content.to(device), pairs.style.to(device)
        methods = coat_outputs(model, content, style)
        labels = pairs.content_labels
        methods["identity"] = dict(output=baselines.identity(pairs.content, pairs.style))
        methods["reinhard"] = dict(output=baselines.reinhard(pairs.content, pairs.style, (labels != 0)[:, None],
                                                             (pairs.style_labels != 0)[:, None]))
        methods["gt_warp"] = dict(output=baselines.gt_warp(pairs.content, pairs.style, pairs.flow, labels,
                                                           pairs.visible, pairs.style_labels), pred_flow=pairs.flow)
        for name, m in methods.items():
            metrics = compute_metrics(
                m["output"].float().cpu(), pairs.target, labels, pairs.content,
                pred_flow=None if "pred_flow" not in m else m["pred_flow"].float().cpu(),
                gt_flow=pairs.flow, visible=pairs.visible,
                confidence=None if "confidence" not in m else m["confidence"].cpu(),
            )
            for key in KEYS:
                if metrics[key] is not None:
                    sums.setdefault(name, {}).setdefault(key, 0.0)
                    sums[name][key] += metrics[key] * n
                    counts.setdefault(name, {}).setdefault(key, 0)
                    counts[name][key] += n
    return {name: {k: (sums[name][k] / counts[name][k] if k in counts.get(name, {}) else None) for k in KEYS}
            for name in sums}


def format_table(results: dict[str, dict]) -> str:
    header = f"{'method':<16}" + "".join(f"{k:>15}" for k in KEYS)
    lines = [header, "-" * len(header)]
    for name, metrics in results.items():
        lines.append(f"{name:<16}" + "".join(f"{'-' if metrics[k] is None else f'{metrics[k]:.3f}':>15}" for k in KEYS))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coat_model.bench quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--split", choices=("easy", "hard"), default="easy")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model = load(args.ckpt, device=args.device)
    results = evaluate(model, args.pairs, args.split, device=torch.device(args.device))
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ckpt": str(args.ckpt), "pairs": args.pairs, "split": args.split,
                                         "resolution": model.config.resolution, "methods": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
