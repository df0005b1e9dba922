"""Speed benchmark: alignment backends, end-to-end transfer, training throughput.

    python -m coat_model.bench speed --json OUT [--device cpu|cuda] [--quick] [--update-md BENCHMARKS.md]

(a) **Alignment.** ``soft_match`` (what the model's soft path runs: both directions, the cycle call included) and
    raw ``attend`` (one direction) per backend on square feature maps: C=64 random descriptors, Cv=64 value
    channels (+2 coordinate channels, as in the soft path), temperature 0.02; forward and forward+backward.
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
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

BACKENDS = ("xformers", "sdpa", "chunked", "naive")
OPS = ("soft_match", "attend")
MODES = ("fwd", "fwd+bwd")
TEMPERATURE = 0.02
# Lq x Lk fp32 buffers alive at the peak, in units of Lq*Lk*4 B. Measured on CPU at 128²: naive forward 2.0,
# naive forward+backward 3.0 (attend) to 4.0 (soft_match), chunked forward+backward 1.2 to 2.2.
LL_FACTOR = {("naive", "fwd"): 2, ("naive", "fwd+bwd"): 4, ("chunked", "fwd+bwd"): 2}
MiB, GiB = 2**20, 2**30
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
    threads: int | None = None                   # torch.set_num_threads (None: torch's default)


def quick_settings(**kw) -> Settings:
    """``--quick``: soft_match only, forward+backward up to 64², few repeats (about 3 minutes on 2 cores)."""
    base = dict(ops=("soft_match",), bwd_max_size=64, repeats=2, run_budget=4.0, align_budget=60.0,
                case_budget=20.0, transfer_res=(128, 256), train_res=(64, 128))
    return Settings(**{**base, **kw})


# -- measurement helpers ---------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, device, repeats: int, budget: float, min_runs: int = 0) -> tuple[float, int, float]:
    """(median seconds, timed runs, warm-up seconds) of ``fn()``: a warm-up run, then at least ``min_runs`` and up
    to ``repeats`` timed runs while the case stays within ``budget`` s. Without timed runs the warm-up is the time.
    """
    device = torch.device(device)
    times, start = [], time.perf_counter()
    for i in range(repeats + 1):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
        if i >= min_runs and time.perf_counter() - start + times[-1] > budget:
            break
    runs = times[1:] or times
    return statistics.median(runs), len(runs), times[0]


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux) and return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status("VmRSS")


def peak_rss() -> int:
    return _proc_status("VmHWM")


def matmul_peak(device, dtype=torch.float32, n: int | None = None, runs: int = 5) -> float:
    """Best FLOP/s of ``runs`` large square matmuls on ``device`` (the practical peak the floor is measured
    against; the best, not the median, since a busy machine only ever slows a run down)."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 8192)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# -- (a) alignment ---------------------------------------------------------------------------------------------


def _align_step(case: dict, device: torch.device):
    from coat_model.attention import attend
    from coat_model.matching import soft_match

    s, c, cv, backend = case["size"], case["channels"], case["value_channels"], case["backend"]
    grad = case["mode"] == "fwd+bwd"
    torch.manual_seed(0)
    if case["op"] == "soft_match":
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


def _child(conn, case: dict) -> None:
    try:
        conn.send(align_case(case))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which goes on
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


_FORKSERVER = None


def run_isolated(case: dict, timeout: float) -> dict:
    """:func:`align_case` in a fresh process forked from a forkserver that has only imported torch."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = mp.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["torch", "coat_model.matching"])
    receiver, sender = _FORKSERVER.Pipe(duplex=False)
    proc = _FORKSERVER.Process(target=_child, args=(sender, case), daemon=True)
    proc.start()
    sender.close()
    try:
        result = receiver.recv() if receiver.poll(timeout) else {"error": f"timed out after {timeout:.0f} s"}
    except EOFError:
        proc.join(5)
        result = {"error": f"worker died (exit code {proc.exitcode}; out of memory?)"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return result


def _backend_usable(backend: str, device: torch.device) -> bool:
    from coat_model.attention import xformers_available

    return backend != "xformers" or xformers_available(device.type)


def bench_align(st: Settings, log=print) -> list[dict]:
    device = torch.device(st.device)
    backends = [b for b in st.backends if _backend_usable(b, device)]
    rows, last = [], {}  # last[(op, backend, mode)] = (L, seconds measured or projected)
    for size in st.sizes:
        n = size * size
        for op in st.ops:
            for mode in MODES:
                for backend in backends:
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


# -- (b) transfer ----------------------------------------------------------------------------------------------


def _model_config(preset: str, resolution: int):
    from coat_model.train import PRESETS

    return PRESETS[preset](resolution=resolution)


def bench_transfer(st: Settings, log=print) -> dict:
    from coat_model.data.faces import FaceDataset
    from coat_model.model import COAT

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
                               floor_ratio=row["floor_s"] / seconds)
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
    return {"peak_flops": peak, "preset": st.preset, "align_mode": "hard", "rows": rows}


# -- (c) training ----------------------------------------------------------------------------------------------


def bench_train(st: Settings, log=print) -> list[dict]:
    from coat_model.train import make_dataset
    from coat_model.trainer import TrainConfig, Trainer

    device = torch.device(st.device)
    rows, last = [], None  # last = (resolution, seconds per step)
    for r in st.train_res:
        row = dict(resolution=r, batch=st.train_batch, preset=st.preset)
        projected = last[1] * (r / last[0]) ** 2 if last else None
        if projected is not None and projected > st.case_budget:
            row.update(projected_seconds=projected, skipped=f"projected {projected:.0f} s/step > budget")
            last = (r, projected)
        else:
            trainer = Trainer(_model_config(st.preset, r), TrainConfig(steps=10_000, batch_size=st.train_batch),
                              make_dataset("procedural:faces", r), device=device)
            seconds, runs, warmup = time_runs(trainer.train_step, device, max(1, st.repeats // 2), st.run_budget,
                                              min_runs=1)
            t = time.perf_counter()
            trainer._pairs(trainer.step)  # the data share of a step: building one batch of pairs
            data_s = time.perf_counter() - t
            amp = str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off"
            row.update(seconds=seconds, runs=runs, warmup_s=warmup, images_per_s=st.train_batch / seconds,
                       data_s=data_s, amp=amp)
            last = (r, seconds)
            del trainer
        rows.append(row)
        log(f"[train] {r} px batch {st.train_batch}: " + (
            f"{_fmt_s(row['seconds'])}/step ({row['runs']} runs), {row['images_per_s']:.2f} img/s, amp {row['amp']}"
            if "seconds" in row else "skipped: " + row["skipped"]))
    return rows


# -- targets of issue 6 ------------------------------------------------------------------------------------------


def _find(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured figure and pass / miss / not measured."""
    out = []
    align = result.get("align", [])

    def add(target, measured, ok):
        out.append(dict(target=target, measured=measured, status="not measured" if ok is None else
                        ("pass" if ok else "miss")))

    for mode in MODES:
        fast, slow = (_find(align, op="soft_match", size=128, mode=mode, backend=b) for b in ("sdpa", "naive"))
        if mode == "fwd+bwd" and not (fast and "seconds" in fast):
            continue
        both = fast and slow and "seconds" in fast and "seconds" in slow
        speed = slow["seconds"] / fast["seconds"] if both else None
        mem = slow["extra_bytes"] / max(fast["extra_bytes"], 1) if both else None
        add(f"sdpa soft_match 128² {mode}: >= 8x faster than naive",
            f"{speed:.1f}x ({_fmt_s(slow['seconds'])} / {_fmt_s(fast['seconds'])})" if both else "-",
            None if speed is None else speed >= 8)
        add(f"sdpa soft_match 128² {mode}: >= 30x less extra memory than naive",
            f"{mem:.0f}x ({_fmt_bytes(slow['extra_bytes'])} / {_fmt_bytes(fast['extra_bytes'])})" if both else "-",
            None if mem is None else mem >= 30)
    big = _find(align, op="soft_match", size=256, mode="fwd", backend="sdpa")
    naive = _find(align, op="soft_match", size=256, mode="fwd", backend="naive")
    measured = big and "extra_bytes" in big
    add("sdpa soft_match 256² fwd: < 1.5 GB extra", _fmt_bytes(big["extra_bytes"]) if measured else "-",
        big["extra_bytes"] < 1.5e9 if measured else None)
    need = naive and (naive.get("projected_bytes") or naive.get("extra_bytes"))
    add("naive soft_match 256² fwd would need > 16 GB", f"{need / 1e9:.1f} GB (L² x 4 B x "
        f"{LL_FACTOR[('naive', 'fwd')]})" if need else "-", need > 16e9 if need else None)
    row = _find(result.get("transfer", {}).get("rows", []), resolution=256, batch=1)
    done = row and "seconds" in row
    add("transfer 256 px batch 1: <= 1.0 s", _fmt_s(row["seconds"]) if done else "-",
        row["seconds"] <= 1.0 if done else None)
    return out


# -- reporting -------------------------------------------------------------------------------------------------


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_bytes(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB"


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), device=device,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def _header(result: dict) -> str:
    m = result["meta"]
    machine = f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads)"
    if m.get("gpu"):
        machine = f"{m['gpu']} (CUDA {m['cuda']}); host {machine}"
    load = ""
    if m.get("loadavg"):
        end = f" -> {m['loadavg_end'][0]:.1f} at end" if m.get("loadavg_end") else ""
        load = f", load avg {m['loadavg'][0]:.1f} at start{end}"
    return (f"_`{m['command']}` · {machine}{load} · {m['date']} · torch {m['torch']}"
            f"{' · quick mode' if m.get('quick') else ''}_")


def _ratio(row, naive) -> str:
    if not (naive and "seconds" in naive and "seconds" in row) or row is naive:
        return ""
    mem = naive["extra_bytes"] / max(row["extra_bytes"], 1)
    return f"{naive['seconds'] / row['seconds']:.1f}x / {mem:.0f}x"


def _cell(row) -> list[str]:
    if row is None:
        return ["", "", ""]
    if "seconds" in row:
        return [_fmt_s(row["seconds"]), _fmt_bytes(row["extra_bytes"])]
    if "error" in row:
        return ["error", row["error"][:60]]
    if "projected_bytes" in row:
        return ["skip", f"~{_fmt_bytes(row['projected_bytes'])} proj."]
    if "projected_seconds" in row:
        return [f"skip (~{row['projected_seconds']:.0f} s proj.)", ""]
    return ["skip", ""]


def render_align(result: dict) -> str:
    rows = result["align"]
    lines = [_header(result), "",
             "| op | map | backend | fwd | fwd extra mem | fwd vs naive (time / mem) | fwd+bwd | fwd+bwd extra mem "
             "| fwd+bwd vs naive |", "|---|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["op"], r["size"], r["backend"]) for r in rows)
    for op, size, backend in keys:
        cells = []
        for mode in MODES:
            row = _find(rows, op=op, size=size, backend=backend, mode=mode)
            naive = _find(rows, op=op, size=size, backend="naive", mode=mode)
            cells += _cell(row)[:2] + [_ratio(row, naive) if row else ""]
        lines.append(f"| {op} | {size}² | {backend} | " + " | ".join(cells) + " |")
    if result["meta"]["device"] == "cpu":
        lines += ["", "xformers: not available on CPU (its kernels are CUDA-only). Extra memory: peak RSS minus RSS "
                  "before the runs, each case in a fresh forked process. `skip`: not run, with the projected L x L "
                  "size or time."]
    return "\n".join(lines)


def render_transfer(result: dict) -> str:
    t = result["transfer"]
    lines = [_header(result), "",
             f"Preset `{t['preset']}` (random weights), hard alignment; floor = FLOPs / fp32 matmul peak "
             f"({t['peak_flops'] / 1e9:.1f} GFLOP/s, the best 2048² matmul before and after the runs).", "",
             "| px | batch | latency | images/s | GFLOP | floor | floor / latency |", "|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        if "seconds" in r:
            lines.append(f"| {r['resolution']} | {r['batch']} | {_fmt_s(r['seconds'])} | {r['images_per_s']:.2f} | "
                         f"{r['flops'] / 1e9:.1f} | {_fmt_s(r['floor_s'])} | {100 * r['floor_ratio']:.0f}% |")
        else:
            lines.append(f"| {r['resolution']} | {r['batch']} | {r['skipped']} | | {r['flops'] / 1e9:.1f} | "
                         f"{_fmt_s(r['floor_s'])} | |")
    return "\n".join(lines)


def render_train(result: dict) -> str:
    lines = [_header(result), "", "| px | preset | batch | AMP | s/step | images/s | data s/step | first step s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["train"]:
        if "seconds" in r:
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | {r['amp']} | {r['seconds']:.2f} | "
                         f"{r['images_per_s']:.2f} | {r['data_s']:.2f} | {r['warmup_s']:.1f} |")
        else:
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | | {r['skipped']} | | | |")
    return "\n".join(lines)


def render_targets(result: dict) -> str:
    lines = [_header(result), "", "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['status']} |" for t in result["targets"]]
    return "\n".join(lines)


def render(result: dict) -> dict[str, str]:
    """Markdown per section name (``<name>-<device type>``)."""
    dev = torch.device(result["meta"]["device"]).type
    out = {}
    for name, fn in (("align", render_align), ("transfer", render_transfer), ("train", render_train)):
        if result.get(name):
            out[f"{name}-{dev}"] = fn(result)
    if all(result.get(name) for name in SECTIONS):  # the targets need every section of one run
        out[f"targets-{dev}"] = render_targets(result)
    return out


# -- command line ----------------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _names(choices):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x for x in text.split(",") if x)
        bad = sorted(set(names) - set(choices))
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return names
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m coat_model.bench speed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--quick", action="store_true", help="fewer cases and repeats (about 3 minutes on 2 cores)")
    p.add_argument("--update-md", metavar="PATH", help="rewrite the marked tables of this markdown file")
    g = p.add_argument_group("overrides")
    g.add_argument("--sections", type=_names(SECTIONS))
    g.add_argument("--sizes", type=_ints, help="feature-map sides, e.g. 32,64,128,256")
    g.add_argument("--backends", type=_names(BACKENDS))
    g.add_argument("--ops", type=_names(OPS))
    g.add_argument("--bwd-max-size", type=int)
    g.add_argument("--memory-bound-mb", type=float, help="skip L x L buffers projected above this")
    g.add_argument("--repeats", type=int)
    g.add_argument("--run-budget", type=float)
    g.add_argument("--align-budget", type=float)
    g.add_argument("--case-budget", type=float)
    g.add_argument("--preset", choices=("tiny", "small", "default"))
    g.add_argument("--transfer-res", type=_ints)
    g.add_argument("--batches", type=_ints)
    g.add_argument("--train-res", type=_ints)
    g.add_argument("--train-batch", type=int)
    g.add_argument("--channels", type=int, help="descriptor channels C of the alignment cases")
    g.add_argument("--value-channels", type=int, help="value channels Cv (+2 coordinates) of the alignment cases")
    g.add_argument("--threads", type=int, help="torch threads (1 gives stable numbers on a busy machine)")
    return p.parse_args(argv)


def settings_from_args(args) -> Settings:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                 if getattr(args, f.name, None) is not None}
    if args.memory_bound_mb is not None:
        overrides["memory_bound"] = args.memory_bound_mb * MiB
    overrides["device"] = args.device
    if args.device.startswith("cuda") and args.memory_bound_mb is None:
        free, _ = torch.cuda.mem_get_info(torch.device(args.device))
        overrides["memory_bound"] = 0.8 * free
    if args.device.startswith("cuda") and args.train_batch is None:
        overrides["train_batch"] = 16
    return quick_settings(**overrides) if args.quick else Settings(**overrides)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    st = settings_from_args(args)
    if st.threads:
        torch.set_num_threads(st.threads)
    meta = machine_info(st.device)
    meta.update(quick=args.quick, command="python -m coat_model.bench speed " + shlex.join(
        sys.argv[1:] if argv is None else argv))
    result = {"meta": meta, "settings": dataclasses.asdict(st)}
    start = time.perf_counter()
    if "align" in st.sections:
        result["align"] = bench_align(st)
    if "transfer" in st.sections:
        result["transfer"] = bench_transfer(st)
    if "train" in st.sections:
        result["train"] = bench_train(st)
    result["targets"] = targets(result)
    meta["seconds"] = time.perf_counter() - start
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    tables = render(result)
    print("\n\n".join(f"## {name}\n{text}" for name, text in tables.items()))
    print(f"\nwrote {args.json} ({meta['seconds']:.0f} s)")
    if args.update_md:
        from . import update_markdown

        update_markdown(args.update_md, tables)
        print(f"updated {args.update_md}")
    return 0
