"""Figures of a checkpoint on held-out procedural pairs, for the README and BENCHMARKS.md.

    python -m coat_model.bench figures --ckpt checkpoints/coat_faces.safetensors --out docs/

Writes ``results_grid.png`` (one row per pair: content | style | output | confidence | true transfer) and
``n_content_sweep.png`` (one pair through every ``n_content_layers``: structure from the content grows to the right).
Images are upscaled with nearest neighbours so that pixels stay visible at the model's resolution.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io import load
from ..train.data.faces import sample_pairs
from .quality import EVAL_SEED

COLUMNS = ("content", "style", "output", "confidence", "true transfer")


def _tile(image: torch.Tensor, size: int) -> Image.Image:
    """[3, H, W] or [1, H, W] in [0, 1] -> an RGB tile of ``size`` px."""
    array = (image.clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((size, size), Image.NEAREST)


def _sheet(rows: list[list[Image.Image]], labels: list[str], tile: int, pad: int = 4, header: int = 16) -> Image.Image:
    cols = len(labels)
    sheet = Image.new("RGB", (cols * (tile + pad) + pad, header + len(rows) * (tile + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((pad + c * (tile + pad) + 2, 2), label, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(image, (pad + c * (tile + pad), header + pad + r * (tile + pad)))
    return sheet


@torch.no_grad()
def results_grid(model, n_pairs: int = 6, split: str = "easy", seed: int = EVAL_SEED, tile: int = 128) -> Image.Image:
    """content | style | output | confidence | true transfer for ``n_pairs`` held-out pairs."""
    pairs = sample_pairs(n_pairs, seed=seed, size=model.config.resolution, split=split)
    device = model.w_avg.device
    output, confidence = model.transfer(pairs.content.to(device), pairs.style.to(device))
    rows = [[_tile(t[i].float().cpu(), tile) for t in (pairs.content, pairs.style, output, confidence, pairs.target)]
            for i in range(n_pairs)]
    return _sheet(rows, list(COLUMNS), tile)


@torch.no_grad()
def n_content_sweep(model, pair: int = 0, split: str = "easy", seed: int = EVAL_SEED, tile: int = 112) -> Image.Image:
    """content | style | the transfer for every n_content_layers from 1 to L - 1 (one row)."""
    pairs = sample_pairs(pair + 1, seed=seed, size=model.config.resolution, split=split)
    device = model.w_avg.device
    content, style = pairs.content[pair:pair + 1].to(device), pairs.style[pair:pair + 1].to(device)
    c, s = model.encode(content), model.encode(style)
    alignment = model.align(c, s)
    layers = range(1, model.n_layers)
    outputs = [model.decode(c, alignment, n_content_layers=n)[0].cpu() for n in layers]
    row = [_tile(content[0].cpu(), tile), _tile(style[0].cpu(), tile)] + [_tile(o, tile) for o in outputs]
    return _sheet([row], ["content", "style"] + [f"n={n}" for n in layers], tile)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coat_model.bench figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNG files")
    p.add_argument("--pairs", type=int, default=6, help="rows of the results grid")
    p.add_argument("--split", choices=("easy", "hard"), default="easy")
    p.add_argument("--prefix", default="", help="file name prefix, e.g. hard_")
    args = p.parse_args(argv)
    model = load(args.ckpt)
    args.out.mkdir(parents=True, exist_ok=True)
    grid, sweep = args.out / f"{args.prefix}results_grid.png", args.out / f"{args.prefix}n_content_sweep.png"
    results_grid(model, args.pairs, args.split).save(grid)
    n_content_sweep(model, split=args.split).save(sweep)
    print(f"{grid}\n{sweep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
