"""Matches as image coordinates: the match panel's data, its UI entry, and the side-by-side drawing.

An alignment holds, per scale, the matched style position of every content cell in the model's square canvas
(both images are letterboxed into it). Here both ends become ``uv`` coordinates of their own image: (0, 0) is
the top-left corner, (1, 1) the bottom-right. Cells of the letterbox padding are left out.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
import torch.nn.functional as F
from comfy_api.v0_0_2 import io, ui
from PIL import Image, ImageDraw

from coat_model.model.coords import cell_centre_offsets, flow_to_cells

from . import match_store
from .types import Aligned

MAX_ITEMS = 4        # batch items kept for the panel
MAX_CELLS = 64 * 64  # cells per scale and item kept for the panel (strided beyond)
THUMB = 256          # longest side of the panel's preview images


def pick_scale(aligned: Aligned, which: str) -> int:
    """``finest`` / ``middle`` / ``coarsest`` -> one of the alignment's scales."""
    scales = aligned.alignment.scales
    return {"finest": scales[-1], "middle": scales[len(scales) // 2], "coarsest": scales[0]}[which]


def cell_matches(aligned: Aligned, scale: int, item: int, max_cells: int | None = None) -> dict[str, torch.Tensor]:
    """Matches of content image ``item`` at ``scale``: content_uv, style_uv [N, 2], confidence [N], confident [N]."""
    a = aligned.alignment
    flow = a.flow[scale][item].float().cpu()                  # [2, h, w]
    conf = a.confidence[scale][item, 0].float().cpu()
    mask = a.mask[scale][item, 0].cpu()
    h, w = flow.shape[-2:]
    if max_cells and h * w > max_cells:
        stride = int(np.ceil(np.sqrt(h * w / max_cells)))
        flow, conf, mask = flow[:, ::stride, ::stride], conf[::stride, ::stride], mask[::stride, ::stride]
        rows, cols = torch.meshgrid(torch.arange(0, h, stride), torch.arange(0, w, stride), indexing="ij")
    else:
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cf, sf = aligned.content.latents.frame, aligned.style.latents.frame
    cell = cf.resolution / w
    cx, cy = cell_centre_offsets(cols.float(), cell), cell_centre_offsets(rows.float(), cell)  # content canvas px
    sx, sy = cell_centre_offsets(flow_to_cells(flow, h, w, dim=0), cell)                     # style canvas px
    content_uv = torch.stack([(cx - cf.left) / cf.inner_width, (cy - cf.top) / cf.inner_height], -1)
    style_uv = torch.stack([(sx - sf.left) / sf.inner_width, (sy - sf.top) / sf.inner_height], -1).clamp(0, 1)
    inside = ((content_uv >= 0) & (content_uv <= 1)).all(-1)
    return {"content_uv": content_uv[inside], "style_uv": style_uv[inside], "confidence": conf[inside],
            "confident": mask[inside]}


def panel_data(aligned: Aligned) -> dict:
    """The dense, JSON-ready match data of the first MAX_ITEMS pairs (what ``/coat/matches/{id}`` serves)."""
    a = aligned.alignment
    ci, si = aligned.content.images, aligned.style.images
    items = []
    for item in range(min(a.flow[a.scales[0]].shape[0], MAX_ITEMS)):
        levels = []
        for s in a.scales:
            m = cell_matches(aligned, s, item, MAX_CELLS)
            levels.append({
                "scale": s,
                "grid": list(a.flow[s].shape[-2:]),
                "content_uv": _flat(m["content_uv"]),
                "style_uv": _flat(m["style_uv"]),
                "confidence": _flat(m["confidence"]),
                "confident": m["confident"].int().tolist(),
            })
        # The pose of the style the pair matched (mirror_search, rotation_search; the uv are in the style as given):
        # mirrored left-right, turned this many degrees clockwise; or re-posed by its matches (pose_fit)
        items.append({"levels": levels, "mirrored": bool(a.mirrored[item]) if a.mirrored is not None else False,
                      "rotation": float(a.rotation[item]) if a.rotation is not None else 0.0,
                      **fitted_pose(a, item)})
    return {
        "version": 1,
        "mode": a.mode,
        "scales": list(a.scales),
        "coverage": {str(s): round(v, 4) for s, v in a.coverage().items()},
        "content_size": [ci.shape[2], ci.shape[1]],  # width, height
        "style_size": [si.shape[2], si.shape[1]],
        "items": items,
    }


def fitted_pose(a, item: int) -> dict:
    """``fitted`` (the pair matched the style re-posed by its own matches, ``pose_fit``) and that pose as the
    panel words it: ``zoom`` (how much larger the style was shown), ``turn`` (degrees clockwise) and ``shift`` (where
    the style's canvas centre was read, as a share of the canvas: (0, 0) unmoved)."""
    if a.fitted is None or not bool(a.fitted[item]):
        return {"fitted": False}
    m = a.pose[item, :, :2].float().cpu()
    if a.mirrored is not None and bool(a.mirrored[item]):
        m = torch.diag(torch.tensor([-1.0, 1.0])) @ m  # the flip came first: undo it to read the similarity
    scale = float(m.det().abs().sqrt())
    shift = a.pose[item, :, 2].float().cpu() / 2  # [-1, 1] canvas units -> shares of the canvas
    return {"fitted": True, "zoom": round(1 / max(scale, 1e-6), 3),
            "turn": round(math.degrees(math.atan2(float(m[0, 1]), float(m[0, 0]))), 1),
            "shift": [round(float(v), 3) for v in shift]}


def _flat(t: torch.Tensor) -> list[float]:
    return [round(v, 4) for v in t.flatten().tolist()]


def _thumbs(images: torch.Tensor) -> list[dict]:
    """Save up to MAX_ITEMS images, longest side <= THUMB, as temp PNGs; their /view references."""
    x = images[:MAX_ITEMS].movedim(-1, 1).float()
    scale = THUMB / max(x.shape[-2:])
    if scale < 1:
        size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    saved = ui.ImageSaveHelper.save_images(x.movedim(1, -1).clamp(0, 1).cpu(), "coat_match",
                                           io.FolderType.temp, None, compress_level=1)
    return [dict(r) for r in saved]


def ui_entry(aligned: Aligned) -> dict:
    """Store the dense data and return the small ``coat_matches`` entry: id, summary, preview images."""
    a = aligned.alignment
    return {
        "id": match_store.put(panel_data(aligned)),
        "scales": list(a.scales),
        "coverage": {str(s): round(v, 4) for s, v in a.coverage().items()},
        "batch": a.flow[a.scales[0]].shape[0],
        "content": _thumbs(aligned.content.images),
        "style": _thumbs(aligned.style.images),
    }


# -- drawing ---------------------------------------------------------------------------------------------------


def confidence_colour(c: float) -> tuple[int, int, int]:
    """Red (0) through yellow to green (1)."""
    r, g, b = colorsys.hsv_to_rgb(max(0.0, min(1.0, c)) / 3, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _pil(image: torch.Tensor, height: int) -> Image.Image:
    """IMAGE [H, W, C] -> RGB PIL image ``height`` px tall (aspect kept)."""
    x = image[..., :3].movedim(-1, 0)[None].float().cpu()
    width = max(1, round(x.shape[-1] * height / x.shape[-2]))
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return Image.fromarray((x[0].movedim(0, -1).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def draw_matches(aligned: Aligned, item: int, scale: int, *, height: int = 384, max_lines: int = 200,
                 min_confidence: float = 0.0, show_unconfident: bool = False) -> torch.Tensor:
    """Content | style side by side with match lines coloured by confidence: IMAGE [height, W, 3]."""
    style_item = item if aligned.style.images.shape[0] > 1 else 0
    left, right = _pil(aligned.content.images[item], height), _pil(aligned.style.images[style_item], height)
    canvas = Image.new("RGB", (left.width + right.width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    m = cell_matches(aligned, scale, item)
    keep = m["confidence"] >= min_confidence
    if not show_unconfident:
        keep &= m["confident"]
    index = keep.nonzero()[:, 0]
    if len(index) > max_lines:  # evenly spread over the image, not the first rows only
        index = index[torch.linspace(0, len(index) - 1, max_lines).round().long()]
    draw = ImageDraw.Draw(canvas)
    wl, wr = left.width - 1, right.width - 1
    for i in index.tolist():
        (cu, cv), (su, sv) = m["content_uv"][i].tolist(), m["style_uv"][i].tolist()
        confident = bool(m["confident"][i])
        colour = confidence_colour(m["confidence"][i].item()) if confident else (128, 128, 128)
        p, q = (cu * wl, cv * (height - 1)), (left.width + su * wr, sv * (height - 1))
        draw.line([p, q], fill=colour, width=1)
        for x, y in (p, q):
            draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=colour)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)
