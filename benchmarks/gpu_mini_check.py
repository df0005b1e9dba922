"""A one-minute subset of the GPU check (attention parity, SDPA kernel choice, timings) for a tight device budget."""
import json, sys, time
import torch, torch.nn.functional as F
from coat_model.model.attention import attend, xformers_available

dev = "cuda"
res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "xformers": xformers_available("cuda")}
g = torch.Generator(dev).manual_seed(0)
for side in (64, 128):
    L = side * side
    q = F.normalize(torch.randn(1, L, 64, device=dev, generator=g), dim=-1)
    k = F.normalize(torch.randn(1, L, 64, device=dev, generator=g), dim=-1)
    v = torch.randn(1, L, 66, device=dev, generator=g)
    ref = attend(q, k, v, scale=50.0, backend="naive") if side == 64 else None
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        qq, kk, vv = (t.to(dtype) for t in (q, k, v))
        out = attend(qq, kk, vv, scale=50.0, backend="sdpa")
        if ref is not None:
            res[f"sdpa_{side}_{dtype}_maxerr"] = (out.float() - ref).abs().max().item()
        pad = [F.pad(t.to(dtype if dtype != torch.bfloat16 else torch.float32), (0, 72 - t.shape[-1])).unsqueeze(1) for t in (q, k, v)]
        res[f"sdp_choice_{side}_{dtype}"] = int(torch._fused_sdp_choice(*pad, None, 0.0, False, scale=50.0))
    for backend in ("sdpa", "naive", "chunked"):
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(5):
            t = time.perf_counter(); attend(q, k, v, scale=50.0, backend=backend); torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        res[f"time_{backend}_{side}_ms"] = sorted(times)[2] * 1e3
        res[f"mem_{backend}_{side}_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
json.dump(res, open(sys.argv[1], "w"), indent=1)
for key, value in res.items():
    print(f"{key:36s} {value}")
