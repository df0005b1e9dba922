import sys, torch
sys.path.insert(0, "/tmp/seg")
from lib import *
from coat_model.bench.metrics import _correct
torch.set_num_threads(1)
cache = torch.load(sys.argv[1])
cloth = LABELS.index("clothing")
bins = torch.linspace(-1, 1.2, 12)
hit = torch.zeros(len(bins)); cnt = torch.zeros(len(bins)); dy = torch.zeros(len(bins))
chit = torch.zeros(len(bins)); ccnt = torch.zeros(len(bins))
for batch in cache:
    flow, guide = batch["flow"], batch["guide"]; sigma = batch["sigma"] or 10.0
    voters = batch["voters"].expand(len(flow), 1, -1, -1)
    gt, vis, labels = batch["gt"], batch["visible"], batch["labels"]
    if labels.dim() == 3: labels = labels[:, None]
    if vis.dim() == 3: vis = vis[:, None]
    w = guided_median(guided_affine(flow, guide, 10, sigma, voters, wide=28), guide, 4, sigma, voters)
    ok = _correct(w, gt, 0.05)[:, 0]
    m = vis[:, 0] & (labels[:, 0] == cloth)
    gy = gt[:, 1]; cy = torch.linspace(-1, 1, flow.shape[-1]).view(1, -1, 1).expand_as(gy)
    b = torch.bucketize(gy[m], bins)
    hit.index_add_(0, b.clamp(max=len(bins)-1), ok[m].float()); cnt.index_add_(0, b.clamp(max=len(bins)-1), torch.ones(m.sum()))
    dy.index_add_(0, b.clamp(max=len(bins)-1), (w[:, 1] - gt[:, 1])[m])
    b2 = torch.bucketize(cy[m], bins).clamp(max=len(bins)-1)
    chit.index_add_(0, b2, ok[m].float()); ccnt.index_add_(0, b2, torch.ones(m.sum()))
for i in range(len(bins)):
    lo = bins[i-1].item() if i else -9
    print(f"y <= {bins[i]:+.2f}: style-y bin n {int(cnt[i]):6d} pck {hit[i]/max(cnt[i],1):.2f} mean dy {dy[i]/max(cnt[i],1)*63.5:+.1f}px | content-y bin n {int(ccnt[i]):6d} pck {chit[i]/max(ccnt[i],1):.2f}")
