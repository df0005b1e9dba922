"""The speed benchmark's report: the issue's targets (pass / miss / not measured), the machine it ran on and one
markdown table per section (``render``), for ``--update-md``."""

from __future__ import annotations

import datetime
import os
import platform

import torch

from .compiled import render_compile
from .speed import LL_FACTOR, MODES, SECTIONS
from .units import fmt_bytes as _fmt_bytes, fmt_s as _fmt_s


# -- targets of issue 6 ------------------------------------------------------------------------------------------


def _find(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured figure and pass / miss / not measured."""
    out = []
    align = result.get("align", [])

    issue = 6

    def add(target, measured, ok):
        out.append(dict(target=target, measured=measured, issue=issue, status="not measured" if ok is None else
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
    # issue 14 (CPU, one thread): the FLOP floor, the matmul rate of training steps, the pipeline's share; judged
    # on CPU runs only (a CUDA run's AMP steps outrun its fp32 matmul rate)
    issue = 14
    cpu = not _cuda_run(result)
    done = done and cpu
    add("transfer 256 px batch 1: <= 1.3x its FLOP floor", f"{1 / row['floor_ratio']:.2f}x" if done else "-",
        1 / row["floor_ratio"] <= 1.3 if done else None)
    train = _train_rows(result)
    for r in (64, 128):
        t = _find(train, resolution=r, preset="small") if cpu else None
        done = t and "peak_share" in t
        add(f"training step, {t['preset'] if t else 'small'} preset {r} px: >= 30% of the matmul rate",
            f"{100 * t['peak_share']:.0f}% ({t['flops_per_s'] / 1e9:.1f} GFLOP/s)" if done else "-",
            t["peak_share"] >= 0.30 if done else None)
        add(f"training step {r} px: pipeline <= 10% of the step", f"{100 * t['pipeline_share']:.0f}%" if done else "-",
            t["pipeline_share"] <= 0.10 if done else None)
    out += gpu_targets(result)
    return out


def _cuda_run(result: dict) -> bool:
    return str(result.get("meta", {}).get("device", "cpu")).startswith("cuda")


def gpu_targets(result: dict) -> list[dict]:
    """Issue 14's GPU targets: measured by a CUDA run (``--device cuda``: batches 1 and 64, training batch 128 and
    the default preset at 256 px), "not measured" otherwise."""
    cuda = _cuda_run(result)
    train, transfer = _train_rows(result), result.get("transfer", {}).get("rows", [])
    small = _find(train, preset="small", resolution=128) if cuda else None
    big = _find(train, preset="default", resolution=256) if cuda else None
    one, many = ((_find(transfer, resolution=256, batch=b) if cuda else None) for b in (1, 64))
    checks = [
        ("GPU: small preset 128 px trains at >= 2000 img/s", small, "images_per_s",
         lambda v: f"{v:.0f} img/s (batch {small['batch']})", lambda v: v >= 2000),
        ("GPU: default preset 256 px training step at >= 25% of the bf16 peak", big, "bf16_peak_share",
         lambda v: f"{100 * v:.0f}% (batch {big['batch']}, AMP {big['amp']})", lambda v: v >= 0.25),
        ("GPU: transfer 256 px batch 1 <= 5 ms", one, "seconds", lambda v: _fmt_s(v), lambda v: v <= 0.005),
        ("GPU: transfer 256 px batch 64 >= 2000 img/s", many, "images_per_s", lambda v: f"{v:.0f} img/s",
         lambda v: v >= 2000),
    ]
    out = []
    for target, row, key, show, ok in checks:
        done = row is not None and key in row
        out.append(dict(target=target, measured=show(row[key]) if done else "-", issue=14,
                        status=("pass" if ok(row[key]) else "miss") if done else "not measured"))
    return out


def _train_rows(result: dict) -> list[dict]:
    train = result.get("train") or {}
    return train.get("rows", []) if isinstance(train, dict) else train  # a list in results written before 2026-12


# -- reporting -------------------------------------------------------------------------------------------------


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
    bf16 = bool(t.get("peak_flops_bf16"))
    lines = [_header(result), "",
             f"Preset `{t['preset']}` (random weights), hard alignment; floor = FLOPs / fp32 matmul peak "
             f"({t['peak_flops'] / 1e9:.1f} GFLOP/s, the best 2048² matmul before and after the runs).", "",
             "| px | batch | latency | images/s | GFLOP | GFLOP/img | GFLOP/s | floor | floor / latency |"
             + (" of bf16 peak |" if bf16 else ""), "|---|---|---|---|---|---|---|---|---|" + ("---|" if bf16 else "")]
    for r in t["rows"]:
        per_image = r.get("flops_per_image", r["flops"] / r["batch"])
        if "seconds" in r:
            rate = r.get("flops_per_s", r["flops"] / r["seconds"])
            lines.append(f"| {r['resolution']} | {r['batch']} | {_fmt_s(r['seconds'])} | {r['images_per_s']:.2f} | "
                         f"{r['flops'] / 1e9:.1f} | {per_image / 1e9:.2f} | {rate / 1e9:.1f} | "
                         f"{_fmt_s(r['floor_s'])} | {100 * r['floor_ratio']:.0f}% |"
                         + (f" {100 * r['bf16_peak_share']:.1f}% |" if bf16 else ""))
        else:
            lines.append(f"| {r['resolution']} | {r['batch']} | {r['skipped']} | | {r['flops'] / 1e9:.1f} | "
                         f"{per_image / 1e9:.2f} | | {_fmt_s(r['floor_s'])} | |" + (" |" if bf16 else ""))
    return "\n".join(lines)


def render_train(result: dict) -> str:
    bf16 = bool((result.get("train") or {}).get("peak_flops_bf16")) if isinstance(result.get("train"), dict) else False
    lines = [_header(result), "", "| px | preset | batch | AMP | s/step | images/s | GFLOP/step | GFLOP/img | GFLOP/s | "
             "of matmul rate |" + (" of bf16 peak |" if bf16 else "") + " model s/step | pipeline s/step | "
             "pipeline share | first step s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
             + ("---|" if bf16 else "")]
    for r in _train_rows(result):
        if "seconds" in r and "flops" in r:
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | {r['amp']} | {r['seconds']:.2f} | "
                         f"{r['images_per_s']:.2f} | {r['flops'] / 1e9:.1f} | {r['flops'] / r['batch'] / 1e9:.2f} | "
                         f"{r['flops_per_s'] / 1e9:.1f} | {100 * r['peak_share']:.0f}% |"
                         + (f" {100 * r['bf16_peak_share']:.1f}% |" if bf16 else "")
                         + f" {r['model_s']:.2f} | {r['data_s']:.2f} | {100 * r['pipeline_share']:.0f}% | "
                         f"{r['warmup_s']:.1f} |")
        elif "seconds" in r:  # results written before FLOPs were counted
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | {r['amp']} | {r['seconds']:.2f} | "
                         f"{r['images_per_s']:.2f} | | | | |" + (" |" if bf16 else "")
                         + f" | {r['data_s']:.2f} | | {r['warmup_s']:.1f} |")
        else:
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | | {r['skipped']} |"
                         + " |" * (9 + bf16))
    return "\n".join(lines)


def render_targets(result: dict, issue: int | None = None) -> str:
    """The targets table: all of them, or one issue's (``issue``; targets recorded before they were tagged count
    as issue 6's)."""
    rows = [t for t in result["targets"] if issue is None or t.get("issue", 6) == issue]
    lines = [_header(result), "", "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['status']} |" for t in rows]
    return "\n".join(lines)


def render_profile(result: dict) -> str:
    """Where the time of one call of each profiled case goes (``--profile``): the top operators by self time."""
    lines = [_header(result)]
    cases = [(f"transfer {r['resolution']} px batch {r['batch']}", r) for r in result.get("transfer", {}).get("rows", [])]
    cases += [(f"training step, {r['preset']} {r['resolution']} px batch {r['batch']}", r) for r in _train_rows(result)]
    for name, row in cases:
        if row.get("profile"):
            lines += ["", f"{name} (self time):", "", "| operator | share | ms | calls |", "|---|---|---|---|"]
            lines += [f"| `{o['op']}` | {100 * o['share']:.1f}% | {o['ms']:.1f} | {o['calls']} |" for o in row["profile"]]
    return "\n".join(lines)


def render(result: dict) -> dict[str, str]:
    """Markdown per section name (``<name>-<device type>``)."""
    dev = torch.device(result["meta"]["device"]).type
    out = {}
    for name, fn in (("align", render_align), ("transfer", render_transfer), ("train", render_train)):
        if result.get(name):
            out[f"{name}-{dev}"] = fn(result)
    if result.get("compile"):
        out[f"compile-{dev}"] = render_compile(result, _header(result))
    rows = result.get("transfer", {}).get("rows", []) + _train_rows(result)
    if any(r.get("profile") for r in rows):
        out[f"profile-{dev}"] = render_profile(result)
    if any("issue" not in t for t in result.get("targets", [])):  # written before targets had an issue: judge again
        result = dict(result, targets=targets(result))
    if all(result.get(name) for name in SECTIONS):  # issue 6's targets need every section of one run
        out[f"targets-{dev}"] = render_targets(result)
    if result.get("transfer") and result.get("train"):  # issue 14's: the transfer and training sections
        out[f"targets14-{dev}"] = render_targets(result, issue=14)
    return out
