"""Flushing denormal floats to zero on CPU (the x86 FTZ/DAZ flags), for training speed.

The soft path's softmax at temperature 0.02 spans logits about 100 apart once descriptors are trained, so most of its
probabilities fall below float32's smallest normal number (exp(-87)). x86 cores compute with such denormals about
100 times slower; in a 128 px CPU training step of the small preset, ``scaled_dot_product_attention``'s backward
took 60 % of the step because of them (BENCHMARKS.md, "Training throughput"). Flushing them to zero changes values
below 1.2e-38 only.

The flags belong to each thread and a new thread copies them from the thread that creates it: set them before
torch's intra-op thread pool starts (``coat-train`` does, first thing) to reach every worker. Set later, they
reach only the calling thread.
"""

from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Flush denormals to zero in this thread (and the threads it creates later); False where the CPU lacks it."""
    return torch.set_flush_denormal(True)
