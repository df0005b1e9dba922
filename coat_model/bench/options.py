"""A checkpoint's transfer under other inference options, side by side on the quality bench's held-out pairs: the
bench's ``coat`` row (the same pairs, metrics and pooling) for the checkpoint's own defaults and for each variant,
the encodings shared.

    python -m coat_model.bench options --ckpt checkpoints/coat_faces.safetensors --pairs 100 --seed 123000000 \\
        --variant flow_median=2 --variant prior0:refine_prior=0 --variant plain:refine=false,flow_median=0

A variant is ``[NAME:]OPTION=VALUE[,OPTION=VALUE...]``: keywords of ``COAT.align`` (``true``/``false``, numbers,
words such as ``fill=global``, scales as ``8/4`` or ``8``). ``--seed`` draws other pairs than the bench's (its
default is the bench's own): choose an option on one set, report it on the other.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

from ..checkpoint_format import CheckpointError
from ..io import load
from ..model.coat import COAT
from ..model.inputs import COATInputError
from ..model.search_memo import SearchMemo
from ..train.data.faces import FACES, Category, sample_pairs
from .quality import (
    EVAL_SEED, Pooled, add_data_argument, data_category, format_table, parse_option, score, scored,
)

DEFAULTS = "defaults"  # the row of the checkpoint's own options, always first
NOT_OPTIONS = {"self", "content", "style", "backend", "memo"}
OPTIONS = tuple(name for name in inspect.signature(COAT.align).parameters if name not in NOT_OPTIONS)


def parse_variant(text: str) -> tuple[str, dict]:
    """``[NAME:]OPTION=VALUE,...`` -> (name, ``COAT.align`` keywords); the name defaults to the text itself."""
    name, colon, body = text.partition(":")
    if not colon:
        name, body = text, text
    options = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key in options:
            raise ValueError(f"variant {text!r}: {key} is given twice")
        if not eq or key not in OPTIONS:
            raise ValueError(f"variant {text!r}: {item!r} is not OPTION=VALUE with an option of COAT.align "
                             f"({', '.join(OPTIONS)})")
        try:
            options[key] = parse_option(key, value)
        except ValueError:
            raise ValueError(f"variant {text!r}: {value!r} is not a value of {key}") from None
    if not options or name.strip() in ("", DEFAULTS):
        raise ValueError(f"variant {text!r}: give at least one OPTION=VALUE and a name other than {DEFAULTS!r}")
    return name.strip(), options


def compare(model, variants: dict[str, dict], n_pairs: int = 100, split: str = "easy", batch_size: int = 25,
            seed: int = EVAL_SEED, device=None, category: Category = FACES) -> dict[str, dict[str, float | None]]:
    """The bench's ``coat`` metrics (:data:`quality.KEYS`) for the checkpoint's defaults (:data:`DEFAULTS`) and for
    each variant (name -> ``COAT.align`` keywords), pooled over ``n_pairs`` held-out pairs as the bench pools them."""
    if DEFAULTS in variants:
        raise ValueError(f"{DEFAULTS!r} is the checkpoint's own row: name the variant otherwise")
    device = device or model.w_avg.device
    runs = {DEFAULTS: {}, **variants}
    pooled = Pooled()
    with torch.no_grad():
        for start in range(0, n_pairs, batch_size):
            n = min(batch_size, n_pairs - start)
            pairs = sample_pairs(n, seed=seed + start, size=model.config.resolution, split=split, category=category)
            c, s = model.encode(pairs.content.to(device)), model.encode(pairs.style.to(device))
            memo = SearchMemo()  # the variants share the poses and matches they search alike
            for name, options in runs.items():
                pooled.add(name, score(scored(model, c, model.align(c, s, memo=memo, **options)), pairs), n)
    return pooled.means()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coat_model.bench options", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--variant", action="append", required=True, metavar="[NAME:]OPTION=VALUE,...",
                   help="inference options to compare with the checkpoint's own (repeat for more)")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--split", choices=("easy", "hard"), default="easy")
    p.add_argument("--seed", type=int, default=EVAL_SEED,
                   help=f"the first pair's seed (default {EVAL_SEED}: the quality bench's pairs)")
    add_data_argument(p)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    category = data_category(p, args.data)
    try:
        variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as error:
        p.error(str(error))
    if len(variants) < len(args.variant):
        p.error("two variants have the same name: name them (NAME:OPTION=VALUE)")
    try:
        model = load(args.ckpt, device=args.device).eval()
    except CheckpointError as error:
        p.error(str(error))
    try:
        measured = compare(model, variants, args.pairs, args.split, seed=args.seed,
                           device=torch.device(args.device), category=category)
    except (COATInputError, TypeError) as error:
        p.error(f"a variant's options: {error}")
    print(f"{args.ckpt}: {args.data} {args.split}, {args.pairs} pairs from seed {args.seed}")
    print(format_table(measured))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ckpt": str(args.ckpt), "data": args.data, "pairs": args.pairs,
                                         "split": args.split, "seed": args.seed,
                                         "resolution": model.config.resolution,
                                         "variants": {DEFAULTS: {}, **variants}, "methods": measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
