"""Fill untrusted pixel matches by their displacement (flow minus the pixel's own position) instead of the flow."""
import sys, torch
sys.path.insert(0, "/work/main")
import coat_model.model.coat as coat_mod
from coat_model.model.gather import fill_matches
from coat_model.model.fill import propagate
from coat_model.model.matching import Match
from coat_model.train.pairs import identity_flow
from coat_model.io import load
from coat_model.train.data.faces import sample_pairs
from coat_model.bench.metrics import _correct
torch.set_num_threads(1)
def disp_fill(pixels, sigma):
    m = pixels.mask.to(pixels.flow.dtype)
    ident = identity_flow(pixels.flow.shape[-1]).to(pixels.flow)
    d = pixels.flow - ident
    filled = propagate(d, m, d, sigma) + ident
    return Match(flow=m * pixels.flow + (1 - m) * filled.clamp(-1, 1), confidence=pixels.confidence, mask=pixels.mask)
model = load("/work/main/checkpoints/coat_faces.safetensors").eval()
split, n = sys.argv[1], int(sys.argv[2])
edges = {"bottom": lambda g: 1 - g[:, 1], "left": lambda g: g[:, 0] + 1, "right": lambda g: 1 - g[:, 0]}
bins = torch.tensor([0.05, 0.1, 0.2, 2.1])
def report(name, flow, gt, vis):
    ok = _correct(flow, gt, 0.05)[:, 0]; m = vis[:, 0]; d = (flow - gt) * 63.5
    line = f"{name:28s} pck {ok[m].float().mean():.3f} |"
    for k, f in edges.items():
        dist = f(gt)[m]; b = torch.bucketize(dist, bins).clamp(max=len(bins) - 1)
        inward = {"bottom": -d[:, 1], "left": d[:, 0], "right": -d[:, 0]}[k][m]
        a = torch.zeros(len(bins), 3).index_add_(0, b, torch.stack([torch.ones_like(dist), ok[m].float(), inward], 1))
        line += f" {k} " + " ".join(f"{a[i,1]/max(a[i,0],1):.2f}/{a[i,2]/max(a[i,0],1):+.1f}" for i in range(len(bins) - 1))
    print(line, flush=True)
with torch.no_grad():
    for start in range(0, n, 25):
        pairs = sample_pairs(min(25, n - start), seed=123000000 + start, size=128, split=split)
        c, s = model.encode(pairs.content), model.encode(pairs.style)
        vis = pairs.visible if pairs.visible.dim() == 4 else pairs.visible[:, None]
        for name, fill in (("flow fill", fill_matches), ("displacement fill", disp_fill)):
            coat_mod.fill_matches = fill
            for v, kw in (("raw", dict(flow_affine=0, flow_median=0)), ("file", {}), ("w28", dict(flow_affine=10, flow_affine_wide=28))):
                a = model.align(c, s, **kw)
                report(f"{start} {name} {v}", a.refined.flow, pairs.flow, vis)
