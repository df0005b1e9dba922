"""One frozen configuration for the whole model; it travels as JSON inside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

FILL_MODES = ("propagate", "global", "average", "content", "none")
ALIGN_MODES = ("hard", "soft")
BACKENDS = ("auto", "xformers", "sdpa", "chunked", "naive")
MAX_MEDIAN_RADIUS = 8  # flow_median: a (2r+1)^2 window sorted per pixel
MAX_AFFINE_RADIUS = 32  # flow_affine: a window sampled at most 15 x 15 per pixel
#: The hard path's inference defaults: what ``align`` does at inference, never a weight's shape nor a training step's
#: loss (a teacher's matches aside), so a run may resume under other values of them.
INFERENCE_FIELDS = ("flow_fill", "warp_everywhere", "mirror_search", "mirror_margin", "rotation_search",
                    "rotation_margin", "pose_fit", "pose_fit_margin", "flow_median", "flow_median_sigma",
                    "refine_prior", "flow_affine", "flow_affine_wide", "fill_displacement")


def check_search_options(error: type[Exception], **values: float | None) -> None:
    """Range checks of the hard path's inference options (``None``: not given), raising ``error`` with the fix:
    shared by the config and :meth:`COAT.align`'s overrides."""
    def radius(limit: int) -> tuple:
        return (lambda v: float(v).is_integer() and 0 <= v <= limit,
                f"a window radius in pixels, a whole number from 0 (off) to {limit}")

    rules = {
        "flow_fill": (lambda v: v >= 0, "a sigma in cells (0: off)"),
        "mirror_margin": (lambda v: v >= 0, "a lead in mean confidence (>= 0)"),
        "rotation_margin": (lambda v: v >= 0, "a lead in mean confidence (>= 0)"),
        "rotation_search": (lambda v: 0 <= v <= 45, "an angle in degrees from 0 (off) to 45"),
        "pose_fit_margin": (lambda v: v >= 0, "a lead in mean confidence (>= 0)"),
        "flow_median": radius(MAX_MEDIAN_RADIUS),
        "flow_median_sigma": (lambda v: 0.1 <= v <= 1000, "a colour difference in CIELAB units, from 0.1 to 1000"),
        "flow_affine": radius(MAX_AFFINE_RADIUS),
        "flow_affine_wide": radius(MAX_AFFINE_RADIUS),
        "refine_prior": (lambda v: 0 <= v <= 10,
                         "a similarity penalty at a distance of the window's radius, from 0 (off) to 10"),
    }
    for name, value in values.items():
        ok, what = rules[name]
        if value is None:
            continue
        try:  # NaN fails every rule; a bool or a string is not a number here
            valid = not isinstance(value, (bool, str)) and ok(value)
        except (TypeError, ValueError, OverflowError):
            valid = False
        if not valid:
            raise error(f"{name} is {what}, got {value!r}")


@dataclass(frozen=True)
class COATConfig:
    """Architecture and inference defaults of a COAT model.

    Scales are given as divisors of the model resolution: ``scales=(16, 8, 4)`` at ``resolution=256`` aligns
    feature maps of 16², 32² and 64² cells (coarse to fine).
    """

    # -- geometry -------------------------------------------------------------------------------------------
    resolution: int = 256                      # square model resolution R (power of two, >= 16)
    scales: tuple[int, ...] = (16, 8, 4)       # aligned scales as divisors of R, coarse to fine
    # -- encoder --------------------------------------------------------------------------------------------
    encoder_channels: tuple[int, ...] = (64, 128, 256, 512, 512)  # one per level, R, R/2, R/4, ...
    feature_dim: int = 256                     # FPN feature channels at every aligned scale
    descriptor_dim: int = 128                  # matching descriptor channels (L2-normalised)
    position_input: bool = True                # append the (x, y) grid to the encoder's input (CoordConv)
    encoder_norm_groups: int = 0               # > 0: GroupNorm of this many groups after every encoder convolution
                                               # of the trunk (descriptors leave the identity sooner from scratch,
                                               # with TrainConfig.encoder_lr_mult; BENCHMARKS, Learning speed)
    # -- decoder (StyleGAN2 synthesis) ----------------------------------------------------------------------
    w_dim: int = 256                           # latent channels per layer
    channel_base: int = 8192                   # decoder channels at resolution r: min(channel_base / r, channel_max)
    channel_max: int = 256
    n_content_layers: int = 5                  # layers < n are driven by content latents
    pixel_latents: bool = False                # full-resolution layers read full-resolution latent maps, aligned
                                               # along the finest matches interpolated to every pixel
    # -- correspondence -------------------------------------------------------------------------------------
    temperature: float = 0.02                  # softmax temperature of the soft path (attention scale = 1/T)
    sim_threshold: float = 0.3                 # hard path: minimum cosine similarity of a confident match
    cycle_tolerance: float = 1.0               # hard path: max forward-backward error, in cells (L-inf)
    cycle_sigma: float = 1.0                   # confidence falloff of the cycle error, in cells
    geometric_sigma: float = 1.5               # pair-wise distance check tolerance, in cells of each scale
    geometric_threshold: float = 0.5           # keep matches whose geometric score >= this
    geometric_radius: int = 3                  # neighbourhood radius (cells) of the pair-wise distance check
    confidence_threshold: float = 0.5          # soft path: mask = confidence >= threshold
    fill: str = "propagate"                    # fill of unconfident cells
    coarse_to_fine: bool = True                # hard path: restrict finer searches around coarse matches
                                               # (docs/CORRESPONDENCE.md section 3)
    search_radius: int = 2                     # coarse-to-fine window radius, cells of the finer scale
    center_descriptors: bool = True            # CoCosNet centring before the cosine correlation
    # -- below the cell and the colour path (0 / False: the paper's model) ----------------------------------
    refine_dim: int = 0                        # > 0: full-resolution descriptors of this many channels (the
                                               # refinement stage's; needs pixel_latents)
    refine_radius: int = 0                     # > 0: refine the finest matches at full resolution in a (2r+1)^2
                                               # pixel window of those descriptors (inference default; needs refine_dim)
    refine_temperature: float = 0.05           # softmax temperature of the soft (training) refinement
    refine_prior: float = 0.0                  # hard path (inference default): a window offset's similarity is
                                               # lowered by this x (offset / radius)^2, and a pixel that stays keeps
                                               # its interpolated match (docs/CORRESPONDENCE.md section 4; 0: off)
    warp_style: bool = False                   # the last ToRGB also receives the style image warped along the
                                               # (refined) matches, blended in by a learned gate where trusted
    # -- inference defaults of the hard path (0 / False: as trained; the soft path never uses them) ------------
    flow_fill: float = 0.0                     # > 0: untrusted pixel matches take the trusted ones' flow, averaged
                                               # by normalised convolution at this sigma (cells of the finest scale,
                                               # then 2x and 4x), before refinement; 0: they keep their own match
    fill_displacement: bool = False            # flow_fill averages the trusted matches' displacements (where each
                                               # looks, less where it is), not their positions: a pixel beyond them
                                               # (a frame's edge) looks as far on, not where they look (section 9)
    warp_everywhere: bool = False              # warp_style: offer the warped style's colours to the gate on the
                                               # whole object, not only where matches are trusted
    mirror_search: bool = False                # also align the style's mirror image and keep it for the pairs it
                                               # matches surer by mirror_margin (docs/CORRESPONDENCE.md section 6)
    mirror_margin: float = 0.07                # the lead in mean finest-scale confidence the mirror needs: the style
                                               # as given is the prior (symmetric objects match both ways)
    rotation_search: float = 0.0               # > 0: also align the style turned by +- this many degrees (and their
                                               # mirrors with mirror_search), kept where surer by rotation_margin
    rotation_margin: float = 0.03              # the lead a turned style needs (a turned mirror: both margins)
    pose_fit: bool = False                     # then re-pose the style by a similarity (scale, turn, shift) fitted to
                                               # the trusted finest matches and match again, kept where surer by
                                               # pose_fit_margin (docs/CORRESPONDENCE.md section 6)
    pose_fit_margin: float = 0.05              # the lead the re-posed style needs over the pose search's pick
    flow_median: int = 0                       # > 0: last, each pixel's match becomes the weighted median of those in
                                               # its (2r+1)^2 window, neighbours weighed by how alike the content looks
                                               # (flow edges move onto the content's; docs/CORRESPONDENCE.md section 7)
    flow_median_sigma: float = 10.0            # that likeness's falloff, a colour difference in CIELAB units
    flow_affine: int = 0                       # > 0: before the median, each pixel's match becomes the value at it of
                                               # the affine map fitted to the matches of its window of this radius,
                                               # neighbours weighed as the median's (docs/CORRESPONDENCE.md section 8)
    flow_affine_wide: int = 0                  # > flow_affine: the fit over windows of this radius too, taken where a
                                               # pixel's window looks like it (inside large parts; section 8)

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 16 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two >= 16, got {r}")
        if not self.scales or any(s < 1 or r % s or s & (s - 1) for s in self.scales):
            raise ValueError(f"scales must be powers of two dividing the resolution {r}, got {self.scales}")
        if list(self.scales) != sorted(self.scales, reverse=True) or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct and ordered coarse to fine (decreasing), got {self.scales}")
        if r // self.scales[0] < 2:
            raise ValueError(f"the coarsest scale 1/{self.scales[0]} of {r} px leaves fewer than 2x2 cells")
        if len(self.encoder_channels) < self.encoder_levels:
            raise ValueError(
                f"encoder_channels needs {self.encoder_levels} entries to reach 1/{self.scales[0]}, "
                f"got {len(self.encoder_channels)}"
            )
        g = self.encoder_norm_groups
        if g < 0 or (g and any(c % g for c in (*self.encoder_channels, self.feature_dim))):
            raise ValueError(f"encoder_norm_groups must be 0 or divide every encoder channel count "
                             f"{(*self.encoder_channels, self.feature_dim)}, got {g}")
        if self.fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {self.fill!r}")
        if self.pixel_latents and self.scales[-1] == 1:
            raise ValueError("pixel_latents adds full-resolution latents to coarser matches; the finest aligned scale "
                             "is already 1 (drop pixel_latents or the scale 1)")
        if self.refine_radius < 0 or self.refine_dim < 0 or self.refine_temperature <= 0:
            raise ValueError(f"refine_radius and refine_dim must be >= 0 and refine_temperature > 0, got "
                             f"{self.refine_radius}, {self.refine_dim}, {self.refine_temperature}")
        check_search_options(ValueError, flow_fill=self.flow_fill, mirror_margin=self.mirror_margin,
                             rotation_search=self.rotation_search, rotation_margin=self.rotation_margin,
                             pose_fit_margin=self.pose_fit_margin, flow_median=self.flow_median,
                             flow_median_sigma=self.flow_median_sigma, refine_prior=self.refine_prior,
                             flow_affine=self.flow_affine, flow_affine_wide=self.flow_affine_wide)
        if self.warp_everywhere and not self.warp_style:
            raise ValueError("warp_everywhere widens the warped-style colour path: set warp_style=True as well")
        if self.refine_dim and not self.pixel_latents:
            raise ValueError("refine_dim needs full-resolution features: set pixel_latents=True as well")
        if self.refine_radius and not self.refine_dim:
            raise ValueError("refine_radius searches full-resolution descriptors: set refine_dim > 0 as well")
        if not 1 <= self.n_content_layers <= self.n_layers:
            raise ValueError(f"n_content_layers must be in [1, {self.n_layers}], got {self.n_content_layers}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    # -- derived ----------------------------------------------------------------------------------------------
    @property
    def log2_resolution(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def n_layers(self) -> int:
        """Number of per-layer latents L = 2 log2 R - 2 (rosinality's ``n_latent``)."""
        return 2 * self.log2_resolution - 2

    @property
    def encoder_levels(self) -> int:
        """Encoder levels from R down to the coarsest aligned scale (R, R/2, ..., R/scales[0])."""
        return int(math.log2(self.scales[0])) + 1

    def decoder_channels(self, res: int) -> int:
        return int(min(self.channel_base // res, self.channel_max))

    def layer_resolution(self, layer: int) -> int:
        """Resolution at which latent ``layer`` modulates (docs/METHOD.md "Decoder")."""
        return 4 if layer == 0 else 2 ** ((layer + 1) // 2 + 2)

    def layer_scale(self, layer: int) -> int:
        """Scale (a divisor of R) of the latent map of ``layer``.

        The finest aligned scale whose map is no larger than the layer's resolution (the coarsest scale
        otherwise); with ``pixel_latents``, 1 for the full-resolution layers.
        """
        res = self.layer_resolution(layer)
        if self.pixel_latents and res >= self.resolution:
            return 1
        fitting = [s for s in self.scales if self.resolution // s <= res]
        return fitting[-1] if fitting else self.scales[0]

    @property
    def latent_scales(self) -> tuple[int, ...]:
        """Scales of the encoder's feature maps, coarse to fine: the aligned scales, and 1 with ``pixel_latents``."""
        return self.scales + ((1,) if self.pixel_latents else ())

    @property
    def descriptor_scales(self) -> tuple[int, ...]:
        """Scales with matching descriptors: the aligned scales, and 1 with the refinement's descriptors."""
        return self.scales + ((1,) if self.refine_dim else ())

    # -- presets and serialisation ------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides) -> "COATConfig":
        """A 32 px model with a few channels: for tests and quick experiments."""
        base = dict(
            resolution=32, scales=(8, 4, 2), encoder_channels=(8, 16, 16, 16), feature_dim=16,
            descriptor_dim=16, w_dim=16, channel_base=256, channel_max=16, n_content_layers=3,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def small(cls, **overrides) -> "COATConfig":
        """64-128 px, trainable on a CPU (about 0.87M parameters at 128 px): the project's recipe, the paper's model
        plus full-resolution latents, matches refined below the cell and the warped-style colour path, with
        untrusted pixel matches filled from trusted ones, the colour path offered everywhere, the style's mirror
        image and +-20 degree turns tried at inference, then the style re-posed by its matches, and last each
        pixel's match the median of its neighbours' that look alike in the content, the refinement leaving an
        interpolated match only for a clearly more alike pixel (each one a ``False``/0 override away:
        ``COATConfig.small(warp_style=False, warp_everywhere=False, mirror_search=False, rotation_search=0,
        pose_fit=False, flow_median=0, refine_prior=0)``). Its encoder normalises every convolution of the trunk
        (GroupNorm, ``encoder_norm_groups=8``; checkpoints from before 2026-12-03 have ``encoder_norm_groups=0``)."""
        base = dict(
            resolution=64, scales=(8, 4, 2), encoder_channels=(32, 48, 64, 96), feature_dim=64,
            descriptor_dim=64, w_dim=32, channel_base=2048, channel_max=64, n_content_layers=4,
            pixel_latents=True, refine_dim=16, refine_radius=3, warp_style=True, flow_fill=2.0, warp_everywhere=True,
            mirror_search=True, rotation_search=20.0, pose_fit=True, flow_median=3, encoder_norm_groups=8,
            refine_prior=0.4,
        )
        return cls(**{**base, **overrides})

    @property
    def pixel_matches(self) -> bool:
        """Whether alignments match every pixel of the canvas (for full-resolution latents or the warped-style
        colours): what refinement and the flow median work on."""
        return self.pixel_latents or self.warp_style

    def replace(self, **changes) -> "COATConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "COATConfig":
        data = json.loads(text)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown COATConfig fields {unknown}: the checkpoint is from a newer version")
        data.setdefault("position_input", False)  # checkpoints from before the field had no position input
        for name, value in data.items():
            if isinstance(value, list):
                data[name] = tuple(value)
        return cls(**data)


def parse_overrides(cls, items: list[str] | None) -> dict:
    """``["field=value", ...]`` -> typed overrides of the dataclass ``cls`` (for command lines).

    Types follow the field defaults: booleans accept true/false/1/0, tuples are comma-separated. Raises
    ValueError naming the known fields when a field is unknown or a value does not parse.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        default = fields[name].default
        try:
            out[name] = _parse_like(default, text.strip())
        except ValueError as error:
            raise ValueError(f"{item!r}: {error}") from None
    return out


def _parse_like(default, text: str):
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(default, tuple):
        element = default[0] if default else text
        return tuple(_parse_like(element, part.strip()) for part in text.split(",") if part.strip())
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text
