"""Resident memory of this process (Linux ``/proc``): the current RSS, the peak since a reset."""

from __future__ import annotations


def proc_status(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux) and return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return proc_status("VmRSS")


def peak_rss() -> int:
    """The peak RSS (bytes) since the last :func:`reset_peak_rss` (or the start of the process)."""
    return proc_status("VmHWM")
