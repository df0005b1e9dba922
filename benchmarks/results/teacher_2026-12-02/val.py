"""Validation: the checkpoint's defaults on held-out validation pairs (seed 555000000), coat only (+ no-median)."""
import sys, json, time, torch
sys.path.insert(0, sys.argv[1])  # frozen tree
from coat_model.io import load
from coat_model.bench.quality import sample_pairs, compute_metrics
ckpt, n, split = sys.argv[2], int(sys.argv[3]), sys.argv[4]
opts = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
torch.set_num_threads(1)
m = load(ckpt)
r = m.config.resolution
S = {}; N = 0; t0 = time.time()
for start in range(0, n, 25):
    k = min(25, n - start)
    p = sample_pairs(k, seed=555_000_000 + start, size=r, split=split)
    with torch.no_grad():
        c, s = m.encode(p.content), m.encode(p.style)
        a = m.align(c, s, **opts)
        out = m.decode(c, a)
        flow = a.refined.flow
        conf = torch.nn.functional.interpolate(a.mask[a.scales[-1]].float(), size=(r, r), mode="nearest") > 0.5
    met = compute_metrics(out.float(), p.target, p.content_labels, p.content, pred_flow=flow.float(), gt_flow=p.flow,
                          visible=p.visible, confidence=conf)
    for key, v in met.items():
        if v is not None: S[key] = S.get(key, 0) + v * k
    N += k
res = {k: round(v / N, 4) for k, v in S.items()}
print(json.dumps({"ckpt": ckpt, "n": n, "split": split, "opts": opts, "secs": round(time.time() - t0), **res}))
