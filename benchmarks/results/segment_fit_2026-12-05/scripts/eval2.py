import sys, torch
sys.path.insert(0, "/tmp/seg")
from lib import *
import torch.nn.functional as F
from coat_model.model.affine import _fit_windows, WIDE_SHARE
torch.set_num_threads(1)
path, variants = sys.argv[1], sys.argv[2:]
cache = torch.load(path)
tot = {}
def add(name, parts):
    d = tot.setdefault(name, {})
    for k, (a, b) in parts.items():
        x = d.setdefault(k, [0.0, 0]); x[0] += a; x[1] += b
def blur(x, s):
    r = int(3 * s); t = torch.arange(-r, r + 1).float(); k = torch.exp(-t**2 / (2 * s * s)); k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
def wide_with(flow, lab_n, lab_w, voters, lo=WIDE_SHARE[0], hi=WIDE_SHARE[1], R=28):
    narrow, _ = _fit_windows(flow, lab_n, voters, 10, 10.0)
    _, share = _fit_windows(flow, lab_w, voters, 10, 10.0)
    wide = _fit_windows(flow, lab_w, voters, R, 10.0)[0]
    take = ((share - lo) / (hi - lo)).clamp(0, 1)
    return narrow + take * (wide - narrow)
for batch in cache:
    flow, guide = batch["flow"], batch["guide"]; sigma = batch["sigma"] or 10.0
    voters = batch["voters"].expand(len(flow), 1, -1, -1)
    gt, vis, labels = batch["gt"], batch["visible"], batch["labels"]
    if labels.dim() == 3: labels = labels[:, None]
    if vis.dim() == 3: vis = vis[:, None]
    h = flow.shape[-1]; huber = 2.0 * 2 / (h - 1)
    lab = srgb_to_lab(guide.float())
    base = {"none": flow}
    for v in variants:
        if v in base: continue
        if v == "a10": base[v] = guided_affine(flow, guide, 10, sigma, voters)
        elif v == "w28": base[v] = guided_affine(flow, guide, 10, sigma, voters, wide=28)
        elif v.startswith("blur:"):   # blur:s  the wide fit's likeness from a blurred guide
            base[v] = wide_with(flow, lab, srgb_to_lab(blur(guide.float(), float(v.split(":")[1]))), voters)
        elif v == "gtfit":  # the true flow's own per-true-part affine fit: the ceiling of a per-part affine model
            outs = []
            for i in range(len(flow)):
                fit, size = segment_fit(gt[i], labels[i, 0].long(), vis[i, 0].float(), huber)
                outs.append(fit)
            base[v] = torch.stack(outs)
        elif v == "mix":  # the per-true-part fit on clothing only, the wide fit elsewhere
            cloth = LABELS.index("clothing")
            outs = []
            for i in range(len(flow)):
                fit, size = segment_fit(flow[i], labels[i, 0].long(), voters[i, 0], huber)
                outs.append(torch.where(labels[i, 0] == cloth, fit, base["w28"][i]))
            base[v] = torch.stack(outs)
        elif v.startswith("oracle:"):
            outs = []
            for i in range(len(flow)):
                fit, size = segment_fit(flow[i], labels[i, 0].long(), voters[i, 0], huber)
                outs.append(fit)
            base[v] = torch.stack(outs)
        else:
            _, t, s0, s1, on = v.split(":")
            t, s0, s1 = float(t), float(s0), float(s1)
            outs = []
            for i in range(len(flow)):
                seg = components(lab[i], voters[i, 0] > 0.5, t)
                fit, size = segment_fit(flow[i], seg, voters[i, 0], huber)
                take = ((size - s0) / max(1.0, s1 - s0)).clamp(0, 1)
                ref = base[on][i]
                outs.append(ref + take * (fit - ref))
            base[v] = torch.stack(outs)
    for v in variants:
        final = base[v] if v == "gtfit" else guided_median(base[v], guide, 4, sigma, voters)
        add(v, pck_parts(final, gt, vis, labels))
for v in variants:
    d = tot[v]
    print(f"{v:24s} all {d['all'][0]/d['all'][1]:.3f}  " + " ".join(f"{k[:5]}:{a/max(b,1):.2f}" for k, (a, b) in d.items() if k != 'all'), flush=True)
