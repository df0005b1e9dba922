import sys, torch
sys.path.insert(0, "/tmp/seg")
from lib import *
from coat_model.bench.metrics import _correct
torch.set_num_threads(1)
cache = torch.load(sys.argv[1])
cloth = LABELS.index("clothing")
rows = []
for batch in cache:
    flow, guide = batch["flow"], batch["guide"]; sigma = batch["sigma"] or 10.0
    voters = batch["voters"].expand(len(flow), 1, -1, -1)
    gt, vis, labels = batch["gt"], batch["visible"], batch["labels"]
    if labels.dim() == 3: labels = labels[:, None]
    if vis.dim() == 3: vis = vis[:, None]
    w = guided_median(guided_affine(flow, guide, 10, sigma, voters, wide=28), guide, 4, sigma, voters)
    ok = _correct(w, gt, 0.05)
    h = flow.shape[-1]
    for i in range(len(flow)):
        m = vis[i, 0] & (labels[i, 0] == cloth)
        allm = vis[i, 0]
        err = ((w[i] - gt[i]).norm(dim=0))[m] * (h - 1) / 2  # px
        mean_off = (w[i] - gt[i])[:, m].mean(1) * (h - 1) / 2 if m.any() else torch.zeros(2)
        rows.append((m.sum().item(), ok[i, 0][m].float().mean().item() if m.any() else float('nan'),
                     ok[i, 0][allm].float().mean().item(), mean_off.tolist()))
rows.sort(key=lambda r: r[1])
tot = sum(r[0] for r in rows)
for r in rows: print(f"cloth px {r[0]:5d}  cloth pck {r[1]:.2f}  image pck {r[2]:.2f}  mean offset px ({r[3][0]:+.1f},{r[3][1]:+.1f})")
