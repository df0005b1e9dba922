import sys, torch
sys.path.insert(0, "/tmp/seg")
from lib import *
from coat_model.bench.metrics import _correct
torch.set_num_threads(1)
cache = torch.load(sys.argv[1])
# error of the raw refined flow (no fit) by the true style position's distance to each edge
edges = {"bottom": lambda g: 1 - g[:, 1], "top": lambda g: g[:, 1] + 1, "left": lambda g: g[:, 0] + 1, "right": lambda g: 1 - g[:, 0]}
bins = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.5, 2.1])
acc = {k: torch.zeros(len(bins), 4) for k in edges}
for batch in cache:
    flow = batch["flow"]; gt, vis = batch["gt"], batch["visible"]
    if vis.dim() == 3: vis = vis[:, None]
    ok = _correct(flow, gt, 0.05)[:, 0]
    m = vis[:, 0]
    d = (flow - gt) * 63.5
    for k, f in edges.items():
        dist = f(gt)[m]
        b = torch.bucketize(dist, bins).clamp(max=len(bins) - 1)
        inward = {"bottom": -d[:, 1], "top": d[:, 1], "left": d[:, 0], "right": -d[:, 0]}[k][m]
        acc[k].index_add_(0, b, torch.stack([torch.ones_like(dist), ok[m].float(), inward, inward.abs()], 1))
for k, a in acc.items():
    print(k, "  ".join(f"<{bins[i]:.2f}: n{int(a[i,0])} pck {a[i,1]/max(a[i,0],1):.2f} inward {a[i,2]/max(a[i,0],1):+.1f}px" for i in range(len(bins))))
