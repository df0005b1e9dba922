import json, sys
for split in ("easy", "hard"):
    halves = [json.load(open(f"/tmp/s200_{split}_{s}.json")) for s in (987654321, 987654421)]
    for row in ("defaults", "old"):
        m = [h["methods"][row] for h in halves]
        print(split, row, {k: round((m[0][k] + m[1][k]) / 2, 3) for k in m[0] if m[0][k] is not None})
