"""Edge bias per stage: cell matches (scale 2, interpolated per pixel), refined, on 25 choosing pairs."""
import sys, torch
sys.path.insert(0, "/work/main")
from coat_model.io import load
from coat_model.train.data.faces import sample_pairs
from coat_model.bench.metrics import _correct
from coat_model.bench.quality import cell_flow_to_pixels
torch.set_num_threads(1)
model = load("/work/main/checkpoints/coat_faces.safetensors").eval()
split = sys.argv[1] if len(sys.argv) > 1 else "easy"
pairs = sample_pairs(25, seed=123000000, size=128, split=split)
edges = {"bottom": lambda g: 1 - g[:, 1], "left": lambda g: g[:, 0] + 1, "right": lambda g: 1 - g[:, 0]}
bins = torch.tensor([0.05, 0.1, 0.2, 0.3, 2.1])
def report(name, flow, gt, vis):
    ok = _correct(flow, gt, 0.05)[:, 0]; m = vis[:, 0]; d = (flow - gt) * 63.5
    print(name, f"all pck {ok[m].float().mean():.3f}")
    for k, f in edges.items():
        dist = f(gt)[m]; b = torch.bucketize(dist, bins).clamp(max=len(bins) - 1)
        inward = {"bottom": -d[:, 1], "left": d[:, 0], "right": -d[:, 0]}[k][m]
        a = torch.zeros(len(bins), 3).index_add_(0, b, torch.stack([torch.ones_like(dist), ok[m].float(), inward], 1))
        print("  ", k, "  ".join(f"<{bins[i]:.2f}: n{int(a[i,0])} pck {a[i,1]/max(a[i,0],1):.2f} in {a[i,2]/max(a[i,0],1):+.1f}" for i in range(len(bins))), flush=True)
with torch.no_grad():
    c, s = model.encode(pairs.content), model.encode(pairs.style)
    vis = pairs.visible if pairs.visible.dim() == 4 else pairs.visible[:, None]
    a = model.align(c, s, flow_affine=0, flow_median=0)
    cells = cell_flow_to_pixels(a.flow[2], 2, 128)
    trusted = torch.nn.functional.interpolate(a.mask[2].float(), size=(128, 128), mode="nearest") > 0.5
    print("trusted share", trusted[vis].float().mean().item())
    report("cells trusted", cells, pairs.flow, vis & trusted)
    report("cells untrusted", cells, pairs.flow, vis & ~trusted)
    report("refined trusted", a.refined.flow, pairs.flow, vis & trusted)
    report("refined untrusted", a.refined.flow, pairs.flow, vis & ~trusted)
    print(a.options)
