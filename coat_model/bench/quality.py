"""Transfer quality against exact ground truth on procedural faces (docs/METHOD.md "Evaluation"), with the baselines.

    python -m coat_model.bench quality --ckpt checkpoints/coat_faces.safetensors --pairs 200 --split easy --json q.json

``--first 100 --pairs 100`` scores pairs 100-199 only: a shard of the run, added up with the others by ``python -m
coat_model.bench merge`` (:mod:`.shards`). ``--set OPTION=VALUE`` changes an inference default of the checkpoint's
config (such as ``flow_affine``) for the run, as a file saved with it would run.

``--data procedural:cars`` scores on the second procedural category (``train/data/cars.py``) instead: the check
that a recipe made on faces works, with only ``--data`` changed, on a category it was not made on.

Methods, all in one run on the same held-out pairs:
- ``coat``: the checkpoint's transfer (hard matches, confidence filtering, propagate fill); its matches are the
  refined per-pixel ones of a ``refine_radius`` model (``coat_unrefined``: the same without the refinement, scored
  on its finest cell matches);
- ``coat_trusted_warp`` (a checkpoint whose inference defaults set ``flow_fill``, ``warp_everywhere``,
  ``mirror_search``, ``rotation_search``, ``pose_fit``, ``flow_median`` or ``flow_affine``): the same network
  without them: untrusted pixels keep their own matches, the decoder renders them, and the style is matched as
  given; ``coat_no_mirror`` (with ``mirror_search``), ``coat_no_rotation`` (with ``rotation_search``),
  ``coat_no_fit`` (with ``pose_fit``), ``coat_no_median`` (with ``flow_median``), ``coat_no_prior`` (with
  ``refine_prior``), ``coat_no_affine`` (with ``flow_affine``), ``coat_no_wide`` (with ``flow_affine_wide``: the
  fit at ``flow_affine`` everywhere) and ``coat_no_displacement`` (with ``fill_displacement``: the fill averages
  positions): the defaults without that one alone;
- ``coat_modulation``: the same network and matches through the paper's pure modulation path (for a
  ``warp_style`` model: without the warped style's colours);
- ``coat_global``: the same network with every aligned map replaced by the global style code (the
  Swapping-Autoencoder-like ablation that isolates correspondence);
- ``coat_flow_warp``: the style image sampled at the network's own finest matches (no decoder);
- ``coat_gt_matches``: the same decoder fed the ground-truth correspondence at every aligned scale (the decoder's
  oracle: what perfect matching would give this network); ``coat_gt_refined`` (a model whose defaults refine the
  per-pixel matches, fit them locally or take their flow median): the same true cell matches passed through the
  model's own pixel stage, refinement, affine fit and median as its defaults run them, scored on the per-pixel
  matches that stage makes of them (what the pixel stage adds to, or takes from, perfect cell matches);
- ``coat_autoencode``: the network rebuilding the true transfer itself from its own latents (every cell matched to
  itself): no transfer at all, the fidelity ceiling of its encoder and decoder at this resolution;
- zero-training baselines: ``identity``, ``style_copy`` (its matches, scored by PCK, are every pixel to itself: what
  matching has to beat on roughly aligned objects), ``reinhard`` (global colour transfer), ``bbox_warp`` (the style's
  object box resampled onto the content's);
- oracles with ground truth: ``partwise_reinhard`` (Reinhard per true part) and ``gt_warp`` (the style sampled at
  the true correspondence).

Per part, for ``PART_METHODS``: PAA, dE and PCK of every label pooled over the pairs (a second table, and
``parts`` in the JSON): a part-averaged PAA does not say whether the small parts or the large ones fail.

The network's variants of one batch share a :class:`~coat_model.model.search_memo.SearchMemo`: the poses and the
matches they search alike are computed once (the scores are those of aligning each afresh, value for value).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint_format import CheckpointError
from ..io import grow, load
from ..model.coat import COAT
from ..model.config import COATConfig
from ..model.coords import cells_to_flow, cells_to_pixels, flow_to_cells, identity_flow
from ..model.matching import Match, resample_flow
from ..model.search_memo import SearchMemo
from ..train.data.categories import parse_procedural
from ..train.data.faces import FACES, Category, sample_pairs
from ..train.pairs import at_cell_centres
from . import baselines
from .metrics import compute_metrics, part_scores, part_tallies

KEYS = ("paa", "de_part", "psnr", "pck02", "pck05", "pck10", "conf_precision", "conf_coverage", "bg_l1")
PART_METHODS = ("coat", "coat_flow_warp", "coat_gt_matches", "style_copy")  # also scored per part
EVAL_SEED = 987_654_321  # held out: training draws images from other seeds
BATCH_SIZE = 25  # the command's batches: a shard (``--first``) starts where one of them does
INFERENCE_DEFAULTS = tuple(name for name in inspect.signature(COAT.align).parameters  # config fields that only
                           if name in {f.name for f in dataclasses.fields(COATConfig)})  # say how weights run


def cell_flow_to_pixels(flow: torch.Tensor, scale: int, resolution: int) -> torch.Tensor:
    """Matches of a cell grid (cell-centre convention, [B, 2, h, w]) -> a per-pixel flow [B, 2, R, R] in image
    coordinates (align_corners=True over R pixels): every pixel takes its cell's match, placed at the centre
    of the matched style cell (how the bench scores the network's matches). Interpolated between cells instead:
    :func:`coat_model.model.matching.resample_flow` to scale 1."""
    h, w = flow.shape[-2:]
    image = cells_to_flow(cells_to_pixels(flow_to_cells(flow, h, w), scale), resolution, resolution)
    return F.interpolate(image, size=(resolution, resolution), mode="nearest")


def gt_matches(flow: torch.Tensor, visible: torch.Tensor, resolution: int, scales) -> dict[int, Match]:
    """Ground-truth matches of every cell at each scale: the true style location of the cell centre (cell-centre
    convention of :class:`~coat_model.model.matching.Match`), trusted where the centre pixel is visible in the style.

    flow: [B, 2, R, R] content pixel -> style location in [-1, 1] (align_corners=True); visible: [B, 1, R, R] bool.
    """
    matches = {}
    for s in scales:
        mask = at_cell_centres(visible.float(), s, mode="nearest") > 0.5
        matches[s] = Match(flow=resample_flow(flow, 1, s, resolution), confidence=mask.float(), mask=mask)
    return matches


@torch.no_grad()
def scored(model, content_latents, alignment) -> dict[str, torch.Tensor]:
    """What the bench scores of one alignment: the transfer, the per-pixel matches it decodes with (the refined
    ones, or the finest cells' at their pixels) and its trusted pixels (the finest scale's mask)."""
    finest, r = alignment.scales[-1], model.config.resolution
    flow = (cell_flow_to_pixels(alignment.flow[finest], finest, r) if alignment.refined is None
            else alignment.refined.flow)
    trusted = F.interpolate(alignment.mask[finest].float(), size=(r, r), mode="nearest") > 0.5
    return dict(output=model.decode(content_latents, alignment), pred_flow=flow, confidence=trusted)


@torch.no_grad()
def coat_outputs(model, content: torch.Tensor, style: torch.Tensor, gt_flow: torch.Tensor | None = None,
                 visible: torch.Tensor | None = None, target: torch.Tensor | None = None) -> dict[str, dict]:
    """Outputs and matches of the network and of its ablations for one batch; ``coat_gt_matches`` and
    ``coat_autoencode`` only when the ground truth (``gt_flow`` and ``visible``; ``target``) is given."""
    c, s = model.encode(content), model.encode(style)
    memo = SearchMemo()  # the variants below share the poses and matches they search alike
    align = functools.partial(model.align, memo=memo)
    alignment = align(c, s)
    finest = alignment.scales[-1]
    r = model.config.resolution
    cells = cell_flow_to_pixels(alignment.flow[finest], finest, r)
    # each variant is scored on its own per-pixel matches and its own trusted pixels
    out = {"coat": scored(model, c, alignment)}
    flow, confidence = out["coat"]["pred_flow"], out["coat"]["confidence"]
    # no match is trusted, and no warped colour offered where none is (the ablation isolates correspondence)
    global_code = align(c, s, fill="global", confidence_threshold=2.0, warp_everywhere=False,
                        mirror_search=False, rotation_search=0.0, pose_fit=False, flow_median=0, flow_affine=0)
    warp = F.grid_sample(style, flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=True)
    out["coat_global"] = dict(output=model.decode(c, global_code))
    out["coat_flow_warp"] = dict(output=warp, pred_flow=flow)
    if alignment.refined is not None:  # the same network with the cell-level matches only
        out["coat_unrefined"] = dict(output=model.decode(c, align(c, s, refine=False)), pred_flow=cells,
                                     confidence=confidence)
    defaults = alignment.options
    if (defaults.flow_fill or defaults.warp_everywhere or defaults.poses_searched or defaults.flow_median
            or defaults.flow_affine):
        plain = align(c, s, flow_fill=0.0, warp_everywhere=False, mirror_search=False, rotation_search=0.0,
                      pose_fit=False, flow_median=0, refine_prior=0.0, flow_affine=0)  # the hard path as trained
        out["coat_trusted_warp"] = scored(model, c, plain)
    for name, option in (("coat_no_mirror", "mirror_search"), ("coat_no_rotation", "rotation_search"),
                         ("coat_no_fit", "pose_fit"), ("coat_no_median", "flow_median"),
                         ("coat_no_prior", "refine_prior"), ("coat_no_affine", "flow_affine"),
                         ("coat_no_wide", "flow_affine_wide"), ("coat_no_displacement", "fill_displacement")):
        if getattr(defaults, option):  # the defaults without this one alone
            out[name] = scored(model, c, align(c, s, **{option: 0}))
    if alignment.warped is not None:
        out["coat_modulation"] = dict(output=model.decode(c, dataclasses.replace(alignment, warped=None, trust=None)))
    if gt_flow is not None:
        true_cells = gt_matches(gt_flow, visible, r, model.config.scales)
        oracle = model.align_from_matches(c, s, true_cells)
        out["coat_gt_matches"] = dict(output=model.decode(c, oracle))
        if defaults.refine or defaults.flow_median or defaults.flow_affine:  # the model's own pixel stage fed the
            staged = model.align_from_matches(c, s, true_cells, refine=defaults.refine,  # true cell matches
                                              flow_median=defaults.flow_median or 0,
                                              flow_median_sigma=defaults.flow_median_sigma,
                                              flow_affine=defaults.flow_affine or 0,
                                              flow_affine_wide=defaults.flow_affine_wide or 0)
            out["coat_gt_refined"] = dict(output=model.decode(c, staged), pred_flow=staged.refined.flow)
    if target is not None:
        t = model.encode(target)
        itself = gt_matches(identity_flow(r).to(target).expand(len(target), -1, -1, -1),
                            torch.ones_like(target[:, :1], dtype=torch.bool), r, model.config.scales)
        out["coat_autoencode"] = dict(output=model.decode(t, model.align_from_matches(t, t, itself)))
    return out


class Pooled:
    """Metrics of several methods pooled over batches, each weighted by its batch size; a metric a batch does not
    have (None) is left out of that method's mean (None when no batch had it)."""

    def __init__(self):
        self.sums: dict[str, dict[str, float]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, name: str, metrics: dict[str, float | None], n: int) -> None:
        self.sums.setdefault(name, {})
        self.counts.setdefault(name, {})
        for key in KEYS:
            if metrics[key] is not None:
                self.sums[name][key] = self.sums[name].get(key, 0.0) + metrics[key] * n
                self.counts[name][key] = self.counts[name].get(key, 0) + n

    def add_sums(self, sums: dict[str, dict[str, float]], counts: dict[str, dict[str, int]]) -> None:
        """Another pooling's ``sums`` and ``counts`` (a shard's record) added to these."""
        for name, values in sums.items():
            into_sums, into_counts = self.sums.setdefault(name, {}), self.counts.setdefault(name, {})
            for key, value in values.items():
                into_sums[key] = into_sums.get(key, 0.0) + value
                into_counts[key] = into_counts.get(key, 0) + counts[name][key]

    def means(self) -> dict[str, dict[str, float | None]]:
        return {name: {k: self.sums[name][k] / self.counts[name][k] if k in self.counts[name] else None for k in KEYS}
                for name in self.sums}


def on_cpu(method: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
    """A method's ``output`` or ``pred_flow`` as the metrics take it (float32 on the CPU), or None without it."""
    return None if key not in method else method[key].float().cpu()


def score(method: dict[str, torch.Tensor], pairs) -> dict[str, float | None]:
    """:func:`metrics.compute_metrics` of one method's ``output`` (and ``pred_flow`` / ``confidence`` where it has
    them) against a batch of bench pairs."""
    return compute_metrics(on_cpu(method, "output"), pairs.target, pairs.content_labels, pairs.content,
                           pred_flow=on_cpu(method, "pred_flow"), gt_flow=pairs.flow, visible=pairs.visible,
                           confidence=None if "confidence" not in method else method["confidence"].cpu())


@dataclasses.dataclass
class Report:
    """What the bench measured: ``methods`` (method -> metric -> value, :data:`KEYS`) and ``parts`` (for
    :data:`PART_METHODS`: method -> label -> paa, de_part, pck02, pck05, parts; see :func:`metrics.part_scores`).
    ``pooled`` and ``tallies`` are the sums they come from: what :mod:`.shards` adds up across runs."""

    methods: dict[str, dict[str, float | None]]
    parts: dict[str, dict[str, dict[str, float | None]]]
    pooled: Pooled
    tallies: dict[str, dict[str, torch.Tensor]]

    @classmethod
    def of(cls, pooled: Pooled, tallies: dict[str, dict[str, torch.Tensor]], labels) -> "Report":
        """The report of these sums: the methods' means and the parts' scores (``labels``: the category's)."""
        return cls(pooled.means(), {name: part_scores(t, labels) for name, t in tallies.items()}, pooled, tallies)


def evaluate(model, n_pairs: int = 200, split: str = "easy", batch_size: int = BATCH_SIZE, seed: int = EVAL_SEED,
             device=None, category: Category = FACES) -> dict[str, dict[str, float | None]]:
    """Metrics per method, pooled over ``n_pairs`` pairs (weighted by batch size)."""
    return report(model, n_pairs, split, batch_size, seed, device, category).methods


def check_first(first: int, batch_size: int = BATCH_SIZE) -> None:
    """A shard's first pair must be where one of the full run's batches starts, or ValueError says so."""
    if first < 0 or first % batch_size:
        raise ValueError(f"first={first}: start a shard at a multiple of the batch size, here a multiple of "
                         f"{batch_size} (where one of the full run's batches starts)")


def report(model, n_pairs: int = 200, split: str = "easy", batch_size: int = BATCH_SIZE, seed: int = EVAL_SEED,
           device=None, category: Category = FACES, first: int = 0) -> Report:
    """Metrics per method pooled over ``n_pairs`` pairs (weighted by batch size) of ``category`` (faces by
    default), and per part for :data:`PART_METHODS` (pooled over every scored part). ``first`` skips the bench's
    first pairs: a multiple of ``batch_size``, so that the batches are the full run's (a shard of it)."""
    check_first(first, batch_size)
    r = model.config.resolution
    device = device or model.w_avg.device
    pooled = Pooled()
    tallies: dict[str, dict[str, torch.Tensor]] = {}
    for start in range(first, first + n_pairs, batch_size):
        n = min(batch_size, first + n_pairs - start)
        pairs = sample_pairs(n, seed=seed + start, size=r, split=split, category=category)
        content, style = pairs.content.to(device), pairs.style.to(device)
        methods = coat_outputs(model, content, style, pairs.flow.to(device), pairs.visible.to(device),
                               pairs.target.to(device))
        labels = pairs.content_labels
        methods["identity"] = dict(output=baselines.identity(pairs.content, pairs.style))
        methods["style_copy"] = dict(output=baselines.style_copy(pairs.content, pairs.style),  # every pixel to itself
                                     pred_flow=identity_flow(r).expand(n, -1, -1, -1))
        methods["reinhard"] = dict(output=baselines.reinhard(pairs.content, pairs.style, (labels != 0)[:, None],
                                                             (pairs.style_labels != 0)[:, None]))
        methods["bbox_warp"] = dict(output=baselines.bbox_warp(pairs.content, pairs.style, labels, pairs.style_labels))
        methods["partwise_reinhard"] = dict(output=baselines.partwise_reinhard(pairs.content, pairs.style, labels,
                                                                               pairs.style_labels))
        methods["gt_warp"] = dict(output=baselines.gt_warp(pairs.content, pairs.style, pairs.flow, labels,
                                                           pairs.visible, pairs.style_labels), pred_flow=pairs.flow)
        for name, m in methods.items():
            pooled.add(name, score(m, pairs), n)
            if name in PART_METHODS:
                t = part_tallies(on_cpu(m, "output"), pairs.target, labels, len(category.labels),
                                 pred_flow=on_cpu(m, "pred_flow"), gt_flow=pairs.flow, visible=pairs.visible)
                tallies[name] = {k: tallies.get(name, {}).get(k, 0) + v for k, v in t.items()}
    return Report.of(pooled, tallies, category.labels)


def format_table(results: dict[str, dict]) -> str:
    width = max(18, *(len(name) + 1 for name in results))  # the longest ablation's name keeps the columns
    header = f"{'method':<{width}}" + "".join(f"{k:>15}" for k in KEYS)
    lines = [header, "-" * len(header)]
    for name, metrics in results.items():
        lines.append(f"{name:<{width}}"
                     + "".join(f"{'-' if metrics[k] is None else f'{metrics[k]:.3f}':>15}" for k in KEYS))
    return "\n".join(lines)


def format_parts(parts: dict[str, dict[str, dict]]) -> str:
    """PAA and PCK@0.02 / 0.05 per part, one column pair per method of :data:`PART_METHODS` that has them."""
    names = [n for n in PART_METHODS if n in parts]
    if not names:
        return ""
    cell = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    header = f"{'part':<12}{'scored':>7}" + "".join(f"{n[:16] + ' PAA':>21}" for n in names) + \
        f"{'coat PCK@.02':>14}{'coat PCK@.05':>14}"
    lines = [header, "-" * len(header)]
    for label, first in parts[names[0]].items():
        row = f"{label:<12}{first['parts']:>7}" + "".join(f"{cell(parts[n][label]['paa']):>21}" for n in names)
        coat = parts.get("coat", {}).get(label, {})
        row += f"{cell(coat.get('pck02')):>14}{cell(coat.get('pck05')):>14}"
        lines.append(row)
    return "\n".join(lines)


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``, shared by the bench commands that draw held-out pairs (read back with :func:`data_category`)."""
    parser.add_argument("--data", default="procedural:faces",
                        help="the procedural category the pairs come from: procedural:faces or procedural:cars (not "
                             "a folder: the bench needs the category's true parts and correspondence)")


def data_category(parser: argparse.ArgumentParser, data: str) -> Category:
    """``--data``'s procedural category, or the parser's error (the split is ``--split``'s, not ``-hard``'s)."""
    if data.endswith("-hard"):
        parser.error("the split is --split's: give --data without -hard")
    try:
        return parse_procedural(data)[0]
    except ValueError as error:
        parser.error(str(error))


def record(report: Report, **meta) -> dict:
    """The bench's JSON record: ``meta`` (ckpt, data, pairs, first, split, resolution, ...), the means and the parts,
    and under ``sums`` what they pool (a shard's record adds up with the others': :func:`.shards.merge`)."""
    sums = {"pooled": {"sums": report.pooled.sums, "counts": report.pooled.counts},
            "tallies": {name: {k: v.tolist() for k, v in t.items()} for name, t in report.tallies.items()}}
    return {**meta, "methods": report.methods, "parts": report.parts, "sums": sums}


def parse_value(text: str):
    """``true``/``false`` -> bool, ``8/4`` -> a tuple of scales, a number -> int or float, anything else as is."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if "/" in low:
        return tuple(int(v) for v in low.split("/"))
    for kind in (int, float):
        try:
            return kind(low)
        except ValueError:
            pass
    return text.strip()


def parse_option(key: str, text: str):
    """An inference option's value as ``COAT.align`` takes it: :func:`parse_value`, and ``scales`` always a tuple."""
    value = parse_value(text)
    return (value,) if key == "scales" and isinstance(value, int) else value


def parse_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--set OPTION=VALUE`` items -> the inference defaults they change (only those: the weights stay the file's)."""
    settings = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in INFERENCE_DEFAULTS:
            parser.error(f"--set {item!r}: give OPTION=VALUE with an inference default of the checkpoint's config "
                         f"({', '.join(INFERENCE_DEFAULTS)})")
        try:
            settings[key.strip()] = parse_option(key.strip(), value)
        except ValueError:
            parser.error(f"--set {item!r}: {value!r} is not a value of {key.strip()}")
    return settings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coat_model.bench quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--first", type=int, default=0,
                   help="skip the bench's first pairs (a multiple of 25): one shard of a run that several processes "
                        "or sessions share, added up by `python -m coat_model.bench merge`")
    p.add_argument("--split", choices=("easy", "hard"), default="easy")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", dest="settings",
                   help="score the checkpoint with this inference default changed (repeat for more), as a file "
                        "saved with it would run: what to bench before bundling new defaults")
    add_data_argument(p)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    category = data_category(p, args.data)
    settings = parse_settings(p, args.settings)
    try:
        check_first(args.first)
    except ValueError as error:
        p.error(str(error))
    try:
        model = grow(args.ckpt, **settings).eval() if settings else load(args.ckpt)
    except CheckpointError as error:
        p.error(str(error))
    model = model.to(args.device)
    measured = report(model, args.pairs, args.split, BATCH_SIZE, device=torch.device(args.device),
                      category=category, first=args.first)
    print(format_table(measured.methods))
    print()
    print(format_parts(measured.parts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record(measured, ckpt=str(args.ckpt), data=args.data, pairs=args.pairs,
                                               first=args.first, split=args.split, settings=settings,
                                               resolution=model.config.resolution), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
