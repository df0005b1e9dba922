import sys, torch
sys.path.insert(0, "/work/main")
from coat_model.model.affine import guided_affine
from coat_model.model.median import guided_median
from coat_model.colour import srgb_to_lab
from coat_model.bench.metrics import _correct
from coat_model.train.data.faces import LABELS

def components(lab, inside, t):
    """lab [3,H,W], inside bool [H,W] -> segment id per pixel [H,W] (outside: own id), 4-connected, |dLAB|<t."""
    h, w = inside.shape
    idx = torch.arange(h * w).view(h, w)
    a, b = [], []
    for (sa, sb) in (((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                     ((slice(0, -1), slice(None)), (slice(1, None), slice(None)))):
        ok = inside[sa] & inside[sb] & ((lab[(slice(None),) + sa] - lab[(slice(None),) + sb]).norm(dim=0) < t)
        a.append(idx[sa][ok]); b.append(idx[sb][ok])
    a, b = torch.cat(a), torch.cat(b)
    lbl = torch.arange(h * w)
    while True:
        m = torch.minimum(lbl[a], lbl[b])
        new = lbl.clone()
        new.scatter_reduce_(0, a, m, "amin"); new.scatter_reduce_(0, b, m, "amin")
        new = new[new]; new = new[new]
        if torch.equal(new, lbl):
            return lbl.view(h, w)
        lbl = new

def segment_fit(flow, seg, weight, huber, iters=2, ridge=1e-3):
    """flow [2,H,W], seg [H,W] ids, weight [H,W] -> per-pixel affine fit of its segment [2,H,W], segment size [H,W]."""
    c, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ids = seg.reshape(-1); n = h * w
    f = flow.reshape(2, -1).double(); x = xs.reshape(-1).double(); y = ys.reshape(-1).double()
    w0 = weight.reshape(-1).double()
    def ssum(v): return torch.zeros(n, dtype=torch.float64).index_add_(0, ids, v)
    cnt = ssum(w0); cx = ssum(w0 * x) / cnt.clamp_min(1e-9); cy = ssum(w0 * y) / cnt.clamp_min(1e-9)
    X = x - cx[ids]; Y = y - cy[ids]
    basis = torch.stack([torch.ones_like(X), X, Y], 1)  # [N,3]
    wt = w0.clone()
    for it in range(iters + 1):
        M = torch.zeros(n, 3, 3, dtype=torch.float64).index_add_(0, ids, wt[:, None, None] * basis[:, :, None] * basis[:, None, :])
        tot = M[:, 0, 0]
        M = M + torch.diag(torch.tensor([1e-9, ridge, ridge], dtype=torch.float64)) * tot[:, None, None].clamp_min(1e-9)
        R = torch.zeros(n, 3, 2, dtype=torch.float64).index_add_(0, ids, wt[:, None, None] * basis[:, :, None] * f.T[:, None, :])
        coef = torch.linalg.solve(M, R)  # [n,3,2]
        pred = (basis[:, :, None] * coef[ids]).sum(1)  # [N,2]
        res = (pred - f.T).norm(dim=1)
        wt = w0 / (res / huber).clamp_min(1.0)
    size = torch.zeros(n).index_add_(0, ids, (w0 > 0.5).float())
    return pred.T.reshape(2, h, w).float(), size[ids].view(h, w)

def pck_parts(final, gt, visible, labels, alpha=0.05):
    ok = _correct(final, gt, alpha)
    out = {"all": (ok[visible].float().sum().item(), visible.sum().item())}
    for i, name in enumerate(LABELS[1:], 1):
        m = visible & (labels == i)
        out[name] = (ok[m].float().sum().item(), m.sum().item())
    return out
