"""Speed bench section ``compile``: does ``torch.compile`` pay for the transfer and the training step?

    python -m coat_model.bench speed --sections compile --json OUT [--device cuda]

The encoder's pyramid and the decoder are compiled (``torch.compile``, default mode; on CUDA also
``mode="reduce-overhead"``, which replays them as CUDA graphs: fixed shapes, no launch overhead); alignment stays
eager (its hard path picks chunk sizes from the data). A mode that fails is recorded with its error. Each case
times the eager model, then the same model compiled: the first compiled call
(the compile time a user waits for once per shape), the steady median and the ratio eager / compiled, and how far
the outputs moved (max |difference| of the transfer's image or of the training step's loss). Not one of the
default sections: compiling costs minutes on a CPU.
"""

from __future__ import annotations

import copy
import time

import torch

from .timing import sync, time_runs


def compile_hot_paths(model, mode: str | None = None) -> None:
    """Compile, in place, what runs the model's convolutions: the encoder's pyramid and the decoder (``mode``: a
    ``torch.compile`` mode; None is the default). The parameters stay the model's own (the state_dict keys do not
    change)."""
    model.encoder.pyramid = torch.compile(model.encoder.pyramid, mode=mode)
    model.decoder.compile(mode=mode)


def modes_for(device: torch.device) -> tuple[str | None, ...]:
    """The compile modes measured on ``device``: the default everywhere, CUDA graphs on CUDA."""
    return (None, "reduce-overhead") if device.type == "cuda" else (None,)


def _first_and_steady(fn, device, repeats: int, budget: float) -> tuple[float, float, int]:
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    steady, runs, _ = time_runs(fn, device, repeats, budget, min_runs=1)
    return first, steady, runs


def bench_compile(st, log=print) -> dict:
    """The transfer (``st.preset`` at the first transfer size, batch 1) and a training step (``st.train_preset`` at
    the first training size, ``st.train_batch``), eager and compiled, in each of :func:`modes_for` the device."""
    device = torch.device(st.device)
    rows = []
    for mode in modes_for(device):
        for name, case in (("transfer", _transfer_case), ("train step", _train_case)):
            try:
                row = case(st, device, mode, log)
            except Exception as e:  # noqa: BLE001 - e.g. a mode the backend cannot run: record it, go on
                row = dict(case=name, mode=mode or "default",
                           error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                log(f"[compile] {row['case']} ({row['mode']}): {row['error']}")
            rows.append(row)
    return {"rows": rows}


def _transfer_case(st, device, mode, log) -> dict:
    from coat_model.model.coat import COAT
    from coat_model.train.data.faces import FaceDataset

    from .speed import _model_config

    r = st.transfer_res[0]
    torch.manual_seed(0)
    eager = COAT(_model_config(st.preset, r)).to(device).eval().requires_grad_(False)
    compiled = copy.deepcopy(eager)
    compile_hot_paths(compiled, mode)
    images = FaceDataset(size=r, length=2, seed=0).batch([0, 1]).to(device)
    with torch.no_grad():
        run = lambda m: m.transfer(images[:1], images[1:], seed=0)[0]  # noqa: E731
        eager_s, _, _ = time_runs(lambda: run(eager), device, st.repeats, st.run_budget, min_runs=1)
        first, steady, runs = _first_and_steady(lambda: run(compiled), device, st.repeats, st.run_budget)
        diff = float((run(eager) - run(compiled)).abs().max())
    log(f"[compile] transfer {r} px ({mode or 'default'}): eager {eager_s:.3f} s, compiled {steady:.3f} s "
        f"({eager_s / steady:.2f}x), first call {first:.1f} s, max |diff| {diff:.2g}")
    return dict(case="transfer", mode=mode or "default", preset=st.preset, resolution=r, batch=1, eager_s=eager_s,
                compile_s=first, compiled_s=steady, runs=runs, speedup=eager_s / steady, max_abs_diff=diff)


def _train_case(st, device, mode, log) -> dict:
    from coat_model.train.cli import make_dataset
    from coat_model.train.trainer import TrainConfig, Trainer

    from .speed import _model_config

    r = st.train_res[0]
    cfg = TrainConfig(steps=10_000, batch_size=st.train_batch, random_at_bootstrap=False)  # a long run's whole mix
    data = make_dataset("procedural:faces", r)
    trainers = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        trainers[name] = Trainer(_model_config(st.train_preset, r), cfg, data, device=device)
    compile_hot_paths(trainers["compiled"].model, mode)
    batches = trainers["eager"].pairs(0, device)
    losses = {"eager": trainers["eager"].train_step(batches)["loss"]}  # the same first step on both
    start = time.perf_counter()
    losses["compiled"] = trainers["compiled"].train_step(batches)["loss"]  # a read: waits for the device
    first = time.perf_counter() - start
    eager_s, _, _ = time_runs(lambda: trainers["eager"].train_step(batches), device, max(1, st.repeats // 2),
                              st.run_budget, min_runs=1)
    steady, runs, _ = time_runs(lambda: trainers["compiled"].train_step(batches), device, max(1, st.repeats // 2),
                                st.run_budget, min_runs=1)
    diff = abs(losses["eager"] - losses["compiled"])
    log(f"[compile] train step {r} px batch {st.train_batch} ({mode or 'default'}): eager {eager_s:.3f} s, compiled "
        f"{steady:.3f} s ({eager_s / steady:.2f}x), first compiled step {first:.1f} s, first-step loss |diff| {diff:.2g}")
    return dict(case="train step", mode=mode or "default", preset=st.train_preset, resolution=r, batch=st.train_batch,
                eager_s=eager_s, compile_s=first, compiled_s=steady, runs=runs, speedup=eager_s / steady,
                max_abs_diff=diff)


def render_compile(result: dict, header: str) -> str:
    lines = [header, "", "| case | mode | preset | px | batch | eager s | compiled s | eager / compiled | first compiled "
             "call s | max abs diff |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["compile"]["rows"]:
        mode = r.get("mode", "default")  # results written before CUDA graphs were measured: the default mode
        if "error" in r:
            lines.append(f"| {r['case']} | {mode} | | | | | failed: {r['error'][:80]} | | | |")
            continue
        lines.append(f"| {r['case']} | {mode} | {r['preset']} | {r['resolution']} | {r['batch']} | {r['eager_s']:.3f} | "
                     f"{r['compiled_s']:.3f} | {r['speedup']:.2f}x | {r['compile_s']:.1f} | {r['max_abs_diff']:.2g} |")
    return "\n".join(lines)
