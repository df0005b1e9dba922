"""The task a run trains on, as a probe: 32 warp pairs of the training distribution (the same face warped and
recoloured, seed 5). Usage: probe.py TREE CKPT nn|align
  nn:    the raw nearest neighbour of every content descriptor among the style's, per scale, within 0.05 / 0.10
         of the width of the true match, against the identity's (raw_nn_*.txt)
  align: the per-pixel matches of `align` (defaults, and without the pose search, fit and median), PCK@0.02/0.05/
         0.10, against the identity's (warp_pck_*.txt)
(raw_nn_*.txt and warp_pck_*.txt were written by the two scripts this one merges, raw_nn.py and warp_pck.py.)"""
import sys
import torch
import torch.nn.functional as F
sys.path.insert(0, sys.argv[1])  # a frozen tree
from coat_model.bench.metrics import pck
from coat_model.io import load
from coat_model.model.coords import identity_flow
from coat_model.train.cli import make_dataset
from coat_model.train.pairs import GlobalSampler, build_pairs

torch.set_num_threads(1)
m = load(sys.argv[2])
r = m.config.resolution
ds = make_dataset("procedural:faces", r, seed=123)
b = build_pairs(ds, GlobalSampler(len(ds), 5), list(range(5000, 5032)), 5, (1.0, 0.0, 0.0), palette_share=0.5,
                blur_share=0.3)
with torch.no_grad():
    c, s = m.encode(b.content), m.encode(b.style)
print(sys.argv[2])
if sys.argv[3] == "align":
    plain = dict(mirror_search=False, rotation_search=0, pose_fit=False, flow_median=0)
    for name, kw in [("defaults", {}), ("plain", plain)]:
        with torch.no_grad():
            flow = m.align(c, s, **kw).refined.flow.float()
        print(name, "warp PCK@0.02/0.05/0.10", [round(pck(flow, b.flow, b.flow_valid, a), 3) for a in (0.02, 0.05, 0.1)])
    same = identity_flow(r, "cpu").repeat(b.flow.shape[0], 1, 1, 1)
    print("identity warp PCK", [round(pck(same, b.flow, b.flow_valid, a), 3) for a in (0.02, 0.05, 0.1)])
    sys.exit()
for sc in m.config.scales + ((1,) if 1 in c.descriptors and r <= 64 else ()):  # 1/1 at 128 px: 34 GB of scores
    dc, dst = c.descriptors[sc], s.descriptors[sc]
    h, w = dc.shape[-2:]
    idx = torch.einsum("bcn,bcm->bnm", dc.flatten(2), dst.flatten(2)).argmax(-1)  # [B, h*w] nearest style cell
    gt = F.interpolate(b.flow, size=(h, w), mode="bilinear", align_corners=False) if sc > 1 else b.flow
    ok = F.interpolate(b.flow_valid.float(), size=(h, w), mode="nearest")[:, 0].flatten(1) > 0.5
    gx, gy = [(gt[:, i].flatten(1) + 1) / 2 * (r - 1) for i in (0, 1)]  # true matches, pixels
    centre = lambda i: (i.float() + 0.5) * sc - 0.5  # noqa: E731  a cell's centre, pixels
    px, py = centre(idx % w), centre(idx // w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ix, iy = centre(xs.flatten())[None], centre(ys.flatten())[None]
    err = ((px - gx) ** 2 + (py - gy) ** 2).sqrt()[ok]
    ierr = ((ix - gx) ** 2 + (iy - gy) ** 2).sqrt()[ok]
    share = lambda e, a: (e <= a * r).float().mean()  # noqa: E731
    print(f"s{sc}: nn within 0.05R {share(err, 0.05):.3f} 0.10R {share(err, 0.1):.3f} | identity "
          f"{share(ierr, 0.05):.3f} {share(ierr, 0.1):.3f}")
