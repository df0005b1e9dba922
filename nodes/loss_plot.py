"""COAT Train's loss outputs: the curve as a ComfyUI IMAGE (drawn with PIL) and the LOSS_MAP of ComfyUI's
training nodes."""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw, ImageFont

import comfy.model_management as mm


def loss_curve(losses: list[tuple[int, float]], width: int = 512, height: int = 256) -> torch.Tensor:
    """The loss per step (light) and its running mean (dark) as a ComfyUI IMAGE [1, H, W, 3]."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, width - 12, 22, height - 26
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if not losses:
        draw.text((left + 10, (top + bottom) // 2), "no training steps yet", fill=(90, 90, 90), font=font)
    else:
        steps = [s for s, _ in losses]
        values = [v if math.isfinite(v) else float("nan") for _, v in losses]
        finite = sorted(v for v in values if not math.isnan(v)) or [0.0]
        lo = finite[0]
        hi = finite[min(len(finite) - 1, int(0.98 * len(finite)))] if len(finite) >= 20 else finite[-1]
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

        def xy(step: float, value: float) -> tuple[float, float]:
            v = min(max(value, lo), hi)
            return (left + (step - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))

        for i in range(1, 4):  # grid lines
            y = top + i * (bottom - top) / 4
            draw.line([(left, y), (right, y)], fill=(232, 232, 232))
        raw = [xy(s, v) for s, v in zip(steps, values) if not math.isnan(v)]
        smooth, mean, k = [], None, 2 / (1 + max(1, len(values) // 20))
        for s, v in zip(steps, values):
            if not math.isnan(v):
                mean = v if mean is None else mean + k * (v - mean)
                smooth.append(xy(s, mean))
        for points, colour in ((raw, (150, 190, 235)), (smooth, (20, 70, 170))):
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            elif points:
                x, y = points[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((4, top - 4), f"{hi:.3g}", fill=(60, 60, 60), font=font)
        draw.text((4, bottom - 8), f"{lo:.3g}", fill=(60, 60, 60), font=font)
        draw.text((left, bottom + 6), f"step {steps[0]}", fill=(60, 60, 60), font=font)
        last = f"step {steps[-1]}"
        draw.text((right - 6 * len(last), bottom + 6), last, fill=(60, 60, 60), font=font)
        draw.text((left, 5), f"COAT training loss  last {values[-1]:.4g}  min {finite[0]:.4g}", fill=(20, 20, 20),
                  font=font)
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return (array.float() / 255)[None].to(mm.intermediate_device())


def loss_map(losses: list[tuple[int, float]]) -> dict:
    """LOSS_MAP as ComfyUI's own training nodes give it (``{"loss": [...]}``, one value per step, in order), for
    core nodes such as Plot Loss Graph."""
    return {"loss": [v for _, v in losses]}
