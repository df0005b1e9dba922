"""Write a procedural category to an image folder, as a user's own data would arrive (PNG files, nothing else):
the held-out-category check trains on such a folder with only ``--data`` changed.

    python benchmarks/render_folder.py OUT [--category cars] [--split easy] [--count 4000] [--size 128] [--seed 0]

The training seed (0) never meets the quality bench's validation seeds, so the bench's pairs stay unseen.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from coat_model.train.data.categories import CATEGORIES
from coat_model.train.data.faces import ProceduralDataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--category", default="cars", choices=sorted(CATEGORIES))
    parser.add_argument("--split", default="easy")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = ProceduralDataset(size=args.size, length=args.count, seed=args.seed, split=args.split,
                             category=CATEGORIES[args.category])
    args.out.mkdir(parents=True, exist_ok=True)
    for start in range(0, args.count, 64):
        images = data.batch(range(start, min(start + 64, args.count)))
        pixels = (images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()
        for offset, image in enumerate(pixels):
            Image.fromarray(image).save(args.out / f"{args.category}_{start + offset:05d}.png")
    print(f"wrote {args.count} {args.category} images ({args.split}, {args.size} px) to {args.out}")


if __name__ == "__main__":
    main()
