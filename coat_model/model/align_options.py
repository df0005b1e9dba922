"""The options of one alignment, resolved once against the model's config and recorded exactly as they ran.

:meth:`COAT.align <coat_model.model.coat.COAT.align>` takes overrides (``None`` = the config's default); this module
turns them into one frozen :class:`AlignOptions` that the matching steps read and :class:`Alignment.options
<coat_model.model.coat.Alignment>` keeps. A value a path does not use is recorded as ``None`` (the hard path has no
temperature, the soft path no similarity floor, geometric check or coarse-to-fine windows, and only the soft path
picks an attention backend), and a value a path uses is recorded as used: the hard path filters on
``confidence_threshold`` only when the caller asks for it (0.0 otherwise, whatever the config says).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import COATConfig


@dataclass(frozen=True)
class AlignOptions:
    """What one alignment ran with. ``mode``: "hard" or "soft"; ``scales``: the matched scales, coarse to fine;
    ``fill``: how untrusted cells were filled; ``refine``: whether the finest matches were refined per pixel."""

    mode: str
    scales: tuple[int, ...]
    fill: str
    refine: bool = False
    backend: str | None = None               # soft path: the attention backend
    temperature: float | None = None         # soft path: softmax temperature
    confidence_threshold: float | None = None
    sim_threshold: float | None = None       # hard path: similarity floor
    cycle_sigma: float | None = None
    geometric: bool | None = None            # hard path: the pair-wise distance check
    coarse_to_fine: bool | None = None       # hard path: search windows around the coarser matches
    flow_fill: float | None = None           # hard path: sigma (finest cells) of the untrusted pixel matches' fill
    fill_displacement: bool | None = None    # hard path with flow_fill: the fill averages displacements
    warp_everywhere: bool | None = None      # hard path: the warped style offered on the whole object
    mirror_search: bool | None = None        # hard path: the style's mirror image aligned too, kept where surer
    mirror_margin: float | None = None       # hard path with mirror_search: the lead in mean confidence it needs
    rotation_search: float | None = None     # hard path: the style turned by +- these degrees too (0: not)
    rotation_margin: float | None = None     # hard path with rotation_search: the lead a turned style needs
    pose_fit: bool | None = None             # hard path: the style re-posed by a similarity fitted to its matches
    pose_fit_margin: float | None = None     # hard path with pose_fit: the lead the re-posed style needs
    flow_median: int | None = None           # hard path: the radius of the content-guided flow median (0: off, or
                                             # a model without per-pixel matches)
    flow_median_sigma: float | None = None   # hard path, median or affine fit: the guide's falloff (CIELAB units)
    refine_prior: float | None = None        # hard path with refine: the similarity penalty at the window's radius
    flow_affine: int | None = None           # hard path: the radius of the content-guided local affine fit of the
                                             # per-pixel matches, before the median (0: off, or no per-pixel matches)
    flow_affine_wide: int | None = None      # hard path with flow_affine: the wide fit's radius, inside large parts

    @classmethod
    def resolve(cls, config: COATConfig, *, mode: str, scales: tuple[int, ...], backend: str = "auto",
                temperature: float | None = None, confidence_threshold: float | None = None,
                sim_threshold: float | None = None, cycle_sigma: float | None = None, geometric: bool = True,
                fill: str | None = None, coarse_to_fine: bool | None = None,
                refine: bool | None = None, flow_fill: float | None = None,
                fill_displacement: bool | None = None, warp_everywhere: bool | None = None,
                mirror_search: bool | None = None,
                mirror_margin: float | None = None, rotation_search: float | None = None,
                rotation_margin: float | None = None, pose_fit: bool | None = None,
                pose_fit_margin: float | None = None, flow_median: int | None = None,
                flow_median_sigma: float | None = None, refine_prior: float | None = None,
                flow_affine: int | None = None, flow_affine_wide: int | None = None) -> "AlignOptions":
        """The options :meth:`COAT.align` runs with for these overrides (``None``: the config's value)."""
        pick = lambda value, default: default if value is None else value  # noqa: E731
        common = dict(
            mode=mode, scales=tuple(scales), fill=pick(fill, config.fill),
            refine=bool(config.refine_dim) and (bool(config.refine_radius) if refine is None else refine),
            cycle_sigma=pick(cycle_sigma, config.cycle_sigma),
        )
        if mode == "soft":
            return cls(**common, backend=backend, temperature=pick(temperature, config.temperature),
                       confidence_threshold=pick(confidence_threshold, config.confidence_threshold))
        mirror = bool(pick(mirror_search, config.mirror_search))
        rotation = float(pick(rotation_search, config.rotation_search))
        fit = bool(pick(pose_fit, config.pose_fit))
        return cls(**common, confidence_threshold=pick(confidence_threshold, 0.0),
                   sim_threshold=pick(sim_threshold, config.sim_threshold), geometric=geometric,
                   coarse_to_fine=pick(coarse_to_fine, config.coarse_to_fine),
                   flow_fill=pick(flow_fill, config.flow_fill),
                   fill_displacement=(bool(pick(fill_displacement, config.fill_displacement))
                                      if pick(flow_fill, config.flow_fill) else None),
                   warp_everywhere=config.warp_style and pick(warp_everywhere, config.warp_everywhere),
                   mirror_search=mirror,
                   mirror_margin=float(pick(mirror_margin, config.mirror_margin)) if mirror else None,
                   rotation_search=rotation,
                   rotation_margin=float(pick(rotation_margin, config.rotation_margin)) if rotation else None,
                   pose_fit=fit, pose_fit_margin=float(pick(pose_fit_margin, config.pose_fit_margin)) if fit else None,
                   **_median_options(config, pick(flow_median, config.flow_median), flow_median_sigma,
                                     pick(flow_affine, config.flow_affine),
                                     pick(flow_affine_wide, config.flow_affine_wide)),
                   refine_prior=float(pick(refine_prior, config.refine_prior)) if common["refine"] else None)

    @property
    def poses_searched(self) -> bool:
        """Whether the style is aligned in more poses than as given (mirror or rotation search, or the fitted
        pose)."""
        return bool(self.mirror_search or self.rotation_search or self.pose_fit)

    @classmethod
    def given_matches(cls, config: COATConfig, scales: tuple[int, ...], fill: str, *, refine: bool = False,
                      flow_median: int = 0, flow_median_sigma: float | None = None,
                      flow_affine: int = 0, flow_affine_wide: int = 0) -> "AlignOptions":
        """The options of an alignment built from matches found elsewhere (sampled as the hard path does); their
        per-pixel matches refined (``refine``, a model with refinement descriptors) and passed through the flow
        median (``flow_median`` > 0, a model with per-pixel matches; ``flow_median_sigma`` None: the config's) and
        the local affine fit before it (``flow_affine`` > 0, wider inside large parts with ``flow_affine_wide``) only
        when asked (the refinement with the config's ``refine_prior``)."""
        refine = bool(refine) and bool(config.refine_dim)
        return cls(mode="hard", scales=tuple(scales), fill=fill, refine=refine,
                   **_median_options(config, flow_median, flow_median_sigma, flow_affine, flow_affine_wide),
                   refine_prior=float(config.refine_prior) if refine else None)


def _median_options(config: COATConfig, radius: int, sigma: float | None, affine: int = 0, wide: int = 0) -> dict:
    """The flow median and the local affine fit as an alignment records them: their radii (0 for a model without
    per-pixel matches; the wide fit's 0 unless it is wider than an affine fit that is on) and, when either is on,
    the sigma of the guide they share (None: the config's)."""
    median = int(radius) if config.pixel_matches else 0
    affine = int(affine) if config.pixel_matches else 0
    wide = int(wide) if affine and int(wide) > affine else 0
    return dict(flow_median=median, flow_affine=affine, flow_affine_wide=wide,
                flow_median_sigma=float(config.flow_median_sigma if sigma is None else sigma) if median or affine
                else None)
