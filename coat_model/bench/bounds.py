"""How well can a transfer that copies style pixels along a correspondence do at a resolution? (No network.)

    python -m coat_model.bench bounds --resolution 64 --pairs 200 --split easy --json bounds.json

On the quality bench's held-out pairs, the style image is sampled (bilinear) along:
- ``identity_flow``: each pixel's own position (the style copy, scored as a warp);
- ``gt_flow``: the true correspondence of every pixel (a perfect per-pixel matcher);
- ``gt_cells{s}``: the style cell of scale 1/s nearest to the true match of each content cell's centre, every pixel
  taking its cell's match: a hard matcher that is right at every cell, scored exactly as the bench scores the
  network's own matches (``coat_flow_warp``);
- ``gt_cells{s}_smooth``: the true (sub-cell) matches of the cell centres, interpolated bilinearly between cells.

The gap between ``gt_flow`` and ``gt_cells{s}`` is what matching at scale 1/s costs on its own, however good the
descriptors: small parts (eyes of 4-6 px at 64 px) fall between cells. Metrics as in the quality bench.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model.coords import cells_to_flow, flow_to_cells, identity_flow
from ..model.matching import resample_flow
from ..train.data.faces import sample_pairs
from .metrics import compute_metrics
from .quality import EVAL_SEED, cell_flow_to_pixels, gt_matches

KEYS = ("paa", "de_part", "psnr", "pck05", "pck10")


def flows(flow: torch.Tensor, visible: torch.Tensor, resolution: int, scales) -> dict[str, torch.Tensor]:
    """The per-pixel flows [B, 2, R, R] of every method for one batch of ground truth."""
    out = {"identity_flow": identity_flow(resolution).expand_as(flow), "gt_flow": flow}
    for s, m in gt_matches(flow, visible, resolution, scales).items():
        h = resolution // s
        nearest_cell = cells_to_flow(flow_to_cells(m.flow, h, h).round(), h, h)
        out[f"gt_cells{s}"] = cell_flow_to_pixels(nearest_cell, s, resolution)
        out[f"gt_cells{s}_smooth"] = resample_flow(m.flow, s, 1, resolution)
    return out


def evaluate(resolution: int = 64, n_pairs: int = 200, split: str = "easy", scales=(8, 4, 2), batch_size: int = 25,
             seed: int = EVAL_SEED) -> dict[str, dict[str, float]]:
    """Metrics per method, pooled over ``n_pairs`` pairs (weighted by batch size)."""
    sums: dict[str, dict[str, float]] = {}
    for start in range(0, n_pairs, batch_size):
        n = min(batch_size, n_pairs - start)
        pairs = sample_pairs(n, seed=seed + start, size=resolution, split=split)
        for name, flow in flows(pairs.flow, pairs.visible, resolution, scales).items():
            warp = F.grid_sample(pairs.style, flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                                 align_corners=True)
            metrics = compute_metrics(warp, pairs.target, pairs.content_labels, pairs.content, pred_flow=flow,
                                      gt_flow=pairs.flow, visible=pairs.visible)
            for key in KEYS:
                sums.setdefault(name, {}).setdefault(key, 0.0)
                sums[name][key] += metrics[key] * n
    return {name: {k: v / n_pairs for k, v in m.items()} for name, m in sums.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coat_model.bench bounds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--split", choices=("easy", "hard"), default="easy")
    p.add_argument("--scales", default="8,4,2", help="cell scales as divisors of the resolution, e.g. 16,8,4")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        scales = tuple(int(s) for s in args.scales.split(","))
    except ValueError:
        p.error(f"--scales takes divisors such as 8,4,2, got {args.scales!r}")
    if any(s < 1 or args.resolution % s for s in scales):
        p.error(f"every scale must divide the resolution {args.resolution}, got {args.scales}")
    results = evaluate(args.resolution, args.pairs, args.split, scales)
    print(f"{'method':<18}" + "".join(f"{k:>10}" for k in KEYS))
    for name, metrics in results.items():
        print(f"{name:<18}" + "".join(f"{metrics[k]:>10.3f}" for k in KEYS))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"resolution": args.resolution, "pairs": args.pairs, "split": args.split,
                                         "methods": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
