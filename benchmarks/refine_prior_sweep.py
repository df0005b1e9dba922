"""A checkpoint's transfer for several values of one inference option, ``refine_prior`` (0: the window search as it
was), and without the refinement, on held-out pairs of the quality bench's kind: PAA, dE_part and the PCK of the
per-pixel matches each decodes with. The encodings are shared, so one run costs about what a bench of one method
does per value.

    python benchmarks/refine_prior_sweep.py CKPT [--pairs 100] [--split easy] [--seed S] [--priors 0,0.2,0.4,1]

``--seed`` picks other pairs than the bench's (its default, the bench's own): choose on one set, report on the
other. The bench (``python -m coat_model.bench quality``) reports the checkpoint's own value as ``coat`` and 0 as
``coat_no_prior``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from coat_model.bench.metrics import compute_metrics
from coat_model.bench.quality import EVAL_SEED, cell_flow_to_pixels
from coat_model.io import load
from coat_model.train.data.categories import parse_procedural
from coat_model.train.data.faces import sample_pairs

KEYS = ("paa", "de_part", "pck02", "pck05")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--split", choices=("easy", "hard"), default="easy")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--data", default="procedural:faces")
    parser.add_argument("--priors", default="0,0.2,0.4,1")
    args = parser.parse_args(argv)
    category = parse_procedural(args.data)[0]
    model = load(args.ckpt).eval()
    r = model.config.resolution
    variants = {f"refine_prior={p}": dict(refine_prior=float(p)) for p in args.priors.split(",")}
    variants["unrefined"] = dict(refine=False)
    sums = {name: dict.fromkeys(KEYS, 0.0) for name in variants}
    counts = {name: dict.fromkeys(KEYS, 0) for name in variants}
    with torch.no_grad():
        for start in range(0, args.pairs, 25):
            n = min(25, args.pairs - start)
            pairs = sample_pairs(n, seed=args.seed + start, size=r, split=args.split, category=category)
            c, s = model.encode(pairs.content), model.encode(pairs.style)
            for name, options in variants.items():
                a = model.align(c, s, **options)
                finest = a.scales[-1]
                flow = a.refined.flow if a.refined is not None else cell_flow_to_pixels(a.flow[finest], finest, r)
                m = compute_metrics(model.decode(c, a).float(), pairs.target, pairs.content_labels, pairs.content,
                                    pred_flow=flow.float(), gt_flow=pairs.flow, visible=pairs.visible)
                for k in KEYS:  # pooled as the bench pools them: a batch without the metric (None) is left out
                    if m[k] is not None:
                        sums[name][k] += m[k] * n
                        counts[name][k] += n
    print(f"{args.ckpt} {args.split} {args.pairs} pairs, seed {args.seed}")
    for name, total in sums.items():
        print(f"{name:<20}" + "".join(f"  {k} {v / counts[name][k]:.4f}" if counts[name][k] else f"  {k} -"
                                      for k, v in total.items()))


if __name__ == "__main__":
    main()
