"""Cache, per choosing pair, the refined per-pixel flow in the style's coordinates (no fit, no median), the truth."""
import sys, torch
sys.path.insert(0, "/work/main")
from coat_model.io import load
from coat_model.train.data.faces import sample_pairs
split, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
model = load("/work/main/checkpoints/coat_faces.safetensors").eval()
out = []
with torch.no_grad():
    for start in range(0, n, 25):
        k = min(25, n - start)
        pairs = sample_pairs(k, seed=seed + start, size=model.config.resolution, split=split)
        c, s = model.encode(pairs.content), model.encode(pairs.style)
        a = model.align(c, s, flow_affine=0, flow_median=0)
        voters = c.frame.image_area(c.image.device)
        voters = voters if c.mask is None else voters * c.mask
        out.append(dict(flow=a.refined.flow, guide=(c.image + 1) / 2, voters=voters, sigma=a.options.flow_median_sigma,
                        gt=pairs.flow, visible=pairs.visible, labels=pairs.content_labels))
        print(start, flush=True)
torch.save(out, f"/tmp/seg/cache2_{split}_{seed}_{n}.pt")
