"""Run a measurement in a fresh process, forked from a forkserver that has imported only what it is told to
preload (torch, ...) and computed nothing, so that its memory peak is the measurement's own."""

from __future__ import annotations

import multiprocessing as mp

_FORKSERVER = None


def _child(conn, fn, arg) -> None:
    try:
        conn.send(fn(arg))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which goes on
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


def run_isolated(fn, arg, timeout: float, preload=("torch",)) -> dict:
    """``fn(arg)`` (a module-level function returning a dict) in a fresh process; ``{"error": ...}`` when it
    raises, times out after ``timeout`` s or dies. ``preload``: the modules the forkserver imports, fixed by the
    first call of this process."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = mp.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(list(preload))
    receiver, sender = _FORKSERVER.Pipe(duplex=False)
    proc = _FORKSERVER.Process(target=_child, args=(sender, fn, arg), daemon=True)
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
