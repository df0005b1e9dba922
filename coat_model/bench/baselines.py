"""Zero-training baselines and oracles for the evaluation harness (docs/METHOD.md "Evaluation").

All take and return images [B, 3, H, W] in [0, 1]; masks are bool [B, 1, H, W]; labels [B, H, W] (0 =
background); flows [B, 2, H, W] (x, y) in [-1, 1], ``align_corners=True``.

* :func:`identity` and :func:`style_copy`: the two trivial answers.
* :func:`reinhard`: global colour transfer, per-channel mean/std matching in CIELAB (Reinhard et al. 2001
  used l-alpha-beta; Lab is the project's choice). Optional masks give its part-wise oracle
  :func:`partwise_reinhard`.
* :func:`bbox_warp`: the style resampled so that its object bounding box lands on the content's.
* :func:`gt_warp`: the style sampled at the ground-truth correspondence, with the content background (the
  warp oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.coords import pixel_axis
from .metrics import lab_to_srgb, srgb_to_lab

__all__ = ["identity", "style_copy", "reinhard", "reinhard_lab", "partwise_reinhard", "bbox_warp", "gt_warp"]


def identity(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The content image unchanged."""
    return content.clone()


def style_copy(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The style image unchanged (broadcast to the content batch)."""
    return style.expand_as(content).clone()


def _masked_stats(x: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-6):
    """Per-image, per-channel mean and std [B, C, 1, 1] of x [B, C, H, W] over mask [B, 1, H, W]."""
    if mask is None:
        return x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True, unbiased=False).clamp_min(eps)
    w = mask.to(x.dtype)
    n = w.sum((2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * w).sum((2, 3), keepdim=True) / n
    var = (((x - mean) ** 2) * w).sum((2, 3), keepdim=True) / n
    return mean, var.sqrt().clamp_min(eps)


def reinhard_lab(content_lab: torch.Tensor, style_lab: torch.Tensor, content_mask: torch.Tensor | None = None,
                 style_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shift and scale each Lab channel so its mean/std over content_mask equal the style's over style_mask.

    Applied to every pixel (masking the result is the caller's business).
    """
    c_mean, c_std = _masked_stats(content_lab, content_mask)
    s_mean, s_std = _masked_stats(style_lab, style_mask)
    return (content_lab - c_mean) / c_std * s_std + s_mean


def reinhard(content: torch.Tensor, style: torch.Tensor, content_mask: torch.Tensor | None = None,
             style_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reinhard colour transfer in Lab. Statistics come from the masks (default: whole images); the result
    replaces the content inside ``content_mask`` only (default: everywhere)."""
    out = lab_to_srgb(reinhard_lab(srgb_to_lab(content), srgb_to_lab(style.expand_as(content)),
                                   content_mask, style_mask))
    return out if content_mask is None else torch.where(content_mask, out, content)


def partwise_reinhard(content: torch.Tensor, style: torch.Tensor, content_labels: torch.Tensor,
                      style_labels: torch.Tensor) -> torch.Tensor:
    """Oracle: Reinhard per object part with ground-truth part masks; background and parts missing from the
    style keep the content."""
    content_lab, style_lab = srgb_to_lab(content), srgb_to_lab(style.expand_as(content))
    out = content_lab.clone()
    for label in content_labels.unique().tolist():
        if label == 0:
            continue
        c_mask, s_mask = (content_labels == label)[:, None], (style_labels == label)[:, None]
        both = c_mask & s_mask.any((2, 3), keepdim=True)
        out = torch.where(both, reinhard_lab(content_lab, style_lab, c_mask, s_mask), out)
    return torch.where(content_labels[:, None] == 0, content, lab_to_srgb(out))


def _bbox(mask: torch.Tensor) -> torch.Tensor:
    """Bounding boxes [B, 4] (x0, y0, x1, y1) in [-1, 1] of bool masks [B, H, W] (whole image if empty)."""
    b, h, w = mask.shape
    xs = pixel_axis(w, mask.device).expand(b, h, w)
    ys = pixel_axis(h, mask.device)[:, None].expand(b, h, w)
    big = 2.0
    x0 = torch.where(mask, xs, big).amin((1, 2))
    y0 = torch.where(mask, ys, big).amin((1, 2))
    x1 = torch.where(mask, xs, -big).amax((1, 2))
    y1 = torch.where(mask, ys, -big).amax((1, 2))
    box = torch.stack([x0, y0, x1, y1], -1)
    empty = ~mask.flatten(1).any(1)
    return torch.where(empty[:, None], torch.tensor([-1.0, -1.0, 1.0, 1.0], device=mask.device), box)


def bbox_warp(content: torch.Tensor, style: torch.Tensor, content_labels: torch.Tensor,
              style_labels: torch.Tensor) -> torch.Tensor:
    """Style resampled by the axis-aligned map taking the content object's bounding box onto the style's;
    the content background is kept."""
    cb, sb = _bbox(content_labels != 0), _bbox(style_labels != 0)
    b, _, h, w = content.shape
    xs = pixel_axis(w, content.device).view(1, 1, w)
    ys = pixel_axis(h, content.device).view(1, h, 1)
    scale = (sb[:, 2:] - sb[:, :2]) / (cb[:, 2:] - cb[:, :2]).clamp_min(1e-6)
    gx = sb[:, 0].view(-1, 1, 1) + (xs - cb[:, 0].view(-1, 1, 1)) * scale[:, 0].view(-1, 1, 1)
    gy = sb[:, 1].view(-1, 1, 1) + (ys - cb[:, 1].view(-1, 1, 1)) * scale[:, 1].view(-1, 1, 1)
    grid = torch.stack([gx.expand(b, h, w), gy.expand(b, h, w)], -1)
    warped = F.grid_sample(style.expand_as(content), grid, mode="bilinear", padding_mode="border",
                           align_corners=True)
    return torch.where((content_labels != 0)[:, None], warped, content)


def _label_means(images: torch.Tensor, labels: torch.Tensor, num_labels: int):
    """Mean RGB [B, L, 3] of every label region and whether it is non-empty [B, L]."""
    onehot = F.one_hot(labels.flatten(1), num_labels).to(images.dtype)             # [B, HW, L]
    area = onehot.sum(1)
    return (images.flatten(2) @ onehot).transpose(1, 2) / area.clamp_min(1.0)[..., None], area > 0


def gt_warp(content: torch.Tensor, style: torch.Tensor, gt_flow: torch.Tensor, content_labels: torch.Tensor,
            visible: torch.Tensor | None = None, style_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Oracle: the style sampled (bilinear, border padding) at the ground-truth flow on the content object;
    the content background is kept.

    Without ``visible``/``style_labels`` every object pixel is sampled at its true position, even where that
    point is hidden in the style (a plain warp). With both, object pixels that are not visible take the
    style's mean colour of the same label instead (the style's own sample where it lacks that label).
    """
    style = style.expand_as(content)
    out = F.grid_sample(style, gt_flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                        align_corners=True)
    if visible is not None and style_labels is not None:
        num = int(max(content_labels.max(), style_labels.max())) + 1
        means, present = _label_means(style, style_labels, num)
        b, h, w = content_labels.shape
        fill = means.gather(1, content_labels.view(b, -1, 1).expand(-1, -1, 3)).transpose(1, 2).view(b, 3, h, w)
        has_fill = present.gather(1, content_labels.view(b, -1)).view(b, 1, h, w)
        out = torch.where(~visible & has_fill, fill, out)
    return torch.where((content_labels != 0)[:, None], out, content)
