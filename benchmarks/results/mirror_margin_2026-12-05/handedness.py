"""Does the handedness of the matches see the mirror? Per pair of the choosing set (seed 123000000), the affine map
fitted (weighted least squares, confidence x trusted as weights) to the finest matches of the style as given; its
determinant is negative when the matches reflect the content. Scored against the truth (content and style flipped
differently) as an AUC of -det, beside the mirror search's own pick at the bundled margin.

    OMP_NUM_THREADS=1 python benchmarks/results/mirror_margin_2026-12-05/handedness.py SPLIT PAIRS OUT.json
"""

import json
import sys

import torch

from coat_model.io import load
from coat_model.train.data.faces import sample_pairs


def affine_det(flow: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[B] det of the affine map q = A p + t fitted to flow [B, 2, h, w] (style positions of the cell centres p)."""
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    design = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w)], 1)          # [N, 3]
    dets = []
    for i in range(b):
        wt = weight[i].flatten().clamp_min(0)[:, None]
        q = flow[i].flatten(1).T                                                       # [N, 2]
        lhs, rhs = design.T @ (wt * design), design.T @ (wt * q)
        coef = torch.linalg.solve(lhs + 1e-6 * torch.eye(3), rhs)                      # [3, 2]: rows x, y, 1
        dets.append(torch.linalg.det(coef[:2].T))
    return torch.stack(dets)


def auc(positive, negative) -> float:
    return sum((x > y) + 0.5 * (x == y) for x in positive for y in negative) / (len(positive) * len(negative))


def main(split: str, n_pairs: int, out: str, batch: int = 25, seed: int = 123_000_000) -> None:
    torch.set_num_threads(1)
    model = load("checkpoints/coat_faces.safetensors")
    dets, truth, picked = [], [], []
    with torch.no_grad():
        for start in range(0, n_pairs, batch):
            pairs = sample_pairs(batch, seed=seed + start, size=model.config.resolution, split=split)
            c, s = model.encode(pairs.content), model.encode(pairs.style)
            given = model.align(c, s, mirror_search=False, rotation_search=0.0, pose_fit=False, refine=False)
            finest = given.scales[-1]
            dets.append(affine_det(given.flow[finest], given.confidence[finest] * given.mask[finest]))
            truth.append(pairs.content_structure.flipped ^ pairs.style_structure.flipped)
            picked.append(model.align(c, s, pose_fit=False, refine=False).mirrored)
            print(start, flush=True)
    dets, truth, picked = torch.cat(dets), torch.cat(truth), torch.cat(picked)
    score = (-dets).tolist()
    result = dict(split=split, pairs=n_pairs, seed=seed, mirrored=int(truth.sum()),
                  det_negative_right=int(((dets < 0) & truth).sum()),
                  det_negative_wrong=int(((dets < 0) & ~truth).sum()),
                  search_right=int((picked & truth).sum()), search_wrong=int((picked & ~truth).sum()),
                  auc_minus_det=auc([v for v, t in zip(score, truth) if t], [v for v, t in zip(score, truth) if not t])
                  if 0 < int(truth.sum()) < n_pairs else None,
                  det_mirrored=dets[truth].tolist(), det_not_mirrored=dets[~truth].tolist())
    print({k: v for k, v in result.items() if not k.startswith("det_m") and not k.startswith("det_n")})
    json.dump(result, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
