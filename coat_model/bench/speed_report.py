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
    # issue 14 (CPU, one thread): the FLOP floor, the matmul rate of training steps, the pipeline's share
    add("transfer 256 px batch 1: <= 1.3x its FLOP floor", f"{1 / row['floor_ratio']:.2f}x" if done else "-",
        1 / row["floor_ratio"] <= 1.3 if done else None)
    train = _train_rows(result)
    for r in (64, 128):
        t = _find(train, resolution=r)
        done = t and "peak_share" in t
        add(f"training step, {t['preset'] if t else 'small'} preset {r} px: >= 30% of the matmul rate",
            f"{100 * t['peak_share']:.0f}% ({t['flops_per_s'] / 1e9:.1f} GFLOP/s)" if done else "-",
            t["peak_share"] >= 0.30 if done else None)
        add(f"training step {r} px: pipeline <= 10% of the step", f"{100 * t['pipeline_share']:.0f}%" if done else "-",
            t["pipeline_share"] <= 0.10 if done else None)
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
    lines = [_header(result), "", "| px | preset | batch | AMP | s/step | images/s | GFLOP/step | GFLOP/s | "
             "of matmul rate | model s/step | pipeline s/step | pipeline share | first step s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in _train_rows(result):
        if "seconds" in r and "flops" in r:
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | {r['amp']} | {r['seconds']:.2f} | "
                         f"{r['images_per_s']:.2f} | {r['flops'] / 1e9:.1f} | {r['flops_per_s'] / 1e9:.1f} | "
                         f"{100 * r['peak_share']:.0f}% | {r['model_s']:.2f} | {r['data_s']:.2f} | "
                         f"{100 * r['pipeline_share']:.0f}% | {r['warmup_s']:.1f} |")
        elif "seconds" in r:  # results written before FLOPs were counted
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | {r['amp']} | {r['seconds']:.2f} | "
                         f"{r['images_per_s']:.2f} | | | | | {r['data_s']:.2f} | | {r['warmup_s']:.1f} |")
        else:
            lines.append(f"| {r['resolution']} | {r['preset']} | {r['batch']} | | {r['skipped']} |" + " |" * 8)
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
    if result.get("compile"):
        out[f"compile-{dev}"] = render_compile(result, _header(result))
    if all(result.get(name) for name in SECTIONS):  # the targets need every section of one run
        out[f"targets-{dev}"] = render_targets(result)
    return out
