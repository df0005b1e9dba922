"""One quality-bench batch (coat_outputs: the network and its ablations) of the bundled checkpoint with the candidate
defaults, timed with the bench's SearchMemo and with NoMemo (every alignment searched afresh), in
turns, on one thread; the outputs are checked equal.

    OMP_NUM_THREADS=1 python benchmarks/results/search_memo_2026-12-05/time_bench_batch.py [PAIRS] [ROUNDS]
"""

import sys
import time

import torch

import coat_model.bench.quality as quality
from coat_model.io import grow
from coat_model.model.search_memo import NoMemo, SearchMemo
from coat_model.train.data.faces import sample_pairs


def main(n_pairs: int = 4, rounds: int = 2) -> None:
    torch.set_num_threads(1)
    model = grow("checkpoints/coat_faces.safetensors", flow_affine=10, flow_affine_wide=28,
                 fill_displacement=True).eval()
    pairs = sample_pairs(n_pairs, seed=quality.EVAL_SEED, size=model.config.resolution, split="easy")
    args = (model, pairs.content, pairs.style, pairs.flow, pairs.visible, pairs.target)
    times = {"memo": [], "afresh": []}
    outputs = {}
    for _ in range(rounds):
        for name, memo in (("memo", SearchMemo), ("afresh", NoMemo)):
            quality.SearchMemo = memo
            start = time.perf_counter()
            outputs[name] = quality.coat_outputs(*args)
            times[name].append(time.perf_counter() - start)
    same = all(torch.equal(a, outputs["afresh"][m][k]) for m, d in outputs["memo"].items()
               for k, a in d.items() if isinstance(a, torch.Tensor))
    best = {name: min(t) for name, t in times.items()}
    print(f"{n_pairs} pairs, best of {rounds}: memo {best['memo']:.1f} s, afresh {best['afresh']:.1f} s, "
          f"ratio {best['afresh'] / best['memo']:.2f}x; outputs equal: {same}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
