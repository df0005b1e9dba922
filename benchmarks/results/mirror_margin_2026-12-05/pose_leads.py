"""Which poses the pose search would pick per mirror margin, against whether the pair is truly mirrored.

For each pair of the choosing set (seed 123000000), the searched poses' raw scores (mean finest confidence over the
content's object) are computed once; the pick of COAT's pose search (pose.winners) is then replayed for each
mirror margin, and counted against the truth (content and style flipped differently).

    OMP_NUM_THREADS=1 python benchmarks/results/mirror_margin_2026-12-05/pose_leads.py SPLIT PAIRS OUT.json
"""

import json
import sys

import torch

from coat_model.io import load
from coat_model.model.pose import Pose, candidate_poses, object_confidence
from coat_model.train.data.faces import sample_pairs

MARGINS = (0.0, 0.02, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.12)


def main(split: str, n_pairs: int, out: str, batch: int = 25, seed: int = 123_000_000) -> None:
    torch.set_num_threads(1)
    model = load("checkpoints/coat_faces.safetensors")
    cfg = model.config
    poses = candidate_poses(True, cfg.rotation_search)
    scores, truth = [], []
    with torch.no_grad():
        for start in range(0, n_pairs, batch):
            pairs = sample_pairs(batch, seed=seed + start, size=cfg.resolution, split=split)
            c, s = model.encode(pairs.content), model.encode(pairs.style)
            options = model.align(c, s, mirror_search=False, rotation_search=0.0, pose_fit=False,
                                  refine=False).options
            per_pose = []
            for p in poses:
                posed = s if p == Pose() else model.posed(s, p)
                m = model._match(c, posed, options)
                per_pose.append(object_confidence(m[min(m)].confidence, c.mask))
            scores.append(torch.stack(per_pose, 1))
            truth.append(pairs.content_structure.flipped ^ pairs.style_structure.flipped)
            print(start, flush=True)
    scores, truth = torch.cat(scores), torch.cat(truth)
    mirrored = torch.tensor([p.mirrored for p in poses])
    rows = {}
    for margin in MARGINS:
        prior = torch.tensor([p.prior(margin, cfg.rotation_margin) for p in poses])
        pick = mirrored[(scores - prior).argmax(1)]
        rows[str(margin)] = dict(right_mirror=int((pick & truth).sum()), wrong_mirror=int((pick & ~truth).sum()),
                                 missed_mirror=int((~pick & truth).sum()))
        print(margin, rows[str(margin)], flush=True)
    lead = (scores[:, mirrored].max(1).values - scores[:, ~mirrored].max(1).values)
    json.dump(dict(split=split, pairs=n_pairs, seed=seed, flipped=int(truth.sum()), margins=rows,
                   lead_flipped=lead[truth].tolist(), lead_not_flipped=lead[~truth].tolist()), open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
