"""What the hard path's pose search costs: one trained checkpoint's transfer with the search off, with the mirror
only, with its own mirror and turns but no fitted pose, with the fitted pose but no flow median, and with its own
defaults, on held-out pairs, the settings alternated so a shared machine slows each alike.

    python -m coat_model.bench poses --ckpt checkpoints/coat_faces.safetensors --split hard --repeats 6 --threads 1

Reports, per setting, the fastest of ``repeats`` transfers (a busy machine only ever slows a run down) and its
ratio to the style as given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..io import load
from ..train.data.faces import sample_pairs
from .quality import EVAL_SEED

SETTINGS = {
    "as_given": dict(mirror_search=False, rotation_search=0.0, pose_fit=False, flow_median=0),
    "mirror": dict(rotation_search=0.0, pose_fit=False, flow_median=0),
    "searched": dict(pose_fit=False, flow_median=0),
    "fitted": dict(flow_median=0),
    "defaults": {},
}


def time_settings(model, content: torch.Tensor, style: torch.Tensor, repeats: int = 6) -> dict[str, float]:
    """Fastest seconds of ``model.transfer(content, style, **setting)`` per setting in :data:`SETTINGS`, after one
    warm-up transfer of each."""
    best = {}
    with torch.no_grad():
        for rnd in range(repeats + 1):
            for name, overrides in SETTINGS.items():
                start = time.perf_counter()
                model.transfer(content, style, **overrides)
                took = time.perf_counter() - start
                if rnd:  # round 0 warms up
                    best[name] = min(best.get(name, took), took)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coat_model.bench poses", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--split", choices=("easy", "hard"), default="hard")
    p.add_argument("--batch", type=int, default=1, help="pairs per transfer")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.ckpt).eval()
    pairs = sample_pairs(args.batch, seed=EVAL_SEED, size=model.config.resolution, split=args.split)
    best = time_settings(model, pairs.content, pairs.style, args.repeats)
    base = best["as_given"]
    for name, seconds in best.items():
        print(f"{name:9s} {seconds:7.3f} s  {seconds / base:5.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ckpt": str(args.ckpt), "split": args.split, "batch": args.batch,
                                         "threads": torch.get_num_threads(), "seconds": best}, indent=1))
    return 0
