#!/usr/bin/env python3
"""Render the sample images examples/images/content.png and style.png with the procedural face renderer.

Content and style are two independent faces (different pose, shape and hairstyle; different colours and
textures), so the transfer has something to do. Deterministic: the same seed gives the same files.

    python tools/make_samples.py [--seed 2] [--size 128] [--out examples/images]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coat_model.train.data import faces  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=REPO / "examples" / "images")
    a = ap.parse_args(argv)
    pairs = faces.sample_pairs(1, seed=a.seed, size=a.size)
    a.out.mkdir(parents=True, exist_ok=True)
    for name, image in (("content", pairs.content[0]), ("style", pairs.style[0])):
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        path = a.out / f"{name}.png"
        Image.fromarray(pixels).save(path, optimize=True)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
