"""The speed benchmark's command line: ``python -m coat_model.bench speed --json OUT [options]`` (the module
docstring of ``coat_model.bench.speed`` says what it measures)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from ..train.denormals import flush_denormals
from . import speed
from .compiled import bench_compile
from .speed import BACKENDS, OPS, SECTIONS, Settings, bench_align, bench_train, bench_transfer, quick_settings
from .speed_report import machine_info, render, targets
from .units import MiB


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _cases(text: str) -> tuple[tuple[str, int, int], ...]:
    out = []
    for item in (x for x in text.split(",") if x):
        try:
            preset, px, batch = item.split(":")
            out.append((preset, int(px), int(batch)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected preset:px:batch, e.g. default:256:16") from None
        if preset not in ("tiny", "small", "default"):
            raise argparse.ArgumentTypeError(f"{item!r}: preset must be tiny, small or default")
    return tuple(out)


def _names(choices):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x for x in text.split(",") if x)
        bad = sorted(set(names) - set(choices))
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return names
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m coat_model.bench speed", description=speed.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--quick", action="store_true", help="fewer cases and repeats (about 3 minutes on 2 cores)")
    p.add_argument("--update-md", metavar="PATH", help="rewrite the marked tables of this markdown file")
    g = p.add_argument_group("overrides")
    g.add_argument("--sections", type=_names(SECTIONS + ("compile",)),
                   help=f"default {','.join(SECTIONS)}; 'compile' (torch.compile against eager) only when named")
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
    g.add_argument("--train-preset", choices=("tiny", "small", "default"), help="the training section's preset")
    g.add_argument("--train-extra", type=_cases, help="more training cases, preset:px:batch[,...] (CUDA default: "
                   "default:256:16, issue 14's share of the bf16 peak)")
    g.add_argument("--channels", type=int, help="descriptor channels C of the alignment cases")
    g.add_argument("--value-channels", type=int, help="value channels Cv (+2 coordinates) of the alignment cases")
    g.add_argument("--threads", type=int, help="torch threads (1 gives stable numbers on a busy machine)")
    g.add_argument("--profile", action="store_true", help="also record where one transfer / training step of each "
                   "case spends its time (torch.profiler, the top operators by self time)")
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
    if args.device.startswith("cuda"):  # issue 14's GPU targets: throughput batches and the default preset at 256 px
        overrides.setdefault("train_batch", 128)
        overrides.setdefault("batches", (1, 64))
        overrides.setdefault("train_extra", (("default", 256, 16),))
    return quick_settings(**overrides) if args.quick else Settings(**overrides)


def _write(path: str, result: dict, meta: dict, start: float) -> None:
    """``result`` with its targets and the time so far, written atomically to ``path``."""
    result["targets"] = targets(result)
    meta["seconds"] = time.perf_counter() - start
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


def main(argv=None) -> int:
    flush_denormals()  # as coat-train does: training steps are timed as users run them
    args = parse_args(sys.argv[1:] if argv is None else argv)
    st = settings_from_args(args)
    if st.threads:
        torch.set_num_threads(st.threads)
    meta = machine_info(st.device)
    meta.update(quick=args.quick, command="python -m coat_model.bench speed " + shlex.join(
        sys.argv[1:] if argv is None else argv))
    result = {"meta": meta, "settings": dataclasses.asdict(st)}
    start = time.perf_counter()
    sections = {"align": bench_align, "transfer": bench_transfer, "train": bench_train, "compile": bench_compile}
    for name, bench in sections.items():
        if name in st.sections:
            result[name] = bench(st)
            _write(args.json, result, meta, start)  # after each section: a time-boxed run keeps what it measured
    _write(args.json, result, meta, start)
    tables = render(result)
    print("\n\n".join(f"## {name}\n{text}" for name, text in tables.items()))
    print(f"\nwrote {args.json} ({meta['seconds']:.0f} s)")
    if args.update_md:
        from . import update_markdown

        update_markdown(args.update_md, tables)
        print(f"updated {args.update_md}")
    return 0
