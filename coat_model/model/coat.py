"""The COAT model: encode, align, decode, transfer (docs/METHOD.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint_format import save as save_checkpoint
from .affine import guided_affine
from .align_options import AlignOptions
from .config import ALIGN_MODES, FILL_MODES, COATConfig, check_search_options
from .decoder import Decoder
from .encoder import Encoder
from .gather import (
    Gathered, cell_gather, fill_gathered, keep_content_background, nearest_scale, pixel_gather, pixel_matches,
    fill_matches, restrict_to_object, soft_gather, warp_style_image,
)
from .inputs import COATInputError, Frame, check_images, pair_batches
from .matching import Match, hard_match, refine_match, soft_match
from .median import guided_median
from .pose import (
    FittedPose, Pose, candidate_poses, fit_similarity, in_style_coordinates, map_flows, object_confidence,
    per_pair, per_pair_matches, pose_matrices, winners,
)
from .search_memo import NoMemo, SearchMemo


@dataclass
class Latents:
    """Encoder output for a batch of images.

    features: per encoder scale s (a divisor of R; the aligned scales, and 1 with ``pixel_latents``), [B, C, R/s,
    R/s]; descriptors: per aligned scale, the same layout; maps: per decoder layer l,
    the spatial latent W_l = w_avg + offset [B, w_dim, R/s(l), R/s(l)]; frame: where the input sits in the
    model canvas; mask: optional object mask [B, 1, R, R] (1 = object); image: the input on the model canvas
    [B, 3, R, R] in [-1, 1] (what a ``warp_style`` model samples its colours from).
    """

    features: dict[int, torch.Tensor]
    descriptors: dict[int, torch.Tensor]
    maps: list[torch.Tensor]
    frame: Frame
    mask: torch.Tensor | None = None
    image: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.maps[0].shape[0]

    def expand(self, batch: int) -> "Latents":
        """Broadcast a single-image Latents to ``batch`` images (views, no copies)."""
        if self.batch_size == batch:
            return self
        grow = lambda t: t.expand(batch, *t.shape[1:])  # noqa: E731
        return Latents(
            features={s: grow(t) for s, t in self.features.items()},
            descriptors={s: grow(t) for s, t in self.descriptors.items()},
            maps=[grow(t) for t in self.maps],
            frame=self.frame,
            mask=None if self.mask is None else grow(self.mask),
            image=None if self.image is None else grow(self.image),
        )

    @staticmethod
    def select(candidates: list["Latents"], pick: torch.Tensor) -> "Latents":
        """Per image b, ``candidates[pick[b]]`` (Latents of the same batch size and frame: one image in poses)."""
        first = candidates[0]
        return Latents(
            features={s: per_pair([c.features[s] for c in candidates], pick) for s in first.features},
            descriptors={s: per_pair([c.descriptors[s] for c in candidates], pick) for s in first.descriptors},
            maps=[per_pair([c.maps[l] for c in candidates], pick) for l in range(len(first.maps))],
            frame=first.frame,
            mask=per_pair([c.mask for c in candidates], pick),
            image=per_pair([c.image for c in candidates], pick),
        )


@dataclass
class Alignment:
    """Style latents aligned to a content, per scale and per layer.

    flow[s]: matched style coordinates in [-1, 1], [B, 2, h, w]; confidence[s]: [B, 1, h, w] in [0, 1];
    mask[s]: [B, 1, h, w] bool; maps[l]: aligned style latent of layer l; mode: "hard" or "soft".
    options: what the alignment ran with (:class:`~coat_model.model.align_options.AlignOptions`).
    refined: the per-pixel matches below the cell (``refine_dim``, ``refine_radius``; then the content-guided local
    affine fit with ``flow_affine`` and median with ``flow_median``), [B, 2, R, R] flow on the canvas, or None.
    warped: the style image warped along the finest per-pixel matches [B, 3, R, R] in [-1, 1], and trust: where
    the decoder may take its colours [B, 1, R, R] in [0, 1] (``warp_style``), or None. cycle_error[s]: the soft
    path's differentiable forward-backward error in cells (for the cycle loss). With a pose search (``mirror_search``
    or ``rotation_search``; every flow is then given in the style's own coordinates) mirrored: [B] bool, the pairs
    aligned to the style's mirror image (all False when only turns were tried), and with ``rotation_search``
    rotation: [B] degrees clockwise the style was turned for each pair; each None otherwise. With ``pose_fit``,
    fitted: [B] bool, the pairs aligned to the style re-posed by the similarity fitted to their first matches, and
    pose: [B, 2, 3] the map each pair's matches were found in (the posed canvas's pixel p showed the style's pixel
    ``pose[:, :, :2] p + pose[:, :, 2]``, pixel convention: the identity for the style as given). ``pose`` is the
    final pose; for a fitted pair, ``mirrored`` and ``rotation`` stay the searched pose the fit started from.
    """

    flow: dict[int, torch.Tensor]
    confidence: dict[int, torch.Tensor]
    mask: dict[int, torch.Tensor]
    maps: list[torch.Tensor]
    mode: str
    options: AlignOptions | None = None
    refined: Match | None = None
    warped: torch.Tensor | None = None
    trust: torch.Tensor | None = None
    cycle_error: dict[int, torch.Tensor] = field(default_factory=dict)
    mirrored: torch.Tensor | None = None
    rotation: torch.Tensor | None = None
    fitted: torch.Tensor | None = None
    pose: torch.Tensor | None = None

    @classmethod
    def of_matches(cls, matches: dict[int, Match], options, maps: list | None = None, **assembled) -> "Alignment":
        """The alignment of these matches (scale -> :class:`Match`): their flows, confidences, masks and cycle errors,
        with whatever was assembled from them (``maps``, ``refined``, ``warped``, ``trust``; none: the matches
        alone)."""
        return cls(flow={s: m.flow for s, m in matches.items()},
                   confidence={s: m.confidence for s, m in matches.items()},
                   mask={s: m.mask for s, m in matches.items()},
                   cycle_error={s: m.cycle_error for s, m in matches.items() if m.cycle_error is not None},
                   maps=[] if maps is None else maps, mode=options.mode, options=options, **assembled)

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(self.flow)

    def where(self, take: torch.Tensor, other: "Alignment") -> "Alignment":
        """Per pair b, ``other``'s tensors where ``take[b]``, this alignment's elsewhere (same batch and layout;
        ``options`` and ``mode`` are this one's)."""
        def pick(mine, theirs):
            if isinstance(mine, torch.Tensor):
                return per_pair([mine, theirs], take.long())
            if isinstance(mine, dict):
                return {k: pick(v, theirs[k]) for k, v in mine.items()}
            if isinstance(mine, list):
                return [pick(a, b) for a, b in zip(mine, theirs)]
            if isinstance(mine, Match):
                return Match(**{f.name: pick(getattr(mine, f.name), getattr(theirs, f.name))
                                for f in dataclasses.fields(Match)})
            return mine
        return dataclasses.replace(self, **{f.name: pick(getattr(self, f.name), getattr(other, f.name))
                                            for f in dataclasses.fields(self) if f.name not in ("mode", "options")})

    def coverage(self) -> dict[int, float]:
        """Share of confident content cells per scale."""
        return {s: m.float().mean().item() for s, m in self.mask.items()}


class COAT(nn.Module):
    """Correspondence-driven Object Appearance Transfer.

    >>> model = COAT(COATConfig.tiny())
    >>> images, confidence = model.transfer(content, style)     # [B, 3, H, W] in [0, 1] each
    """

    def __init__(self, config: COATConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def device(self) -> torch.device:
        return self.w_avg.device

    # -- encode ------------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, mask: torch.Tensor | None = None, *, check_values: bool = True) -> Latents:
        """Images [B, 3, H, W] in [0, 1] (any size; letterboxed to R) -> :class:`Latents`.

        ``mask`` [B, 1, H, W] or [B, H, W] (1 = object) marks the object: background content cells keep
        their own latents when aligning. ``check_values=False`` skips the scan for NaN and out-of-range values (it
        reads them on the host: the trainer, whose pair builder makes the images, skips it; shapes are checked).
        """
        check_images(images, values=check_values)
        frame = Frame.fit(images.shape[-2], images.shape[-1], self.config.resolution)
        dtype = next(self.parameters()).dtype
        x = frame.to_canvas(images.to(self.device, dtype)) * 2 - 1
        canvas_mask = None
        if mask is not None:
            canvas_mask = frame.to_canvas(self._check_mask(mask, images).to(self.device, dtype))
        return self._encode_canvas(x, frame, canvas_mask)

    def _encode_canvas(self, x: torch.Tensor, frame: Frame, mask: torch.Tensor | None) -> Latents:
        """The encoder on a canvas [B, 3, R, R] in [-1, 1] already framed."""
        features = self.encoder.pyramid(x)
        offsets = self.encoder.latent_offsets(features)
        maps = [self.w_avg.view(1, -1, 1, 1).to(o) + o for o in offsets]
        return Latents(features, self.encoder.descriptors(features), maps, frame, mask, image=x)

    def mirror(self, latents: Latents) -> Latents:
        """The latents of the mirror image (left-right) of what ``latents`` encoded (see :meth:`posed`)."""
        return self.posed(latents, Pose(mirrored=True))

    def posed(self, latents: Latents, pose: Pose) -> Latents:
        """The latents of what ``latents`` encoded in another pose (mirrored, turned; :mod:`coat_model.model.pose`):
        its canvas (and mask) posed and encoded again (the encoder, with its position input, is neither mirror- nor
        rotation-equivariant)."""
        if latents.image is None:
            raise COATInputError("these latents keep no image to pose: encode the style with COAT.encode (or "
                                 "align with mirror_search=False and rotation_search=0)")
        mask = None if latents.mask is None else pose.apply(latents.mask, fill="zeros")
        return self._encode_canvas(pose.apply(latents.image), latents.frame, mask)

    @staticmethod
    def _check_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if mask.dim() == 3:
            mask = mask[:, None]
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise COATInputError(f"mask must be [B, H, W] or [B, 1, H, W], got shape {tuple(mask.shape)}")
        if mask.shape[-2:] != images.shape[-2:]:
            raise COATInputError(
                f"mask size {tuple(mask.shape[-2:])} differs from the image size {tuple(images.shape[-2:])}: "
                "resize the mask to the image first"
            )
        if mask.shape[0] not in (1, images.shape[0]):
            raise COATInputError(f"mask batch {mask.shape[0]} must be 1 or the image batch {images.shape[0]}")
        if not torch.isfinite(mask).all():
            raise COATInputError("mask contains NaN or Inf values")
        return mask.float().clamp(0, 1).expand(images.shape[0], -1, -1, -1)

    # -- align -------------------------------------------------------------------------------------------------
    def align(
        self,
        content: Latents,
        style: Latents,
        *,
        backend: str = "auto",
        mode: str = "hard",
        temperature: float | None = None,
        confidence_threshold: float | None = None,
        sim_threshold: float | None = None,
        cycle_sigma: float | None = None,
        geometric: bool = True,
        fill: str | None = None,
        scales: tuple[int, ...] | None = None,
        coarse_to_fine: bool | None = None,
        refine: bool | None = None,
        flow_fill: float | None = None,
        fill_displacement: bool | None = None,
        warp_everywhere: bool | None = None,
        mirror_search: bool | None = None,
        mirror_margin: float | None = None,
        rotation_search: float | None = None,
        rotation_margin: float | None = None,
        pose_fit: bool | None = None,
        pose_fit_margin: float | None = None,
        flow_median: int | None = None,
        flow_median_sigma: float | None = None,
        refine_prior: float | None = None,
        flow_affine: int | None = None,
        flow_affine_wide: int | None = None,
        memo: SearchMemo | None = None,
    ) -> Alignment:
        """Align the style latents to the content through dense correspondence (docs/CORRESPONDENCE.md).

        Args:
            backend: attention backend of the soft path ("auto", "xformers", "sdpa", "chunked", "naive").
            mode: "hard" (argmax matches, inference default) or "soft" (differentiable, training).
            temperature, confidence_threshold, sim_threshold, cycle_sigma, fill, coarse_to_fine: override the
                config defaults. geometric: the pair-wise distance check of the hard path.
            scales: subset of the config's scales to match; layers of other scales use the nearest matched
                scale's flow.
            refine: refine the finest matches per pixel (needs ``refine_dim``; default: the config's
                ``refine_radius`` > 0).
            flow_fill, warp_everywhere: hard path only (inference), override the config's: untrusted pixel matches
                take the trusted ones' flow (sigma in finest cells, 0 = off) before refinement; a ``warp_style``
                model's gate is offered the warped style on the whole object, not only where matches are trusted.
            fill_displacement: hard path with ``flow_fill``, overrides the config's: the fill averages the trusted
                matches' displacements (matched position less the pixel's own), not their positions, so that an
                untrusted pixel beyond them (at a frame's edge) is not pulled back to where they look
                (docs/CORRESPONDENCE.md section 9).
            mirror_search, mirror_margin, rotation_search, rotation_margin: hard path only, override the config's:
                also align the style's mirror image and the style turned by +- ``rotation_search`` degrees, and keep
                per pair the pose whose finest matches are surest on average over the content's object, less the
                margin each pose needs (:mod:`coat_model.model.pose`; ``Alignment.mirrored`` and
                ``Alignment.rotation`` say which pose each pair took).
            pose_fit, pose_fit_margin: hard path only, override the config's: then re-pose the style by the
                similarity (scale, turn, shift) fitted to each pair's trusted matches, match again and keep it where
                surer by the margin (``Alignment.fitted`` and ``Alignment.pose`` say which pairs took it).
            flow_median, flow_median_sigma: hard path only, override the config's: last, each pixel's match becomes
                the weighted median of the matches within ``flow_median`` pixels, neighbours weighed by how alike
                the content looks (:mod:`coat_model.model.median`; 0 = off); ``flow_median_sigma`` weighs the
                affine fit's neighbours too.
            refine_prior: hard path with refinement, overrides the config's: a window offset's similarity is
                lowered by this x (offset / radius)^2, and a pixel that stays keeps its interpolated match (0 = off).
            flow_affine: hard path only, overrides the config's: before the median, each pixel's match becomes the
                value at it of the affine map fitted to the matches within ``flow_affine`` pixels, neighbours
                weighed as the median's (:mod:`coat_model.model.affine`; 0 = off).
            flow_affine_wide: hard path with ``flow_affine``, overrides the config's: the fit over windows of this
                radius too, taken where a pixel's window looks like it, inside large parts (0 or not wider: off).
            memo: a :class:`~coat_model.model.search_memo.SearchMemo` shared by aligns of the same latents: the
                styles posed and the matches found are kept there and re-used (the same alignment, without
                encoding and matching again when only the pixel stage or the poses searched change).
        """
        cfg = self.config
        if mode not in ALIGN_MODES:
            raise COATInputError(f"mode must be one of {ALIGN_MODES}, got {mode!r}")
        pair_batches(content.batch_size, style.batch_size)
        scales = tuple(cfg.scales if scales is None else scales)
        if not scales or any(s not in cfg.scales for s in scales):
            raise COATInputError(f"scales must be a non-empty subset of the model's scales {cfg.scales}, got {scales}")
        scales = tuple(s for s in cfg.scales if s in scales)
        check_search_options(COATInputError, flow_fill=flow_fill, mirror_margin=mirror_margin,
                             rotation_search=rotation_search, rotation_margin=rotation_margin,
                             pose_fit_margin=pose_fit_margin, flow_median=flow_median,
                             flow_median_sigma=flow_median_sigma, refine_prior=refine_prior,
                             flow_affine=flow_affine, flow_affine_wide=flow_affine_wide)
        options = AlignOptions.resolve(
            cfg, mode=mode, scales=scales, backend=backend, temperature=temperature,
            confidence_threshold=confidence_threshold, sim_threshold=sim_threshold, cycle_sigma=cycle_sigma,
            geometric=geometric, fill=fill, coarse_to_fine=coarse_to_fine, refine=refine, flow_fill=flow_fill,
            fill_displacement=fill_displacement, warp_everywhere=warp_everywhere, mirror_search=mirror_search,
            mirror_margin=mirror_margin,
            rotation_search=rotation_search, rotation_margin=rotation_margin, pose_fit=pose_fit,
            pose_fit_margin=pose_fit_margin, flow_median=flow_median, flow_median_sigma=flow_median_sigma,
            refine_prior=refine_prior, flow_affine=flow_affine, flow_affine_wide=flow_affine_wide,
        )
        memo = (NoMemo() if memo is None else memo).bind(self)
        match = lambda s: memo.matches(content, s, options, lambda: self._match(content, s, options))  # noqa: E731
        batch = content.batch_size
        given = memo.posed(style, None, batch, lambda: style.expand(batch))
        if not (options.mirror_search or options.rotation_search):  # the style as given (and the soft path)
            searched, matches, to_style = given, match(given), lambda a: a
        else:
            poses = candidate_poses(bool(options.mirror_search), options.rotation_search)  # as given first
            styles = [given] + [memo.posed(style, p, batch, lambda p=p: self.posed(style, p).expand(batch))
                                for p in poses[1:]]  # one style: posed once
            match_sets = [match(s) for s in styles]
            pick = winners(match_sets, poses, content.mask, options.mirror_margin or 0.0,
                           options.rotation_margin or 0.0)
            searched, matches = Latents.select(styles, pick), per_pair_matches(match_sets, pick)
            to_style = lambda a: in_style_coordinates(a, poses, pick)  # noqa: E731
        if not options.pose_fit:  # each pair assembled once, from the pose it took
            return to_style(self._assemble(content, searched, matches, options))
        return self._refit(content, given, searched, matches, to_style, options, memo)

    def _refit(self, content: Latents, style: Latents, searched: Latents, matches: dict[int, Match], to_style,
               options: AlignOptions, memo: SearchMemo | NoMemo) -> Alignment:
        """The style re-posed by the similarity fitted to the searched pose's trusted finest ``matches`` (their
        confidence as weights; ``searched``: each pair's posed style, ``to_style`` maps an alignment to it back into
        ``style``'s coordinates), matched again and kept per pair where its finest matches are surer over the
        content's object by ``pose_fit_margin`` (:mod:`coat_model.model.pose`); each pair is then assembled once,
        from the matches it keeps."""
        if style.image is None:
            raise COATInputError("these latents keep no image to re-pose: encode the style with COAT.encode (or "
                                 "align with pose_fit=False)")
        r, finest = self.config.resolution, min(matches)
        first = to_style(Alignment.of_matches(matches, options))  # the matches alone, in the style's coordinates
        weight = first.confidence[finest] * first.mask[finest]
        theta, fitted = fit_similarity(first.flow[finest], weight, first.mirrored)
        before = pose_matrices(first.mirrored, first.rotation, content.batch_size, theta.device)
        take = fitted
        if bool(fitted.any()):  # else no pair has matches enough to fit: nothing to match again
            pose = FittedPose.from_cells(theta, r, finest)
            mask = None if style.mask is None else pose.apply(style.mask, fill="zeros")
            posed = memo.posed(style, pose, content.batch_size,
                               lambda: self._encode_canvas(pose.apply(style.image), style.frame, mask))
            again = memo.matches(content, posed, options, lambda: self._match(content, posed, options))
            score = lambda m: object_confidence(m[finest].confidence, content.mask)  # noqa: E731
            take = fitted & (score(again) > score(matches) + options.pose_fit_margin)
        if not bool(take.any()):
            alignment = to_style(self._assemble(content, searched, matches, options))
            return dataclasses.replace(alignment, fitted=take, pose=before)
        pick = take.long()
        assembled = self._assemble(content, Latents.select([searched, posed], pick),
                                   per_pair_matches([matches, again], pick), options)
        kept = to_style(assembled)
        refit = map_flows(assembled, lambda flow, cell: pose.to_style(flow, r, cell))
        merged = kept.where(take, dataclasses.replace(refit, mirrored=kept.mirrored, rotation=kept.rotation))
        return dataclasses.replace(merged, fitted=take, pose=torch.where(take[:, None, None], pose.theta, before))

    def _match(self, content: Latents, style: Latents, options: AlignOptions) -> dict[int, Match]:
        """The matches of every scale of ``options``, coarse to fine."""
        cfg = self.config
        matches: dict[int, Match] = {}
        prior = None
        for s in options.scales:
            dc, ds = content.descriptors[s], style.descriptors[s]
            if options.mode == "soft":
                layers = self._layers_at(s)
                values = torch.cat([style.maps[l] for l in layers], 1) if layers else None
                m = soft_match(
                    dc, ds, values, temperature=options.temperature, cycle_sigma=options.cycle_sigma,
                    threshold=options.confidence_threshold, backend=options.backend, center=cfg.center_descriptors,
                )
            else:
                m = hard_match(
                    dc, ds, sim_threshold=options.sim_threshold, cycle_tolerance=cfg.cycle_tolerance,
                    cycle_sigma=options.cycle_sigma, geometric=options.geometric, geometric_radius=cfg.geometric_radius,
                    geometric_sigma=cfg.geometric_sigma, geometric_threshold=cfg.geometric_threshold,
                    confidence_threshold=options.confidence_threshold,
                    prior=prior if options.coarse_to_fine else None, search_radius=cfg.search_radius,
                    center=cfg.center_descriptors,
                )
            matches[s] = prior = restrict_to_object(m, content.mask)  # before the next scale searches around it
        return matches

    def align_from_matches(self, content: Latents, style: Latents, matches: dict[int, Match], *,
                           fill: str | None = None, refine: bool = False, flow_median: int = 0,
                           flow_median_sigma: float | None = None, flow_affine: int = 0,
                           flow_affine_wide: int = 0) -> Alignment:
        """Aligned latents from matches found elsewhere: ground truth, another matcher, edited matches.

        ``matches[s]`` gives, for every content cell of scale s (a subset of the model's scales), its style location
        (``flow``, cell-centre convention in [-1, 1]) and whether it is trusted (``mask``); style maps are sampled
        there as in the hard path (nearest cell), and untrusted cells are filled by ``fill``. With the ground truth
        this is the decoder's oracle: the transfer with perfect correspondence.

        The per-pixel matches are the finest ones interpolated, as given. ``refine`` searches them again in the
        model's full-resolution descriptors, ``flow_affine`` (a radius; ``flow_affine_wide`` inside large parts) fits
        them locally and ``flow_median`` (a radius; ``flow_median_sigma`` None: the config's) passes them through the
        content-guided median, as :meth:`align` does: with the ground truth, what the model's own pixel stage makes of
        perfect cell matches.
        """
        cfg = self.config
        pair_batches(content.batch_size, style.batch_size)
        if not matches or any(s not in cfg.scales for s in matches):
            raise COATInputError(f"matches must be keyed by the model's scales {cfg.scales}, got {sorted(matches)}")
        for s, m in matches.items():
            expected = (content.batch_size, 2, *content.descriptors[s].shape[-2:])
            if tuple(m.flow.shape) != expected or m.mask.shape[-2:] != m.flow.shape[-2:]:
                raise COATInputError(f"matches at scale 1/{s}: flow must be {list(expected)} with a mask of the same "
                                     f"size, got {list(m.flow.shape)} and {list(m.mask.shape)}")
        fill = cfg.fill if fill is None else fill
        if fill not in FILL_MODES:
            raise COATInputError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        check_search_options(COATInputError, flow_median=flow_median, flow_median_sigma=flow_median_sigma,
                             flow_affine=flow_affine, flow_affine_wide=flow_affine_wide)
        # Only where the matches point and which are trusted: values a soft alignment carried are not reused.
        # The content mask restricts them as it does the matches align finds.
        matches = {s: restrict_to_object(Match(flow=matches[s].flow, confidence=matches[s].confidence,
                                               mask=matches[s].mask.bool()), content.mask)
                   for s in cfg.scales if s in matches}
        options = AlignOptions.given_matches(cfg, tuple(matches), fill, refine=refine, flow_median=flow_median,
                                             flow_median_sigma=flow_median_sigma, flow_affine=flow_affine,
                                             flow_affine_wide=flow_affine_wide)
        return self._assemble(content, style.expand(content.batch_size), matches, options)

    def _assemble(self, content: Latents, style: Latents, matches: dict[int, Match],
                  options: AlignOptions) -> Alignment:
        """The alignment of the matches of every scale: the per-pixel matches, every layer's aligned map and the
        warped style (coat_model/model/gather.py)."""
        pixels = self._pixel_matches(content, style, matches, options)
        maps = [self._aligned_map(l, content, style, matches, options, pixels) for l in range(self.config.n_layers)]
        warped = trust = None
        if self.config.warp_style and pixels is not None and style.image is not None:
            warped, trust = warp_style_image(style.image, pixels, soft=options.mode == "soft",
                                             content_mask=content.mask, everywhere=bool(options.warp_everywhere))
        return Alignment.of_matches(matches, options, maps=maps, refined=pixels if options.refine else None,
                                    warped=warped, trust=trust)

    def _pixel_matches(self, content: Latents, style: Latents, matches: dict[int, Match],
                       options: AlignOptions) -> Match | None:
        """The finest matches per pixel of the canvas (interpolated between trusted matches, then refined in a
        window of full-resolution descriptors when ``options.refine``, then each the value at it of the affine map
        fitted to its window's with ``options.flow_affine`` and the content-guided median of its window's with
        ``options.flow_median``), restricted to the content's object; None when no full-resolution consumer needs
        them."""
        cfg = self.config
        if not cfg.pixel_matches:
            return None
        finest = min(matches)
        pixels = pixel_matches(matches[finest], finest, cfg.resolution)
        if options.flow_fill:  # the refinement then searches around the trusted neighbours' flow
            pixels = fill_matches(pixels, sigma=options.flow_fill * finest,
                                  displacement=bool(options.fill_displacement))
        if options.refine and 1 in content.descriptors and 1 in style.descriptors:
            pixels = refine_match(content.descriptors[1], style.descriptors[1], pixels,
                                  radius=max(1, cfg.refine_radius), temperature=cfg.refine_temperature,
                                  mode=options.mode, prior=options.refine_prior or 0.0)
        if (options.flow_affine or options.flow_median) and content.image is not None:
            guide = (content.image + 1) / 2  # the content canvas is in [-1, 1]
            voters = content.frame.image_area(content.image.device)  # not the letterbox padding, nor the background
            voters = voters if content.mask is None else voters * content.mask
            flow = guided_affine(pixels.flow, guide, options.flow_affine or 0, options.flow_median_sigma, voters,
                                 wide=options.flow_affine_wide or 0)
            flow = guided_median(flow, guide, options.flow_median or 0, options.flow_median_sigma, voters)
            pixels = dataclasses.replace(pixels, flow=flow)
        return restrict_to_object(pixels, content.mask)

    def _layers_at(self, scale: int) -> list[int]:
        """The decoder layers whose latent map has this scale, in order (the soft path aligns them together)."""
        return [l for l in range(self.config.n_layers) if self.config.layer_scale(l) == scale]

    def _gather(self, layer: int, style: Latents, matches: dict[int, Match], options: AlignOptions,
                pixels: Match | None) -> Gathered:
        """The style's map of ``layer`` read along the matches, on the grid of that map (coat_model/model/gather.py)."""
        s = self.config.layer_scale(layer)
        if s in matches and matches[s].aligned is not None:  # soft path: the attention already aligned it
            return soft_gather(matches[s], self._layers_at(s).index(layer), self.config.w_dim)
        nearest = nearest_scale(matches, s)
        if self.config.pixel_latents and s == 1:  # full-resolution latents: the finest matches per pixel (refined)
            return pixel_gather(style.maps[layer], pixels, reach=nearest)
        sampling = "nearest" if options.mode == "hard" else "bilinear"
        return cell_gather(style.maps[layer], matches[nearest], style.maps[layer].shape[-2:], sampling)

    def _aligned_map(self, layer: int, content: Latents, style: Latents, matches: dict[int, Match],
                     options: AlignOptions, pixels: Match | None = None) -> torch.Tensor:
        """The aligned style latent of ``layer``: gathered, restricted to the content's object, filled where
        untrusted, the background back to the content's latents (coat_model/model/gather.py)."""
        gathered = self._gather(layer, style, matches, options, pixels)
        gathered.match = restrict_to_object(gathered.match, content.mask)
        content_map = content.maps[layer]
        out = fill_gathered(gathered, mode=options.fill, style_map=style.maps[layer], content_map=content_map,
                            average=self.w_avg)
        return keep_content_background(out, content_map, content.mask)

    # -- decode ------------------------------------------------------------------------------------------------
    def mix_latents(
        self, content: Latents, alignment: Alignment, *, n_content_layers: int | None = None,
        style_strength: float = 1.0, truncation: float | None = None,
    ) -> list[torch.Tensor]:
        """Per-layer latents of the hybrid: content for layers < n, aligned style for the rest."""
        n = self.config.n_content_layers if n_content_layers is None else n_content_layers
        if not 0 <= n <= self.n_layers:
            raise COATInputError(f"n_content_layers must be in [0, {self.n_layers}], got {n}")
        if len(alignment.maps) != self.n_layers or alignment.maps[0].shape[0] != content.batch_size:
            raise COATInputError("the alignment does not belong to these content latents (batch or layer mismatch)")
        maps = [
            c if l < n else c + style_strength * (a - c)
            for l, (c, a) in enumerate(zip(content.maps, alignment.maps))
        ]
        if truncation is not None:
            avg = self.w_avg.view(1, -1, 1, 1)
            maps = [avg + truncation * (m - avg) for m in maps]
        return maps

    def decode(
        self,
        content: Latents,
        alignment: Alignment,
        *,
        n_content_layers: int | None = None,
        style_strength: float = 1.0,
        seed: int | None = None,
        truncation: float | None = None,
    ) -> torch.Tensor:
        """Render the hybrid at the content's input size: [B, 3, H, W] in [0, 1].

        ``n_content_layers`` = n: layers < n take the content latents (structure), the rest the aligned style
        latents (appearance); n = L reproduces the content. ``seed`` draws fresh noise; None uses the fixed noise
        buffers (deterministic). ``truncation`` psi pulls latents toward the average.
        """
        maps = self.mix_latents(
            content, alignment, n_content_layers=n_content_layers, style_strength=style_strength,
            truncation=truncation,
        )
        noise = None
        if seed is not None:
            noise = self.decoder.random_noise(content.batch_size, torch.Generator().manual_seed(seed))
        n = self.config.n_content_layers if n_content_layers is None else n_content_layers
        canvas = self.synthesize(maps, alignment, noise, style_strength if n < self.n_layers else 0.0)
        return content.frame.from_canvas(((canvas + 1) / 2).clamp(0, 1))

    def synthesize(self, maps: list[torch.Tensor], alignment: Alignment | None = None,
                   noise: list[torch.Tensor] | None = None, style_strength: float = 1.0) -> torch.Tensor:
        """The decoder on mixed latents: canvas [B, 3, R, R] in [-1, 1]. A ``warp_style`` model also takes the
        alignment's warped style where it is trusted (scaled by ``style_strength``; 0 renders from latents only)."""
        warped = trust = None
        if alignment is not None and alignment.warped is not None and style_strength:
            warped, trust = alignment.warped, alignment.trust * min(1.0, style_strength)
        return self.decoder(maps, noise, warped=warped, trust=trust)

    # -- all in one --------------------------------------------------------------------------------------------
    def transfer(
        self,
        content_images: torch.Tensor,
        style_images: torch.Tensor,
        *,
        content_mask: torch.Tensor | None = None,
        n_content_layers: int | None = None,
        style_strength: float = 1.0,
        seed: int | None = None,
        truncation: float | None = None,
        **align_options,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content structure + style appearance: (images [B, 3, H, W], confidence [B, 1, H, W]) at the content size.

        The confidence is the finest aligned scale's, upsampled to the image. ``align_options`` go to
        :meth:`align`.
        """
        check_images(content_images, "content_images")
        check_images(style_images, "style_images")
        pair_batches(content_images.shape[0], style_images.shape[0])
        content = self.encode(content_images, content_mask)
        style = self.encode(style_images)
        alignment = self.align(content, style, **align_options)
        images = self.decode(
            content, alignment, n_content_layers=n_content_layers, style_strength=style_strength, seed=seed,
            truncation=truncation,
        )
        return images, self.confidence_image(content, alignment)

    def confidence_image(self, content: Latents, alignment: Alignment) -> torch.Tensor:
        """The finest scale's confidence at the content's input size, [B, 1, H, W]."""
        finest = alignment.scales[-1]
        r = self.config.resolution
        conf = F.interpolate(alignment.confidence[finest].float(), size=(r, r), mode="bilinear", align_corners=False)
        return content.frame.from_canvas(conf).clamp(0, 1)

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path, metadata: dict[str, str] | None = None) -> None:
        """Write weights and config to a ``.safetensors`` file (see :mod:`coat_model.checkpoint_format`)."""
        save_checkpoint(self, path, metadata)
