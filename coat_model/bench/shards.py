"""The quality bench's shards added up: one run of ``python -m coat_model.bench quality`` split across processes
or sessions (``--first``), merged into the record a single run would have written.

    python -m coat_model.bench quality --ckpt c.safetensors --split easy --first 0 --pairs 100 --json a.json
    python -m coat_model.bench quality --ckpt c.safetensors --split easy --first 100 --pairs 100 --json b.json
    python -m coat_model.bench merge a.json b.json --json q.json

Each shard's record keeps the sums its means come from (``sums``: the pooled metrics weighted by batch size and the
per-part tallies), so the merge is exact, not a mean of means. The shards must be of one checkpoint (its file name),
category, split, resolution and ``--set``, and must tile the bench's pairs from the first one without a gap or an
overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..train.data.categories import parse_procedural
from .quality import Pooled, Report, format_parts, format_table, record

SAME = ("data", "split", "resolution", "settings")  # what every shard of one run shares (and the ckpt's name)


class ShardError(ValueError):
    """Records that are not shards of one bench run (what differs, and what to do)."""


def merge(records: list[dict]) -> dict:
    """Shard records (:func:`.quality.record`) -> the record of the one run they tile: pairs from 0, the methods'
    means and the parts recomputed from the summed ``sums``."""
    if not records:
        raise ShardError("give at least one shard record")
    missing = [i for i, r in enumerate(records) if "sums" not in r or "first" not in r]
    if missing:
        raise ShardError(f"record {missing[0] + 1} has no sums to add up (written before shards existed): run its "
                         "pairs again with this version's `quality --json`")
    first = records[0]
    for r in records[1:]:
        for key in SAME:
            if r.get(key) != first.get(key):
                raise ShardError(f"the shards are of different runs: {key} {first.get(key)!r} vs {r.get(key)!r}")
        if Path(r["ckpt"]).name != Path(first["ckpt"]).name:
            raise ShardError(f"the shards are of different checkpoints: {first['ckpt']} vs {r['ckpt']}")
    ordered = sorted(records, key=lambda r: r["first"])
    end = 0
    for r in ordered:
        if r["first"] != end:
            what = "overlap" if r["first"] < end else "leave a gap"
            raise ShardError(f"the shards {what} at pair {min(end, r['first'])}: they must tile the pairs from 0 "
                             f"(this one covers {r['first']}..{r['first'] + r['pairs'] - 1})")
        end += r["pairs"]
    pooled = Pooled()
    tallies: dict[str, dict[str, torch.Tensor]] = {}
    for r in ordered:
        pooled.add_sums(r["sums"]["pooled"]["sums"], r["sums"]["pooled"]["counts"])
        for name, t in r["sums"]["tallies"].items():
            into = tallies.setdefault(name, {})
            for key, values in t.items():
                into[key] = into.get(key, 0) + torch.tensor(values, dtype=torch.float64)
    meta = {key: value for key, value in first.items() if key not in ("methods", "parts", "sums")}
    meta.update(pairs=end, first=0, shards=[[r["first"], r["pairs"]] for r in ordered])
    return record(Report.of(pooled, tallies, parse_procedural(first["data"])[0].labels), **meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coat_model.bench merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+", type=Path, help="the shards' --json records")
    p.add_argument("--json", type=Path, default=None, help="where to write the merged record")
    args = p.parse_args(argv)
    records = []
    for path in args.shards:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            p.error(f"{path}: not a readable bench record ({error})")
    try:
        merged = merge(records)
    except ShardError as error:
        p.error(str(error))
    if args.json:  # written before the tables are printed: a closed pipe (``| head``) must not lose the record
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(merged, indent=2))
    print(f"{merged['ckpt']}: {merged['data']} {merged['split']}, {merged['pairs']} pairs in {len(records)} shards")
    print(format_table(merged["methods"]))
    print()
    print(format_parts(merged["parts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
