"""Evaluation metrics (docs/METHOD.md "Evaluation"), on batches with exact ground truth.

Shapes: images [B, 3, H, W] float in [0, 1]; labels [B, H, W] int64 (0 = background, parts 1..L-1);
flows [B, 2, H, W] (x, y) in [-1, 1] with ``align_corners=True``; visible / confidence [B, 1, H, W].

Pooling: part metrics are averaged over all (image, part) pairs of the batch whose content part covers at
least ``min_area`` pixels; pixel metrics are pooled over all pixels of the batch; PSNR is the mean over
images of the per-image PSNR. A metric that has nothing to measure (no flow given, no background, no
confident match...) is ``None``.

Colour differences are CIE76 (Euclidean in CIELAB, D65 white), from our own sRGB -> Lab conversion
(:mod:`coat_model.colour`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..colour import lab_to_srgb, srgb_to_lab

__all__ = [
    "srgb_to_lab", "lab_to_srgb", "part_mean_lab", "de_part", "paa", "de_to_content", "psnr", "l1",
    "bg_l1", "pck", "conf_precision", "conf_coverage", "confidence_sweep", "compute_metrics", "PSNR_CAP_DB",
    "part_tallies", "part_scores",
]

PSNR_CAP_DB = 100.0         # PSNR of a perfect output (MSE = 0) is reported as this many dB


# ---------------------------------------------------------------------------------------------------------
# Part colours


def part_mean_lab(images: torch.Tensor, labels: torch.Tensor, num_labels: int | None = None):
    """Mean Lab colour of every label region: returns (means [B, L, 3], areas [B, L] in pixels)."""
    return _part_means(srgb_to_lab(images), labels, num_labels)


def _part_means(lab: torch.Tensor, labels: torch.Tensor, num_labels: int | None = None):
    num_labels = int(labels.max()) + 1 if num_labels is None else num_labels
    onehot = F.one_hot(labels.flatten(1), num_labels).to(lab.dtype)                 # [B, HW, L]
    area = onehot.sum(1)                                                            # [B, L]
    means = (lab.flatten(2) @ onehot).transpose(1, 2) / area.clamp_min(1.0)[..., None]
    return means, area


def _scored_parts(area: torch.Tensor, min_area: int) -> torch.Tensor:
    """(image, part) pairs that count: part area >= min_area, background excluded. [B, L] bool."""
    valid = area >= min_area
    valid[:, 0] = False
    return valid


def _de(out_means: torch.Tensor, ref_means: torch.Tensor, valid: torch.Tensor) -> float | None:
    return (out_means - ref_means).norm(dim=-1)[valid].mean().item() if valid.any() else None


def _assignment(out_means: torch.Tensor, ref_means: torch.Tensor, valid: torch.Tensor, distinct_de: float):
    """(scored, hit), both [B, L] bool: the parts PAA scores (target colour distinct from every other part's) and
    those whose output colour is nearest to their own target colour."""
    big = torch.finfo(out_means.dtype).max
    mask_other = ~valid[:, None, :] | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    separation = torch.cdist(ref_means, ref_means).masked_fill(mask_other, big).amin(-1)    # [B, L]
    scored = valid & (separation >= distinct_de)
    nearest = torch.cdist(out_means, ref_means).masked_fill(~valid[:, None, :], big).argmin(-1)  # [B, L]
    own = torch.arange(valid.shape[1], device=valid.device).expand_as(nearest)
    return scored, scored & (nearest == own)


def _paa(out_means: torch.Tensor, ref_means: torch.Tensor, valid: torch.Tensor, distinct_de: float):
    scored, hit = _assignment(out_means, ref_means, valid, distinct_de)
    return hit[scored].float().mean().item() if scored.any() else None


def de_part(output: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, min_area: int = 4) -> float | None:
    """Mean CIE76 dE between output and target mean part colours, over content parts of >= min_area px."""
    num = int(labels.max()) + 1
    out_means, area = part_mean_lab(output, labels, num)
    return _de(out_means, part_mean_lab(target, labels, num)[0], _scored_parts(area, min_area))


def de_to_content(output: torch.Tensor, content: torch.Tensor, labels: torch.Tensor,
                  min_area: int = 4) -> float | None:
    """Mean dE between output part colours and the content's own part colours (higher = less leakage)."""
    return de_part(output, content, labels, min_area)


def paa(output: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, min_area: int = 4,
        distinct_de: float = 10.0) -> float | None:
    """Part-assignment accuracy: share of parts whose output mean colour is nearest to their own target colour.

    Candidates are the target mean colours of all parts of >= min_area px in that image; a part is scored
    only if its target colour is at least ``distinct_de`` from every other candidate's.
    """
    num = int(labels.max()) + 1
    out_means, area = part_mean_lab(output, labels, num)
    return _paa(out_means, part_mean_lab(target, labels, num)[0], _scored_parts(area, min_area), distinct_de)


# ---------------------------------------------------------------------------------------------------------
# Pixel fidelity


def l1(output: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Mean absolute error over the content object pixels (labels != 0) and channels."""
    mask = (labels != 0)[:, None].expand_as(output)
    return (output - target).abs()[mask].mean().item() if mask.any() else None


def psnr(output: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, cap_db: float = PSNR_CAP_DB) -> float | None:
    """Mean over images of the PSNR (peak 1) inside the content object mask; each capped at ``cap_db``."""
    mask = (labels != 0)[:, None].to(output.dtype)
    count = mask.sum((1, 2, 3)) * output.shape[1]
    keep = count > 0
    if not keep.any():
        return None
    mse = (((output - target) ** 2) * mask).sum((1, 2, 3))[keep] / count[keep]
    db = torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-30)), torch.full_like(mse, cap_db))
    return db.clamp(max=cap_db).mean().item()


def bg_l1(output: torch.Tensor, content: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Mean absolute difference to the content image outside the object (labels == 0)."""
    mask = (labels == 0)[:, None].expand_as(output)
    return (output - content).abs()[mask].mean().item() if mask.any() else None


# ---------------------------------------------------------------------------------------------------------
# Correspondence


def _match_size(flow: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize a normalised flow to the spatial size of ``like`` (values need no rescaling)."""
    if flow.shape[-2:] == like.shape[-2:]:
        return flow
    return F.interpolate(flow, size=like.shape[-2:], mode="bilinear", align_corners=True)


def _confident(confidence: torch.Tensor, like: torch.Tensor, threshold: float) -> torch.Tensor:
    """Confidence [B, 1, h, w] (bool or float) -> bool [B, 1, H, W] (nearest upsampling of cells)."""
    mask = confidence if confidence.dtype == torch.bool else confidence >= threshold
    if mask.shape[-2:] != like.shape[-2:]:
        mask = F.interpolate(mask.float(), size=like.shape[-2:], mode="nearest") > 0.5
    return mask


def _correct(pred_flow: torch.Tensor, gt_flow: torch.Tensor, alpha: float) -> torch.Tensor:
    """bool [B, 1, H, W]: predicted location within alpha * R pixels of the truth (R = max(H, W))."""
    h, w = gt_flow.shape[-2:]
    pred_flow = _match_size(pred_flow, gt_flow)
    scale = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=gt_flow.dtype, device=gt_flow.device).view(1, 2, 1, 1)
    error_px = ((pred_flow - gt_flow) * scale).norm(dim=1, keepdim=True)
    return error_px <= alpha * max(h, w)


def pck(pred_flow: torch.Tensor, gt_flow: torch.Tensor, visible: torch.Tensor, alpha: float) -> float | None:
    """Share of visible content pixels whose predicted style location is within alpha * R px of the truth.

    In normalised units the threshold is about ``2 * alpha`` (exactly ``2 * alpha * R / (R - 1)``).
    """
    if not visible.any():
        return None
    return _correct(pred_flow, gt_flow, alpha)[visible].float().mean().item()


def conf_precision(pred_flow, gt_flow, visible, confidence, threshold: float = 0.5, alpha: float = 0.05):
    """PCK@alpha restricted to confident visible pixels (None when no match is confident)."""
    mask = visible & _confident(confidence, gt_flow, threshold)
    return _correct(pred_flow, gt_flow, alpha)[mask].float().mean().item() if mask.any() else None


def conf_coverage(visible, confidence, threshold: float = 0.5) -> float | None:
    """Share of visible content pixels whose (cell's) match is confident."""
    if not visible.any():
        return None
    return _confident(confidence, visible, threshold)[visible].float().mean().item()


def confidence_sweep(pred_flow, gt_flow, visible, confidence: torch.Tensor,
                     thresholds=(0.1, 0.3, 0.5, 0.7, 0.9)) -> list[dict[str, float | None]]:
    """Precision / coverage for each confidence threshold (a float confidence map is required)."""
    return [{"threshold": t, "precision": conf_precision(pred_flow, gt_flow, visible, confidence, t),
             "coverage": conf_coverage(visible, confidence, t)} for t in thresholds]


def part_tallies(
    output: torch.Tensor,               # [B, 3, H, W]
    gt_transfer: torch.Tensor,          # [B, 3, H, W]
    content_labels: torch.Tensor,       # [B, H, W]
    num_labels: int,
    pred_flow: torch.Tensor | None = None,
    gt_flow: torch.Tensor | None = None,
    visible: torch.Tensor | None = None,
    min_area: int = 4,
    distinct_de: float = 10.0,
) -> dict[str, torch.Tensor]:
    """Per-label sums over a batch ([L] float each), so that batches pool exactly: ``scored`` and ``assigned``
    (the parts PAA scores and those it counts right), ``valid`` and ``de`` (parts of at least ``min_area`` px and
    their summed dE), and with a flow ``visible`` pixels and ``pck02`` / ``pck05`` hits among them. Which parts
    a transfer gets wrong: a part-averaged score hides whether small parts or large ones fail."""
    out_means, area = part_mean_lab(output, content_labels, num_labels)
    ref_means = part_mean_lab(gt_transfer, content_labels, num_labels)[0]
    valid = _scored_parts(area, min_area)
    scored, hit = _assignment(out_means, ref_means, valid, distinct_de)
    de = (out_means - ref_means).norm(dim=-1) * valid
    tallies = {"scored": scored.sum(0), "assigned": hit.sum(0), "valid": valid.sum(0), "de": de.sum(0)}
    if pred_flow is not None and gt_flow is not None and visible is not None:
        onehot = F.one_hot(content_labels, num_labels).permute(0, 3, 1, 2).bool() & visible    # [B, L, H, W]
        tallies["visible"] = onehot.sum((0, 2, 3))
        for key, alpha in (("pck02", 0.02), ("pck05", 0.05)):
            tallies[key] = (onehot & _correct(pred_flow, gt_flow, alpha)).sum((0, 2, 3))
    return {k: v.double() for k, v in tallies.items()}


def part_scores(tallies: dict[str, torch.Tensor], names) -> dict[str, dict[str, float | None]]:
    """Pooled tallies (:func:`part_tallies`, summed) -> per label name: paa, de_part, pck02, pck05 (None where
    nothing was scored) and ``parts``, how many (image, part) pairs PAA scored."""
    ratio = lambda a, b: None if b == 0 else a / b  # noqa: E731
    out = {}
    for i, name in enumerate(names):
        if i == 0:  # the background is not a part
            continue
        t = {k: float(v[i]) for k, v in tallies.items()}
        out[name] = {"paa": ratio(t["assigned"], t["scored"]), "de_part": ratio(t["de"], t["valid"]),
                     "pck02": ratio(t.get("pck02", 0.0), t.get("visible", 0.0)),
                     "pck05": ratio(t.get("pck05", 0.0), t.get("visible", 0.0)), "parts": int(t["scored"])}
    return out


# ---------------------------------------------------------------------------------------------------------


def compute_metrics(
    output: torch.Tensor,               # [B, 3, H, W] method output
    gt_transfer: torch.Tensor,          # [B, 3, H, W] render(S_content, A_style)
    content_labels: torch.Tensor,       # [B, H, W]
    content_image: torch.Tensor,        # [B, 3, H, W]
    pred_flow: torch.Tensor | None = None,     # [B, 2, h, w] predicted style positions, if the method has any
    gt_flow: torch.Tensor | None = None,       # [B, 2, H, W]
    visible: torch.Tensor | None = None,       # [B, 1, H, W] bool
    confidence: torch.Tensor | None = None,    # [B, 1, h, w] bool, or float thresholded at conf_threshold
    conf_threshold: float = 0.5,
    min_area: int = 4,
    distinct_de: float = 10.0,
) -> dict[str, float | None]:
    """All the evaluation metrics as a dict of floats (None where not applicable).

    Keys: l1, psnr, de_part, paa, de_to_content, bg_l1 (always computed); pck02, pck05, pck10 (need pred_flow,
    gt_flow and visible); conf_precision, conf_coverage (also need confidence).
    """
    num = int(content_labels.max()) + 1
    out_means, area = part_mean_lab(output, content_labels, num)
    ref_means, content_means = (part_mean_lab(x, content_labels, num)[0] for x in (gt_transfer, content_image))
    valid = _scored_parts(area, min_area)
    result: dict[str, float | None] = {
        "l1": l1(output, gt_transfer, content_labels),
        "psnr": psnr(output, gt_transfer, content_labels),
        "de_part": _de(out_means, ref_means, valid),
        "paa": _paa(out_means, ref_means, valid, distinct_de),
        "de_to_content": _de(out_means, content_means, valid),
        "bg_l1": bg_l1(output, content_image, content_labels),
        "pck02": None, "pck05": None, "pck10": None, "conf_precision": None, "conf_coverage": None,
    }
    if pred_flow is not None and gt_flow is not None and visible is not None:
        result["pck02"] = pck(pred_flow, gt_flow, visible, 0.02)
        result["pck05"] = pck(pred_flow, gt_flow, visible, 0.05)
        result["pck10"] = pck(pred_flow, gt_flow, visible, 0.10)
        if confidence is not None:
            result["conf_precision"] = conf_precision(pred_flow, gt_flow, visible, confidence, conf_threshold)
            result["conf_coverage"] = conf_coverage(visible, confidence, conf_threshold)
    return result
