"""Speed benchmark: alignment backends, end-to-end transfer, training throughput.

    python -m coat_model.bench speed --json OUT [--device cpu|cuda] [--quick] [--update-md BENCHMARKS.md]

(a) **Alignment.** ``soft_match`` (what the model's soft path runs: both directions, the cycle call included) and
    raw ``attend`` (one direction) per backend on square feature maps: C=64 random descriptors, Cv=64 value
    channels (+2 coordinate channels, as in the soft path), temperature 0.02; forward and forward+backward.
    ``hard_match`` (the inference path: argmax both ways, cycle and geometric checks; backend "argmax") and
    ``hard_match_c2f`` (the same searched around the matches of a half-size map), forward.
(b) **Transfer.** ``COAT.transfer`` (encode + align (hard, the inference default) + decode) of a randomly
    initialised model, FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` and compared with the
    floor FLOPs / peak, where peak is the best large fp32 matmul measured in the same run.
(c) **Training.** ``Trainer.train_step`` on procedural faces (AMP as ``TrainConfig(amp="auto")`` picks it: bf16 on
    CUDA, off on CPU); the step time includes building the pairs, ``data s`` shows that share.

Timing: one warm-up run, then up to ``repeats`` runs while the case stays within its run budget; the median.
An alignment case whose warm-up alone exhausts the budget reports that single run; transfer and training always
time at least one run after the warm-up (their first call pays one-off kernel and allocator set-up). On a shared
machine absolute numbers move with the load: compare ratios within one run (``--threads 1`` steadies them).

Memory (alignment only). CUDA: ``max_memory_allocated`` minus the allocation before the runs. CPU: tracemalloc
does not see torch's allocations and torch keeps no CPU allocator statistics, so each case runs in a fresh process
forked from a forkserver that has imported torch but computed nothing. The case runs once at 8² (thread pools and
libraries start), builds its inputs, resets the kernel's peak-RSS counter (``5 > /proc/self/clear_refs``) and
reports ``VmHWM - VmRSS``: the peak resident memory during its runs minus the resident memory before them
(allocator slack and library scratch included).

Skips. A case is not run when its projected L x L buffers (naive; chunked forward+backward, whose autograd keeps
every chunk's softmax) ``Lq * Lk * 4 B * factor`` exceed the memory bound, or when its time projected from the
next smaller size (x (L / L_prev)^2) exceeds the case budget; the projection is recorded and printed.

The parts: this module (the settings and the three sections' cases), ``timing`` (median of runs, matmul peak,
FLOPs), ``rss`` (peak resident memory), ``isolation`` (a case in a fresh forked process), ``speed_report``
(the issue's targets, markdown tables) and ``speed_cli`` (the command line).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .isolation import run_isolated as _run_in_fresh_process
from .rss import peak_rss, reset_peak_rss
from .timing import count_flops, matmul_peak, time_runs, top_ops
from .units import GiB
from .units import fmt_bytes as _fmt_bytes
from .units import fmt_s as _fmt_s

BACKENDS = ("xformers", "sdpa", "chunked", "naive")
OPS = ("soft_match", "attend", "hard_match", "hard_match_c2f")
HARD_OPS = ("hard_match", "hard_match_c2f")  # the inference path: forward only, its own search (backend "argmax")
MODES = ("fwd", "fwd+bwd")
TEMPERATURE = 0.02
# Lq x Lk fp32 buffers alive at the peak, in units of Lq*Lk*4 B. Measured on CPU at 128²: naive forward 2.0,
# naive forward+backward 3.0 (attend) to 4.0 (soft_match), chunked forward+backward 1.2 to 2.2.
LL_FACTOR = {("naive", "fwd"): 2, ("naive", "fwd+bwd"): 4, ("chunked", "fwd+bwd"): 2}
SECTIONS = ("align", "transfer", "train")


@dataclass
class Settings:
    device: str = "cpu"
    sections: tuple[str, ...] = SECTIONS
    sizes: tuple[int, ...] = (32, 64, 128, 256)  # feature-map sides
    backends: tuple[str, ...] = BACKENDS
    ops: tuple[str, ...] = OPS
    bwd_max_size: int = 128                      # forward+backward only up to this map side
    channels: int = 64
    value_channels: int = 64
    memory_bound: float = 8 * GiB                # bytes; L x L buffers above this are not allocated
    repeats: int = 5                             # timed runs after the warm-up
    run_budget: float = 15.0                     # s per case for the repeats
    align_budget: float = 60.0                   # skip alignment cases projected longer (s)
    case_budget: float = 60.0                    # skip transfer / training cases projected longer (s)
    preset: str = "default"
    transfer_res: tuple[int, ...] = (128, 256, 512)
    batches: tuple[int, ...] = (1, 8)
    train_res: tuple[int, ...] = (64, 128, 256)
    train_batch: int = 4
    train_preset: str = "small"                  # the preset users train on a CPU (issue 14's targets)
    train_extra: tuple[tuple[str, int, int], ...] = ()  # more training cases: (preset, px, batch)
    threads: int | None = None                   # torch.set_num_threads (None: torch's default)
    profile: bool = False                        # record the top operators of one transfer / training step per row


def quick_settings(**kw) -> Settings:
    """``--quick``: soft_match and the hard path only, forward+backward up to 64², few repeats (about 3 minutes on
    2 cores)."""
    base = dict(ops=("soft_match", "hard_match", "hard_match_c2f"), bwd_max_size=64, repeats=2, run_budget=4.0, align_budget=60.0,
                case_budget=20.0, transfer_res=(128, 256), train_res=(64, 128))
    return Settings(**{**base, **kw})


# -- (a) alignment ---------------------------------------------------------------------------------------------


def _align_step(case: dict, device: torch.device):
    from coat_model.model.attention import attend
    from coat_model.model.matching import hard_match, soft_match

    s, c, cv, backend = case["size"], case["channels"], case["value_channels"], case["backend"]
    grad = case["mode"] == "fwd+bwd"
    torch.manual_seed(0)
    if case["op"] in HARD_OPS:  # argmax matches, cycle and geometric checks; _c2f: searched around a coarser match
        inputs = [torch.randn(1, c, s, s, device=device) for _ in range(2)]
        prior = hard_match(*(F.avg_pool2d(x, 2) for x in inputs)) if case["op"] == "hard_match_c2f" else None

        def run():
            return hard_match(*inputs, prior=prior).flow.sum()
    elif case["op"] == "soft_match":
        inputs = [torch.randn(1, ch, s, s, device=device) for ch in (c, c, cv)]

        def run():
            m = soft_match(*inputs, temperature=TEMPERATURE, backend=backend)
            return m.aligned.sum() + m.flow.sum() + m.confidence.sum()
    else:
        q, k = (F.normalize(torch.randn(1, s * s, c, device=device), dim=-1) for _ in range(2))
        inputs = [q, k, torch.randn(1, s * s, cv + 2, device=device)]

        def run():
            return attend(*inputs, scale=1.0 / TEMPERATURE, backend=backend).sum()

    for t in inputs:
        t.requires_grad_(grad)

    def step():
        with torch.set_grad_enabled(grad):
            out = run()
            if grad:
                out.backward()
                for t in inputs:
                    t.grad = None

    return step


def align_case(case: dict) -> dict:
    """Time one alignment case and measure its peak extra memory (in this process; see the module docstring)."""
    device = torch.device(case["device"])
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    _align_step(dict(case, size=8), device)()  # start thread pools, kernels and workspaces before the baseline
    step = _align_step(case, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = reset_peak_rss()
    seconds, runs, _ = time_runs(step, device, case["repeats"], case["run_budget"])
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    return {"seconds": seconds, "runs": runs, "extra_bytes": max(0, peak - before)}


def run_isolated(case: dict, timeout: float) -> dict:
    """:func:`align_case` in a fresh process forked from a forkserver that has only imported torch (and the
    matching code)."""
    return _run_in_fresh_process(align_case, case, timeout, preload=("torch", "coat_model.model.matching"))


def _backend_usable(backend: str, device: torch.device) -> bool:
    from coat_model.model.attention import xformers_available

    return backend != "xformers" or xformers_available(device.type)


def bench_align(st: Settings, log=print) -> list[dict]:
    device = torch.device(st.device)
    backends = [b for b in st.backends if _backend_usable(b, device)]
    rows, last = [], {}  # last[(op, backend, mode)] = (L, seconds measured or projected)
    for size in st.sizes:
        n = size * size
        for op in st.ops:
            for mode in (("fwd",) if op in HARD_OPS else MODES):
                for backend in (["argmax"] if op in HARD_OPS else backends):
                    row = dict(op=op, size=size, L=n, backend=backend, mode=mode)
                    key = (op, backend, mode)
                    factor = LL_FACTOR.get((backend, mode))
                    projected_t = last[key][1] * (n / last[key][0]) ** 2 if key in last else None
                    if factor and n * n * 4 * factor > st.memory_bound:
                        row["projected_bytes"] = n * n * 4 * factor
                        row["skipped"] = (f"projected {_fmt_bytes(n * n * 4 * factor)} (L² x 4 B x {factor}) > "
                                          f"bound {_fmt_bytes(st.memory_bound)}")
                    elif mode == "fwd+bwd" and size > st.bwd_max_size:
                        row["skipped"] = f"fwd+bwd only up to {st.bwd_max_size}² in this run"
                    elif projected_t is not None and projected_t > st.align_budget:
                        row["projected_seconds"] = projected_t
                        row["skipped"] = f"projected {projected_t:.0f} s > budget {st.align_budget:.0f} s"
                    else:
                        case = dict(row, device=st.device, channels=st.channels, value_channels=st.value_channels,
                                    repeats=st.repeats, run_budget=st.run_budget, threads=st.threads)
                        if device.type == "cpu":
                            result = run_isolated(case, timeout=max(120.0, 4 * st.align_budget))
                        else:
                            try:
                                result = align_case(case)
                            except Exception as e:  # noqa: BLE001 - e.g. CUDA out of memory: record, go on
                                result = {"error": f"{type(e).__name__}: {e}"}
                            torch.cuda.empty_cache()
                        row.update(result)
                    if "seconds" in row:
                        last[key] = (n, row["seconds"])
                    elif "projected_seconds" in row:
                        last[key] = (n, row["projected_seconds"])
                    rows.append(row)
                    log("[align] " + _describe(row))
    return rows


def _describe(row: dict) -> str:
    head = f"{row['op']:<10} {row['size']:>3}² {row['backend']:<8} {row['mode']:<7}"
    if "seconds" in row:
        return f"{head} {_fmt_s(row['seconds'])} ({row['runs']} runs), extra {_fmt_bytes(row['extra_bytes'])}"
    return f"{head} {'error: ' + row['error'] if 'error' in row else 'skipped: ' + row['skipped']}"


def _log_profile(log, head: str, ops: list[dict]) -> None:
    log(f"{head}: where the time goes (self time, top {len(ops)} operators)")
    for o in ops:
        log(f"    {100 * o['share']:5.1f}%  {o['ms']:9.1f} ms  x{o['calls']:<5d} {o['op']}")


# -- (b) transfer ----------------------------------------------------------------------------------------------


def _model_config(preset: str, resolution: int):
    from coat_model.train.cli import PRESETS

    return PRESETS[preset](resolution=resolution)


def bench_transfer(st: Settings, log=print) -> dict:
    from coat_model.model.coat import COAT
    from coat_model.train.data.faces import FaceDataset

    device = torch.device(st.device)
    peak = matmul_peak(device)
    log(f"[transfer] fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (the best of this and one after the runs counts)")
    rows, last = [], None  # last = (flops, seconds)
    for r in st.transfer_res:
        torch.manual_seed(0)
        model = COAT(_model_config(st.preset, r)).to(device).eval().requires_grad_(False)
        images = FaceDataset(size=r, length=2, seed=0).batch([0, 1]).to(device)
        with torch.no_grad():
            flops = count_flops(lambda: model.transfer(images[:1], images[1:]))  # per image
            for b in st.batches:
                row = dict(resolution=r, batch=b, flops=flops * b, floor_s=flops * b / peak)
                projected = last[1] * flops * b / last[0] if last else None
                if projected is not None and projected > st.case_budget:
                    row.update(projected_seconds=projected, skipped=f"projected {projected:.0f} s > budget")
                    last = (flops * b, projected)
                else:
                    content = images[:1].expand(b, -1, -1, -1).contiguous()
                    style = images[1:].expand(b, -1, -1, -1).contiguous()
                    seconds, runs, warmup = time_runs(lambda: model.transfer(content, style), device, st.repeats,
                                                      st.run_budget, min_runs=1)
                    row.update(seconds=seconds, runs=runs, warmup_s=warmup, images_per_s=b / seconds,
                               floor_ratio=row["floor_s"] / seconds, flops_per_s=flops * b / seconds)
                    if st.profile:
                        row["profile"] = top_ops(lambda: model.transfer(content, style), device)
                        _log_profile(log, f"[transfer] {r} px batch {b}", row["profile"])
                    last = (flops * b, seconds)
                rows.append(row)
                log(f"[transfer] {r} px batch {b}: " + (
                    f"{_fmt_s(row['seconds'])} ({row['runs']} runs), {row['images_per_s']:.2f} img/s, "
                    f"{flops / 1e9:.1f} GFLOP/img" if "seconds" in row else "skipped: " + row["skipped"]))
        del model
    later = matmul_peak(device)  # again after the runs: the load may have changed
    if later > peak:
        peak = later
        for row in rows:
            row["floor_s"] = row["flops"] / peak
            if "seconds" in row:
                row["floor_ratio"] = row["floor_s"] / row["seconds"]
    peak_bf16 = matmul_peak(device, torch.bfloat16) if device.type == "cuda" else None
    for row in rows:
        row["flops_per_image"] = row["flops"] / row["batch"]
        if peak_bf16 and "seconds" in row:
            row["bf16_peak_share"] = row["flops_per_s"] / peak_bf16
    return {"peak_flops": peak, "peak_flops_bf16": peak_bf16, "preset": st.preset, "align_mode": "hard",
            "rows": rows}


# -- (c) training ----------------------------------------------------------------------------------------------


def bench_train(st: Settings, log=print) -> dict:
    """Training steps of ``train_preset`` at each ``train_res`` (then the ``train_extra`` cases): the whole step
    (pairs built in this process, as ``--workers 0`` trains), the model alone on pairs built beforehand, the FLOPs
    of one step (forward, backward and the optimiser, counted by ``FlopCounterMode``) and what share of the same
    run's matmul rate the step achieves (on CUDA also of its bf16 matmul rate, what AMP steps run at)."""
    from coat_model.train.cli import make_dataset
    from coat_model.train.trainer import TrainConfig, Trainer

    device = torch.device(st.device)
    peak = matmul_peak(device)
    peak_bf16 = matmul_peak(device, torch.bfloat16) if device.type == "cuda" else None
    log(f"[train] fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
        + (f", bf16 {peak_bf16 / 1e9:.1f} GFLOP/s" if peak_bf16 else ""))
    cases = [(st.train_preset, r, st.train_batch) for r in st.train_res] + [tuple(c) for c in st.train_extra]
    rows, last = [], None  # last = (preset, batch, resolution, seconds per step)
    for preset, r, batch in cases:
        row = dict(resolution=r, batch=batch, preset=preset)
        same = last is not None and last[:2] == (preset, batch)
        projected = last[3] * (r / last[2]) ** 2 if same else None
        if projected is not None and projected > st.case_budget:
            row.update(projected_seconds=projected, skipped=f"projected {projected:.0f} s/step > budget")
            last = (preset, batch, r, projected)
        else:
            cfg = TrainConfig(steps=10_000, batch_size=batch, random_at_bootstrap=False)  # a long run's whole mix
            trainer = Trainer(_model_config(preset, r), cfg, make_dataset("procedural:faces", r), device=device)
            seconds, runs, warmup = time_runs(trainer.train_step, device, max(1, st.repeats // 2), st.run_budget,
                                              min_runs=1)
            batches = trainer.pairs(trainer.step, device)  # drawn on the CPU, built on the device
            data_s, _, _ = time_runs(lambda: trainer.pairs(trainer.step, device), device, 2, st.run_budget)
            model_s, _, _ = time_runs(lambda: trainer.train_step(batches), device, max(1, st.repeats // 2),
                                      st.run_budget, min_runs=1)
            flops = count_flops(lambda: trainer.train_step(batches))
            if st.profile:
                row["profile"] = top_ops(lambda: trainer.train_step(batches), device)
                _log_profile(log, f"[train] {preset} {r} px batch {batch}", row["profile"])
            amp = str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off"
            row.update(seconds=seconds, runs=runs, warmup_s=warmup, images_per_s=batch / seconds,
                       data_s=data_s, model_s=model_s, pipeline_share=data_s / (data_s + model_s), amp=amp,
                       flops=flops, flops_per_image=flops / batch, flops_per_s=flops / seconds,
                       peak_share=flops / seconds / peak)
            last = (preset, batch, r, seconds)
            del trainer
        rows.append(row)
        log(f"[train] {preset} {r} px batch {batch}: " + (
            f"{_fmt_s(row['seconds'])}/step ({row['runs']} runs), {row['images_per_s']:.2f} img/s, "
            f"{row['flops'] / 1e9:.1f} GFLOP/step, {100 * row['peak_share']:.0f}% of the matmul rate, "
            f"pipeline {100 * row['pipeline_share']:.0f}%, amp {row['amp']}"
            if "seconds" in row else "skipped: " + row["skipped"]))
    peak = max(peak, matmul_peak(device))  # again after the runs: the load may have changed
    if peak_bf16:
        peak_bf16 = max(peak_bf16, matmul_peak(device, torch.bfloat16))
    for row in rows:
        if "seconds" in row:
            row["peak_share"] = row["flops_per_s"] / peak
            if peak_bf16:
                row["bf16_peak_share"] = row["flops_per_s"] / peak_bf16
    return {"peak_flops": peak, "peak_flops_bf16": peak_bf16, "preset": st.train_preset, "rows": rows}
