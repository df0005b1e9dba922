"""The mean of the two halves of the bench's 200 pairs (the s200_*.json beside this file), per split and row.

    python benchmarks/results/stage_s_2026-12-05/average_halves.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent

for split in ("easy", "hard"):
    halves = [json.loads((HERE / f"s200_{split}_{seed}.json").read_text()) for seed in (987654321, 987654421)]
    for row in ("defaults", "old"):
        a, b = (half["methods"][row] for half in halves)
        print(split, row, {k: round((a[k] + b[k]) / 2, 3) for k in a if a[k] is not None})
