"""Procedural faces with exact ground truth (docs/METHOD.md "Evaluation").

Every face is rendered from two independent parameter sets:

* **structure** ``S`` (:class:`Structure`): global similarity pose (rotation, scale, translation, optional
  horizontal flip), face shape, hairstyle, placement of eyes/brows/nose/mouth/ears, gaze, eye openness, smile
  and head tilt (articulation);
* **appearance** ``A`` (:class:`Appearance`): per-part colours and textures and the background gradient.

A face is a stack of 15 part *instances* (:data:`INSTANCES`, back to front) carrying 11 labels
(:data:`LABELS`, 0 = background). Each instance is a canonical implicit shape in its own **local
coordinates** ``u``, placed in the image by an invertible map::

    v = (u_x * max(1 - taper * u_y, 0.4), u_y)   # taper: egg-shaped head, nose
    w = (v_x, v_y + bend * v_x ** 2)          # bend: arched brows, smiling lips
    x = matrix @ w + offset                   # affine: part placement, head tilt, global pose, flip

and textures are functions of ``u`` (times a fixed per-instance scale), so they move with the part. Hence
``render(S_content, A_style)`` is the exact appearance transfer, and mapping a content pixel to the style
pixel of the same instance with the same ``u`` is the exact dense correspondence.

Hard negatives by construction: hair and brows share one strand texture, and skin, ears, neck and nose share
one blotch texture, each in its own colour.

Conventions. Image coordinates are in ``[-1, 1]`` with ``x`` to the right and ``y`` down, in the
``align_corners=True`` convention of ``torch.nn.functional.grid_sample`` (``-1`` is the centre of the first
pixel), so a flow in these units can be passed to ``grid_sample`` directly.

Anti-aliasing is analytic: each instance's implicit field ``f`` (negative inside) is divided by its
finite-difference gradient magnitude to get a signed distance in pixels and a coverage
``clamp(0.5 - d, 0, 1)``; instances are alpha-composited back to front. Labels are exact point samples at
pixel centres (topmost instance with ``f < 0``), i.e. a pixel is labelled with the instance covering more
than half of it.

Rendering is a painter's loop over the 15 instances, each evaluated only inside the union of its bounding
boxes over a chunk of faces; the batch is vectorised, there is no loop over pixels. Speed, one CPU thread
(``python -m pytest tests/test_faces.py -k speed -s`` prints it): 460-820 images/s at 64 px and 180-320
images/s at 128 px on the 2-core development machine (the lower figures while it was shared, load ~5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, NamedTuple, Sequence

import torch

from ...model.coords import pixel_axis
from ..streams import mix_seed

__all__ = [
    "LABELS", "INSTANCES", "NUM_LABELS", "SPLITS", "Structure", "Appearance", "FacePairs", "Category", "FACES",
    "sample_structure", "sample_appearance", "render", "true_transfer", "true_correspondence",
    "sample_pairs", "ProceduralDataset", "FaceDataset", "FaceDraw", "make_generator",
]

LABELS: tuple[str, ...] = (
    "background", "skin", "hair", "brows", "eye_whites", "iris", "nose", "lips", "ears", "neck", "clothing",
)
NUM_LABELS = len(LABELS)
_L = {name: i for i, name in enumerate(LABELS)}


class Instance(NamedTuple):
    """One drawable part: a canonical shape in its own local frame, with one label."""

    name: str
    label: int
    clip: str | None            # drawn only inside this other instance (the iris inside its eye)
    texture_scale: tuple[float, float]   # face units per local unit, for metric-looking textures


INSTANCES: tuple[Instance, ...] = (         # back to front
    Instance("hair_back", _L["hair"], None, (1.2, 1.5)),
    Instance("neck", _L["neck"], None, (0.5, 0.75)),
    Instance("clothing", _L["clothing"], None, (2.3, 1.0)),
    Instance("ear_l", _L["ears"], None, (0.19, 0.29)),
    Instance("ear_r", _L["ears"], None, (0.19, 0.29)),
    Instance("head", _L["skin"], None, (0.92, 1.2)),
    Instance("nose", _L["nose"], None, (0.1, 0.21)),
    Instance("lips", _L["lips"], None, (0.3, 0.1)),
    Instance("sclera_l", _L["eye_whites"], None, (0.22, 0.1)),
    Instance("sclera_r", _L["eye_whites"], None, (0.22, 0.1)),
    Instance("iris_l", _L["iris"], "sclera_l", (0.12, 0.12)),
    Instance("iris_r", _L["iris"], "sclera_r", (0.12, 0.12)),
    Instance("brow_l", _L["brows"], None, (0.26, 0.07)),
    Instance("brow_r", _L["brows"], None, (0.26, 0.07)),
    Instance("hair_top", _L["hair"], None, (1.0, 1.25)),
)
_HEAD_PARTS = torch.tensor([inst.name not in ("neck", "clothing") for inst in INSTANCES])
_TEXTURE_GROUPS = {
    "blotch": ("neck", "ear_l", "ear_r", "head", "nose"),       # shared skin texture (hard negatives)
    "strands": ("hair_back", "brow_l", "brow_r", "hair_top"),   # shared hair texture (hard negatives)
    "cloth": ("clothing",),
    "iris": ("iris_l", "iris_r"),
    "sclera": ("sclera_l", "sclera_r"),
    "lips": ("lips",),
}
_OUTSIDE = 1e4      # field value of absent instances
_NO_CUT = (1.0, 1e3, 0.0, 0.0)
_TAPER_FLOOR = 0.4
_EDGE_TOLERANCE = 1e-5      # round-off allowance when testing whether a target lies inside [-1, 1]


# ---------------------------------------------------------------------------------------------------------
# Parameter containers


class _TensorBatch:
    """Mixin for frozen dataclasses whose fields are all tensors with a leading batch axis."""

    def __len__(self) -> int:
        return next(iter(vars(self).values())).shape[0]

    def _map(self, fn):
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device) -> "_TensorBatch":
        return self._map(lambda t: t.to(device, non_blocking=True))

    def index(self, idx) -> "_TensorBatch":
        """Sub-batch by an int, slice, index list or bool mask (an int keeps the batch axis)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return self._map(lambda t: t[idx])

    @classmethod
    def cat(cls, items: Sequence["_TensorBatch"]):
        return cls(**{f.name: torch.cat([getattr(it, f.name) for it in items]) for f in fields(cls)})


@dataclass(frozen=True)
class Structure(_TensorBatch):
    """Geometry of a batch of B objects (faces, or another category's), per part instance (P = the category's
    ``len(instances)``: 15 for faces, see INSTANCES).

    matrix:  [B, P, 2, 2] linear part of the local -> image map (includes flip, so det may be < 0)
    offset:  [B, P, 2]    translation of that map, image units
    taper:   [B, P]       egg taper of the local shape (see module docstring)
    bend:    [B, P]       parabolic bend of the local shape
    lens:    [B, P]       shape: intersection of disks of radius sqrt(1 + c^2) at (0, +-c); 0 = unit disk
    cut:     [B, P, 4]    (sign, h0, h1, h2): keep sign * (u_y - h0 - h1 u_x^2 - h2 u_x) < 0
    present: [B, P] bool  instance drawn at all (hairstyles)
    flipped: [B] bool     horizontally flipped face (information only; already in ``matrix``)
    """

    matrix: torch.Tensor
    offset: torch.Tensor
    taper: torch.Tensor
    bend: torch.Tensor
    lens: torch.Tensor
    cut: torch.Tensor
    present: torch.Tensor
    flipped: torch.Tensor


@dataclass(frozen=True)
class Appearance(_TensorBatch):
    """Colours and textures of a batch of B objects, per label (L = the category's ``len(labels)``: NUM_LABELS = 11
    for faces; 0 = background). The texture fields below are named for the faces; another category's parts draw
    from them through its ``texture_of``.

    base:       [B, L, 3] main RGB colour of each part in [0, 1] (background: gradient start)
    accent:     [B, L, 3] texture colour mixed in by the part's pattern (background: gradient end)
    skin_waves: [B, 3, 3] blotch texture (kx, ky, phase) shared by skin, ears, neck, nose
    strands:    [B, 4]    hair texture (angle, frequency, wave amplitude, wave frequency) shared by hair, brows
    cloth:      [B, 4]    clothing pattern (kind 0 plain / 1 stripes / 2 checks / 3 dots, angle, freq, phase)
    iris:       [B, 3]    (number of spokes, phase, pupil radius)
    background: [B]       gradient direction angle
    """

    base: torch.Tensor
    accent: torch.Tensor
    skin_waves: torch.Tensor
    strands: torch.Tensor
    cloth: torch.Tensor
    iris: torch.Tensor
    background: torch.Tensor

    def with_background_of(self, other: "Appearance") -> "Appearance":
        """This appearance with ``other``'s background colours and gradient (batches must match)."""
        base, accent = self.base.clone(), self.accent.clone()
        base[:, 0], accent[:, 0] = other.base[:, 0], other.accent[:, 0]
        return replace(self, base=base, accent=accent, background=other.background.clone())


# ---------------------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class _Split:
    rotation: float         # max |global rotation|, degrees
    scale: tuple[float, float]   # head half-width in image units (face units -> image)
    translate: float        # max |translation|, image units
    tilt: float             # max |head tilt relative to the body| (articulation), degrees
    flip: float             # probability of a horizontal flip
    gaze: float             # max |iris offset| as a share of the eye half-width
    eye_open: tuple[float, float]   # lens parameter of the eyes (larger = narrower)
    smile: tuple[float, float]      # lips bend


_SPLITS = {
    "easy": _Split(8.0, (0.36, 0.44), 0.06, 4.0, 0.0, 0.25, (0.55, 0.9), (-0.9, 0.3)),
    "hard": _Split(30.0, (0.30, 0.50), 0.15, 20.0, 0.5, 0.45, (0.4, 1.4), (-1.6, 0.8)),
}
SPLITS = tuple(_SPLITS)   # every category has these two


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return split


def make_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU ``torch.Generator``: returned as is, or seeded from an int."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _sym(g: torch.Generator, n: int, amplitude: float) -> torch.Tensor:
    return _uniform(g, n, -amplitude, amplitude)


def _choice(g: torch.Generator, n: int, probs: Sequence[float]) -> torch.Tensor:
    return torch.multinomial(torch.tensor(probs), n, replacement=True, generator=g)


def _rot(angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 2, 2] (positive angle turns +x towards +y, i.e. clockwise on screen)."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


class _Part(NamedTuple):
    """Placement of one instance in face space (head centre at the origin, head half-width about 1); [n] each."""

    cx: torch.Tensor
    cy: torch.Tensor
    rx: torch.Tensor                    # local unit along x, face units (negative: mirrored local frame)
    ry: torch.Tensor
    rotation: torch.Tensor
    taper: torch.Tensor | float = 0.0
    bend: torch.Tensor | float = 0.0
    lens: torch.Tensor | float = 0.0
    cut: tuple = _NO_CUT                # (sign, h0, h1, h2), tensors or floats
    present: torch.Tensor | bool = True


def _mirrored(part: _Part) -> _Part:
    """The right-hand twin of a left-hand part; its local frame is mirrored too, so textures are symmetric."""
    return part._replace(cx=-part.cx, rx=-part.rx, rotation=-part.rotation)


def _face_parts(g: torch.Generator, n: int, cfg: _Split) -> tuple[dict[str, _Part], torch.Tensor]:
    """Random face-space placement of every instance, and the head half-height b (for the neck pivot)."""
    u = lambda lo, hi: _uniform(g, n, lo, hi)  # noqa: E731
    s = lambda amplitude: _sym(g, n, amplitude)  # noqa: E731
    zero = torch.zeros(n)
    a, b, k = u(0.85, 1.0), u(1.1, 1.3), u(0.05, 0.3)          # head half-width, half-height, chin taper
    ey, ex, ew = u(-0.12, 0.05), u(0.36, 0.46), u(0.19, 0.25)   # eyes: height, spacing, half-width
    ir, gx, gy = ew * u(0.45, 0.6), ew * s(cfg.gaze), ew * s(0.1)
    ear_y = u(0.0, 0.2)
    ear_x = a * (1 - k * ear_y / b) * torch.sqrt(1 - (ear_y / b) ** 2) * 0.97     # on the head outline
    hairstyle = _choice(g, n, (0.35, 0.3, 0.3, 0.05))                              # short, bob, long, bald
    long_hair = hairstyle == 2
    parts = {
        "hair_back": _Part(zero, torch.where(long_hair, u(0.8, 1.0), u(0.2, 0.3)),
                           a * torch.where(long_hair, u(1.2, 1.4), u(1.15, 1.3)),
                           b * torch.where(long_hair, u(1.6, 1.9), u(1.0, 1.15)), zero,
                           present=(hairstyle == 1) | long_hair),
        "neck": _Part(zero, b * 0.85 + 0.55, a * u(0.42, 0.55), torch.full((n,), 0.75), zero),
        "clothing": _Part(zero, b + u(1.35, 1.6), u(2.3, 2.9), u(0.9, 1.2), zero,
                          cut=(-1.0, u(-0.8, -0.4), u(-8.0, -3.0), 0.0)),               # neckline
        "ear_l": _Part(-ear_x, ear_y, u(0.16, 0.22), u(0.25, 0.33), -u(0.05, 0.3)),
        "head": _Part(zero, zero, a, b, zero, taper=k),
        "nose": _Part(zero, u(0.22, 0.36), u(0.085, 0.12), u(0.17, 0.26), zero, taper=-0.6),
        "lips": _Part(zero, u(0.56, 0.7), u(0.25, 0.37), u(0.09, 0.14), zero, bend=u(*cfg.smile),
                      lens=u(0.3, 0.8)),
        "sclera_l": _Part(-ex, ey, ew, ew, s(0.12), lens=u(*cfg.eye_open)),
        "iris_l": _Part(-ex + gx, ey + gy, ir, ir, zero),
        "brow_l": _Part(-(ex + u(-0.02, 0.04)), ey - u(0.27, 0.36), ew * u(1.0, 1.35), u(0.05, 0.085), s(0.25),
                        bend=u(0.4, 1.6)),
        "hair_top": _Part(zero, -0.04 * b, a * u(1.06, 1.14), b * u(1.03, 1.1), zero, taper=k,
                          cut=(1.0, u(-0.75, -0.3), u(0.3, 1.2), s(0.3)), present=hairstyle != 3),   # hairline
    }
    for name in ("ear", "sclera", "brow", "iris"):
        parts[f"{name}_r"] = _mirrored(parts[f"{name}_l"])
    parts["iris_r"] = parts["iris_r"]._replace(cx=ex + gx)          # the gaze is shared, not mirrored
    return parts, b


def _stack(parts: dict[str, _Part], n: int, instances: Sequence[Instance] = INSTANCES) -> dict[str, torch.Tensor]:
    """Per-field tensors [n, P] (cut: [n, P, 4]) in the order of ``instances`` (the faces' by default)."""
    full = lambda v: v if isinstance(v, torch.Tensor) else torch.full((n,), v)  # noqa: E731
    ordered = [parts[inst.name] for inst in instances]
    out = {field: torch.stack([full(getattr(p, field)) for p in ordered], 1)
           for field in _Part._fields if field != "cut"}
    out["cut"] = torch.stack([torch.stack([full(v) for v in p.cut], -1) for p in ordered], 1)
    out["present"] = out["present"].bool()
    return out


def sample_structure(n: int, generator: int | torch.Generator = 0, split: str = "easy") -> Structure:
    """Sample ``n`` face geometries. ``split="hard"`` adds flips, larger poses and articulation."""
    cfg, g = _SPLITS[check_split(split)], make_generator(generator)
    parts, b = _face_parts(g, n, cfg)
    p = _stack(parts, n)
    tilt = torch.deg2rad(_sym(g, n, cfg.tilt))
    rotation, scale = torch.deg2rad(_sym(g, n, cfg.rotation)), _uniform(g, n, *cfg.scale)
    shift = torch.stack([_sym(g, n, cfg.translate), -0.12 + _sym(g, n, cfg.translate)], -1)
    flipped = torch.rand(n, generator=g) < cfg.flip

    # local -> face: R(rotation) diag(rx, ry), centre (cx, cy)
    matrix = _rot(p["rotation"]) @ torch.diag_embed(torch.stack([p["rx"], p["ry"]], -1))
    offset = torch.stack([p["cx"], p["cy"]], -1)
    # articulation: head parts turn by `tilt` around the top of the neck
    pivot = torch.stack([torch.zeros(n), 0.9 * b], -1)[:, None]
    head_rot = torch.where(_HEAD_PARTS[None, :, None, None], _rot(tilt)[:, None], torch.eye(2))
    matrix = head_rot @ matrix
    offset = (head_rot @ (offset - pivot)[..., None])[..., 0] + pivot
    return _posed(p, matrix, offset, scale, rotation, shift, flipped)


def _posed(p: dict[str, torch.Tensor], matrix: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor,
           rotation: torch.Tensor, shift: torch.Tensor, flipped: torch.Tensor) -> Structure:
    """The structure of parts placed in object space (``matrix`` [n, P, 2, 2], ``offset`` [n, P, 2], the shapes in
    ``p``) under the global pose: image = scale * R(rotation) * Flip * object + shift (every category's)."""
    n = len(scale)
    mirror = torch.diag_embed(torch.stack([1.0 - 2.0 * flipped.float(), torch.ones(n)], -1))
    pose = (scale[:, None, None] * _rot(rotation) @ mirror)[:, None]           # [n, 1, 2, 2]
    matrix = pose @ matrix
    offset = (pose @ offset[..., None])[..., 0] + shift[:, None]
    return Structure(matrix, offset, p["taper"], p["bend"], p["lens"], p["cut"], p["present"], flipped)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (hue wraps) -> RGB [..., 3]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


def _random_colour(g, n, s=(0.2, 1.0), v=(0.2, 0.95), h=(0.0, 1.0)) -> torch.Tensor:
    return _hsv_to_rgb(_uniform(g, n, *h) % 1.0, _uniform(g, n, *s), _uniform(g, n, *v))


_HAIR_PALETTE = torch.tensor([
    (0.06, 0.05, 0.05), (0.20, 0.12, 0.07), (0.38, 0.24, 0.13), (0.55, 0.27, 0.12),
    (0.85, 0.70, 0.42), (0.75, 0.74, 0.72), (0.62, 0.18, 0.08),
])


def _waves(g, n: int) -> torch.Tensor:
    """Three plane waves per sample [n, 3, (kx, ky, phase)]: the blotch texture's."""
    angle = torch.rand(n, 3, generator=g) * 2 * math.pi
    freq = 3.0 + 6.0 * torch.rand(n, 3, generator=g)
    phase = torch.rand(n, 3, generator=g) * 2 * math.pi
    return torch.stack([freq * torch.cos(angle), freq * torch.sin(angle), phase], -1)


def _strands(g, n: int) -> torch.Tensor:
    """Strand texture per sample [n, (angle, frequency, wave amplitude, wave frequency)]."""
    u = lambda lo, hi: _uniform(g, n, lo, hi)  # noqa: E731
    return torch.stack([u(0.0, math.pi), u(12.0, 24.0), u(0.0, 1.5), u(2.0, 6.0)], -1)


def _mix(g, n: int, p: float, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per sample: ``first`` with probability p, else ``second`` ([n, 3])."""
    return torch.where((torch.rand(n, generator=g) < p)[:, None], first, second)


def sample_appearance(n: int, generator: int | torch.Generator = 0) -> Appearance:
    """Sample ``n`` appearances (independent of any structure)."""
    g = make_generator(generator)
    u = lambda lo, hi: _uniform(g, n, lo, hi)  # noqa: E731
    skin = _mix(g, n, 0.4, _random_colour(g, n, (0.2, 0.6), (0.35, 0.98), (0.02, 0.1)),
                _random_colour(g, n, (0.25, 0.8), (0.4, 0.95)))
    natural_hair = _HAIR_PALETTE[_choice(g, n, [1.0] * len(_HAIR_PALETTE))] * u(0.85, 1.15)[:, None]
    hair = _mix(g, n, 0.5, natural_hair.clamp(0, 1), _random_colour(g, n, (0.4, 1.0), (0.3, 0.95)))
    skin_like = lambda dark: torch.lerp(  # noqa: E731  skin-related but distinct colours (nose, ears, neck)
        skin * dark[:, None], _random_colour(g, n, (0.3, 1.0), (0.3, 0.9)), u(0.3, 0.6)[:, None])
    base = torch.stack([
        _random_colour(g, n, (0.0, 0.6), (0.3, 1.0)),                           # background
        skin,
        hair,
        _random_colour(g, n, (0.2, 1.0), (0.12, 0.7)),                          # brows
        _random_colour(g, n, (0.0, 0.3), (0.7, 1.0)),                           # eye whites (tinted)
        _random_colour(g, n, (0.4, 1.0), (0.35, 0.9)),                          # iris
        skin_like(u(0.6, 0.85)),                                                # nose
        _mix(g, n, 0.35, _random_colour(g, n, (0.35, 0.9), (0.4, 0.9), (0.9, 1.05)),
             _random_colour(g, n, (0.3, 1.0), (0.3, 0.95))),                    # lips
        skin_like(u(0.8, 1.0)),                                                 # ears
        skin_like(u(0.55, 0.8)),                                                # neck
        _random_colour(g, n),                                                   # clothing
    ], 1)
    accent = base * torch.stack([
        torch.ones(n), u(0.8, 0.92), u(0.45, 0.75), u(0.5, 0.8), u(0.7, 0.85), 0.12 * torch.ones(n),
        u(0.8, 0.92), u(0.4, 0.55), u(0.8, 0.92), u(0.8, 0.92), torch.ones(n),
    ], 1)[..., None]
    accent[:, 0] = _random_colour(g, n, (0.0, 0.6), (0.3, 1.0))              # background gradient end
    accent[:, _L["clothing"]] = _random_colour(g, n)                          # second colour of the pattern
    skin_waves, strands = _waves(g, n), _strands(g, n)
    cloth = torch.stack([_choice(g, n, (0.2, 0.3, 0.25, 0.25)).float(), u(0.0, math.pi), u(4.0, 9.0),
                         u(0.0, 2 * math.pi)], -1)
    iris = torch.stack([torch.randint(10, 25, (n,), generator=g).float(), u(0.0, 2 * math.pi), u(0.3, 0.5)], -1)
    return Appearance(base, accent, skin_waves, strands, cloth, iris, u(0.0, 2 * math.pi))


# ---------------------------------------------------------------------------------------------------------
# Geometry of one instance: local coordinates, implicit field, bounding window


def _pixel_grid(size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates: x [1, 1, size] and y [1, size, 1] (align_corners=True convention)."""
    t = pixel_axis(size, device)
    return t.view(1, 1, size), t.view(1, size, 1)


def _b(t: torch.Tensor) -> torch.Tensor:
    """Per-face parameters [B] -> [B, 1, 1], to broadcast against point sets [B, H, W]."""
    return t.view(-1, 1, 1)


def _taper_factor(taper: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """Width factor of the taper at height u_y. The floor (never reached inside a shape, |taper| <= 0.6) keeps
    the map invertible everywhere and the field's far side free of near-singular gradients."""
    return (1.0 - taper * uy).clamp_min(_TAPER_FLOOR)


def _local_coords(s: Structure, i: int, x: torch.Tensor, y: torch.Tensor):
    """Local coordinates (u_x, u_y) [B, H, W] of image points x, y (broadcastable to [B, H, W]) in instance i."""
    inv = torch.linalg.inv_ex(s.matrix[:, i]).inverse  # never singular (scales >= 0.1); no error check: no sync
    dx, dy = x - _b(s.offset[:, i, 0]), y - _b(s.offset[:, i, 1])
    wx = _b(inv[:, 0, 0]) * dx + _b(inv[:, 0, 1]) * dy
    wy = _b(inv[:, 1, 0]) * dx + _b(inv[:, 1, 1]) * dy
    uy = wy - _b(s.bend[:, i]) * wx * wx
    return wx / _taper_factor(_b(s.taper[:, i]), uy), uy


def _local_to_image(s: Structure, inst: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor):
    """Image position (x, y) of local point (ux, uy) [B, H, W] of instance ``inst`` [B, H, W] (int64)."""
    b, h, w = inst.shape
    params = torch.cat([s.matrix.flatten(2), s.offset, s.taper[..., None], s.bend[..., None]], -1)  # [B, P, 8]
    per_pixel = params.gather(1, inst.reshape(b, -1, 1).expand(-1, -1, params.shape[-1]))
    m00, m01, m10, m11, ox, oy, taper, bend = per_pixel.view(b, h, w, -1).unbind(-1)
    vx = ux * _taper_factor(taper, uy)
    wy = uy + bend * vx * vx
    return m00 * vx + m01 * wy + ox, m10 * vx + m11 * wy + oy


def _shape_field(s: Structure, i: int, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """Implicit field [B, H, W] of instance i (not clipped): negative inside, _OUTSIDE where absent."""
    c = _b(s.lens[:, i])
    f = torch.maximum(torch.hypot(ux, uy - c), torch.hypot(ux, uy + c)) - torch.sqrt(1.0 + c * c)
    sign, h0, h1, h2 = (_b(t) for t in s.cut[:, i].unbind(-1))
    f = torch.maximum(f, sign * (uy - h0 - (h1 * ux + h2) * ux))
    return torch.where(_b(s.present[:, i]), f, _OUTSIDE)


def _instance_field(s: Structure, i: int, x: torch.Tensor, y: torch.Tensor, category: "Category"):
    """(u_x, u_y, f) [B, H, W] of instance i at points x, y, with f clipped to the clip instance if any."""
    ux, uy = _local_coords(s, i, x, y)
    f = _shape_field(s, i, ux, uy)
    clip = category.instances[i].clip
    if clip is not None:
        j = category.index(clip)
        f = torch.maximum(f, _shape_field(s, j, *_local_coords(s, j, x, y)))
    return ux, uy, f


def _window(s: Structure, i: int, size: int, margin: int = 2) -> tuple[slice, slice] | None:
    """Pixel rows and columns covering instance i in every face of the batch (None if nowhere).

    Every shape lies in the unit disk of its local coordinates, so in ``w`` (after taper and bend) it lies in
    |w_x| <= 1 + |taper|, -1 + min(bend, 0) (1 + |taper|)^2 <= w_y <= 1 + max(bend, 0) (1 + |taper|)^2.
    """
    present = s.present[:, i]
    if not present.any():
        return None
    half_x = 1.0 + s.taper[present, i].abs()
    bend = s.bend[present, i] * half_x * half_x
    lo_y, hi_y = -1.0 + bend.clamp(max=0.0), 1.0 + bend.clamp(min=0.0)
    centre_w = torch.stack([torch.zeros_like(lo_y), (lo_y + hi_y) / 2], -1)
    half_w = torch.stack([half_x, (hi_y - lo_y) / 2], -1)
    matrix = s.matrix[present, i]
    centre = (matrix @ centre_w[..., None])[..., 0] + s.offset[present, i]
    half = (matrix.abs() @ half_w[..., None])[..., 0]
    scale = (size - 1) / 2
    lo = ((centre - half).amin(0) + 1) * scale
    hi = ((centre + half).amax(0) + 1) * scale
    x0, y0 = (max(int(math.floor(v)) - margin, 0) for v in lo.tolist())
    x1, y1 = (min(int(math.ceil(v)) + margin + 1, size) for v in hi.tolist())
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


# ---------------------------------------------------------------------------------------------------------
# Textures (functions of local coordinates and appearance only)


def _smooth01(t: torch.Tensor, sharpness: float = 3.0) -> torch.Tensor:
    return 0.5 + 0.5 * torch.tanh(sharpness * t)


def _texture_blotch(px, py, _ux, _uy, a: Appearance) -> torch.Tensor:
    waves = a.skin_waves
    t = sum(torch.sin(_b(waves[:, j, 0]) * px + _b(waves[:, j, 1]) * py + _b(waves[:, j, 2]))
            for j in range(waves.shape[1]))
    return 0.5 + t / 6.0


def _texture_strands(px, py, _ux, _uy, a: Appearance) -> torch.Tensor:
    angle, freq, amp, wave = (_b(t) for t in a.strands.unbind(-1))
    along = torch.cos(angle) * px + torch.sin(angle) * py
    across = torch.cos(angle) * py - torch.sin(angle) * px
    return (0.5 + 0.5 * torch.sin(freq * across + amp * torch.sin(wave * along))) ** 2


def _texture_cloth(px, py, _ux, _uy, a: Appearance) -> torch.Tensor:
    kind, angle, freq, phase = (_b(t) for t in a.cloth.unbind(-1))
    sx = freq * (torch.cos(angle) * px + torch.sin(angle) * py) + phase
    sy = freq * (torch.cos(angle) * py - torch.sin(angle) * px) + phase
    stripes = _smooth01(torch.sin(sx))
    checks = _smooth01(2.0 * torch.sin(sx) * torch.sin(sy))
    dots = _smooth01(torch.cos(sx) + torch.cos(sy) - 1.0, 4.0)
    return (kind == 1) * stripes + (kind == 2) * checks + (kind == 3) * dots


def _texture_iris(_px, _py, ux, uy, a: Appearance) -> torch.Tensor:
    spokes, phase, pupil = (_b(t) for t in a.iris.unbind(-1))
    r = torch.hypot(ux, uy)
    rays = 0.35 * (0.5 + 0.5 * torch.sin(spokes * torch.atan2(uy, ux) + phase))
    ring = 0.7 * ((r - 0.78) / 0.15).clamp(0.0, 1.0)
    return torch.maximum(torch.maximum(rays, ring), ((pupil - r) / 0.08 + 0.5).clamp(0.0, 1.0))


def _texture_sclera(_px, _py, ux, _uy, _a) -> torch.Tensor:
    return (0.8 * ux * ux).clamp(0.0, 1.0)


def _texture_lips(_px, _py, _ux, uy, _a) -> torch.Tensor:
    return torch.exp(-(uy / 0.16) ** 2)


TEXTURES = {  # by group; other categories draw their parts with these too (data/cars.py)
    "blotch": _texture_blotch, "strands": _texture_strands, "cloth": _texture_cloth,
    "iris": _texture_iris, "sclera": _texture_sclera, "lips": _texture_lips,
}
_TEXTURE_OF = {name: TEXTURES[group] for group, names in _TEXTURE_GROUPS.items() for name in names}


class Category(NamedTuple):
    """A procedural object category: its labels, its part instances (back to front), the texture of each, and
    how to draw a structure and an appearance. The renderer, the true transfer and the true correspondence work
    for any of them; :data:`FACES` is the default, ``data/cars.py`` another (kept out of training and tuning: the
    check that the recipe works on a category it was not made on)."""

    name: str
    labels: tuple[str, ...]
    instances: tuple[Instance, ...]
    texture_of: dict[str, Callable]                                   # instance name -> texture function
    sample_structure: Callable[[int, "int | torch.Generator", str], Structure]
    sample_appearance: Callable[[int, "int | torch.Generator"], Appearance]

    def index(self, name: str) -> int:
        return next(i for i, inst in enumerate(self.instances) if inst.name == name)

    def check(self, structure: Structure, appearance: "Appearance | None" = None) -> None:
        """Refuse parameters drawn for another category (they would index the wrong parts or fail deep inside)."""
        if structure.matrix.shape[1] != len(self.instances):
            raise ValueError(f"the structure has {structure.matrix.shape[1]} part instances but {self.name} have "
                             f"{len(self.instances)}: pass the category it was sampled for (category=...)")
        if appearance is not None and appearance.base.shape[1] != len(self.labels):
            raise ValueError(f"the appearance has {appearance.base.shape[1]} labels but {self.name} have "
                             f"{len(self.labels)}: pass the category it was sampled for (category=...)")

    def top_to_label(self) -> torch.Tensor:
        """Front-most instance + 1 -> label [P + 1] (0 = background)."""
        return torch.tensor([0] + [inst.label for inst in self.instances])


FACES = Category("faces", LABELS, INSTANCES, _TEXTURE_OF, sample_structure, sample_appearance)


def _instance_colour(a: Appearance, i: int, ux: torch.Tensor, uy: torch.Tensor, category: "Category") -> torch.Tensor:
    """Colour [B, 3, H, W] of instance i at local coordinates (ux, uy) [B, H, W]: base mixed with accent."""
    inst = category.instances[i]
    sx, sy = inst.texture_scale
    pattern = category.texture_of[inst.name](ux * sx, uy * sy, ux, uy, a)[:, None]
    base, accent = a.base[:, inst.label, :, None, None], a.accent[:, inst.label, :, None, None]
    return base + (accent - base) * pattern


def _background(a: Appearance, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Background gradient [B, 3, H, W] at image points x, y (broadcastable to [B, H, W])."""
    angle = _b(a.background)
    t = (0.5 + 0.35 * (torch.cos(angle) * x + torch.sin(angle) * y)).clamp(0.0, 1.0)[:, None]
    c0, c1 = a.base[:, 0, :, None, None], a.accent[:, 0, :, None, None]
    return c0 + (c1 - c0) * t


# ---------------------------------------------------------------------------------------------------------
# Rasterisation, transfer and correspondence


def _coverage(f: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of a field f [B, H, W] sampled on the pixel grid: the field divided by
    its finite-difference gradient is a signed distance in pixels; coverage = clamp(0.5 - distance)."""
    if min(f.shape[-2:]) < 2:
        return (f < 0).to(f.dtype)
    gy, gx = torch.gradient(f, dim=(1, 2))
    return (0.5 - f / torch.hypot(gx, gy).clamp_min(1e-4)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class _Raster:
    top: torch.Tensor               # [B, H, W] front-most instance + 1 (0 = background)
    local: torch.Tensor             # [B, 2, H, W] its local coordinates (background: image coordinates)
    image: torch.Tensor | None      # [B, 3, H, W] when an appearance was given


def _rasterise(s: Structure, size: int, a: Appearance | None = None, windowed: bool = True,
               category: "Category | None" = None) -> _Raster:
    """Painter's algorithm over the instances, each evaluated only inside its bounding window (``windowed``; the
    windows are read back to the host, so off the CPU every instance is evaluated over the whole frame instead)."""
    category = category or FACES
    b, device = len(s), s.matrix.device
    x, y = _pixel_grid(size, device)
    top = torch.zeros(b, size, size, dtype=torch.long, device=device)
    local = torch.stack([x.expand(b, size, size), y.expand(b, size, size)], 1).clone()
    image = None if a is None else _background(a, x, y)
    for i in range(len(category.instances)):
        window = _window(s, i, size) if windowed else (slice(None), slice(None))
        if window is None:
            continue
        rows, cols = window
        ux, uy, f = _instance_field(s, i, x[..., cols], y[:, rows], category)
        inside = f < 0
        top[:, rows, cols] = torch.where(inside, i + 1, top[:, rows, cols])
        local[:, :, rows, cols] = torch.where(inside[:, None], torch.stack([ux, uy], 1), local[:, :, rows, cols])
        if image is not None:
            region = image[:, :, rows, cols]        # a view: blended in place
            region.lerp_(_instance_colour(a, i, ux, uy, category), _coverage(f)[:, None])
    return _Raster(top, local, image)


# Part windows give exactly the whole-frame pixels from this size up (checked on 7000 faces of both splits at 48, 64
# and 96 px, chunks of 1 and 16: tests/test_faces.py); at 16-32 px they did not, and were slower than the whole frame.
WINDOWED_FROM = 48


def render(structure: Structure, appearance: Appearance, size: int, chunk: int = 16, windowed: bool | None = None,
           category: "Category | None" = None):
    """Render faces (or another ``category``'s objects) where their parameters are (``structure.to(device)``).

    Returns ``(images [B, 3, size, size] float in [0, 1], labels [B, size, size] int64 (the category's labels),
    local_coords [B, 2, size, size])``: the local coordinates of the front-most part at each pixel centre
    (background: the image coordinates). Faces are processed ``chunk`` at a time: every part is evaluated
    in the union of its bounding boxes over the chunk, so small chunks keep those windows tight. ``windowed``
    (default: on the CPU only) chooses those windows; without them (one chunk, every part over the whole frame)
    nothing is read back to the host, which is what a GPU wants. Both give the same images from
    ``WINDOWED_FROM`` pixels up; below, a part's anti-aliased edge can reach past its window (and the window
    depends on the other faces of the chunk), so small frames are always rendered whole, which is faster there too.
    """
    if len(structure) != len(appearance):
        raise ValueError(f"structure has {len(structure)} objects but appearance has {len(appearance)}")
    category = category or FACES
    category.check(structure, appearance)
    if windowed is None:
        windowed = structure.matrix.device.type == "cpu" and size >= WINDOWED_FROM
    chunk = chunk if windowed else max(1, len(structure))
    to_label = category.top_to_label().to(structure.matrix.device, non_blocking=True)
    images, labels, local = [], [], []
    for i in range(0, len(structure), chunk):
        r = _rasterise(structure.index(slice(i, i + chunk)), size, appearance.index(slice(i, i + chunk)), windowed,
                       category)
        images.append(r.image.clamp(0.0, 1.0))
        labels.append(to_label[r.top])
        local.append(r.local)
    return torch.cat(images), torch.cat(labels), torch.cat(local)


def true_transfer(s_content: Structure, a_style: Appearance, size: int,
                  a_content: Appearance | None = None, category: "Category | None" = None) -> torch.Tensor:
    """Exact appearance transfer ``render(S_content, A_style)`` [B, 3, size, size].

    The evaluation keeps the content background (docs/METHOD.md): pass ``a_content`` and the background colours
    come from it. Without it the style's background is used; the object (every non-background pixel) is identical
    either way, and all object metrics only look inside the content object mask.
    """
    if a_content is not None:
        a_style = a_style.with_background_of(a_content)
    return render(s_content, a_style, size, category=category)[0]


def _top_at(s: Structure, x: torch.Tensor, y: torch.Tensor, category: "Category") -> torch.Tensor:
    """Front-most instance + 1 (0 = background) at arbitrary image points x, y [B, H, W]."""
    top = torch.zeros(x.shape, dtype=torch.long, device=x.device)
    for i in range(len(category.instances)):
        top = torch.where(_instance_field(s, i, x, y, category)[2] < 0, i + 1, top)
    return top


def true_correspondence(s_content: Structure, s_style: Structure, size: int, chunk: int = 16,
                        category: "Category | None" = None):
    """Dense ground-truth correspondence from content to style pixels.

    Returns ``(flow [B, 2, size, size], visible [B, 1, size, size] bool)``. ``flow[:, :, i, j]`` is the
    (x, y) position in the style image, in [-1, 1] (``align_corners=True``; ready for ``grid_sample``), of
    the point on the same part instance (left eye to left eye) with the same local coordinates as content
    pixel (i, j). ``visible`` is False on the content background (where the flow is the identity), where
    the target falls outside the style image, where the style lacks that instance (hairstyles), and where
    it is hidden in the style by a part in front of it (including an iris under the eyelids).
    """
    if len(s_content) != len(s_style):
        raise ValueError(f"{len(s_content)} content structures but {len(s_style)} style structures")
    category = category or FACES
    category.check(s_content)
    category.check(s_style)
    flows, visibles = [], []
    for i in range(0, len(s_content), chunk):
        content, style = s_content.index(slice(i, i + chunk)), s_style.index(slice(i, i + chunk))
        r = _rasterise(content, size, category=category)
        qx, qy = _local_to_image(style, (r.top - 1).clamp_min(0), r.local[:, 0], r.local[:, 1])
        is_object = r.top > 0
        inside = (qx.abs() <= 1.0 + _EDGE_TOLERANCE) & (qy.abs() <= 1.0 + _EDGE_TOLERANCE)
        visibles.append((is_object & inside & (_top_at(style, qx, qy, category) == r.top))[:, None])
        flows.append(torch.where(is_object[:, None], torch.stack([qx, qy], 1), r.local))
    return torch.cat(flows), torch.cat(visibles)

# ---------------------------------------------------------------------------------------------------------
# Evaluation pairs and a training dataset


@dataclass(frozen=True)
class FacePairs:
    """A batch of (content, style) pairs with everything the evaluation protocol needs.

    content, style, target: [B, 3, R, R]; target = true_transfer(content structure, style appearance), with
    the content background. content_labels, style_labels: [B, R, R]. flow: [B, 2, R, R], visible:
    [B, 1, R, R] (see :func:`true_correspondence`).
    """

    content: torch.Tensor
    style: torch.Tensor
    target: torch.Tensor
    content_labels: torch.Tensor
    style_labels: torch.Tensor
    flow: torch.Tensor
    visible: torch.Tensor
    content_structure: Structure
    style_structure: Structure
    content_appearance: Appearance
    style_appearance: Appearance


def sample_pairs(n: int, seed: int = 0, size: int = 64, split: str = "easy",
                 category: Category = FACES) -> FacePairs:
    """``n`` evaluation pairs; content and style structures and appearances are four independent draws."""
    s_c, s_s = (category.sample_structure(n, mix_seed(seed, k), split) for k in (0, 1))
    a_c, a_s = (category.sample_appearance(n, mix_seed(seed, k)) for k in (2, 3))
    content, content_labels, _ = render(s_c, a_c, size, category=category)
    style, style_labels, _ = render(s_s, a_s, size, category=category)
    flow, visible = true_correspondence(s_c, s_s, size, category=category)
    return FacePairs(content, style, true_transfer(s_c, a_s, size, a_content=a_c, category=category),
                     content_labels, style_labels, flow, visible, s_c, s_s, a_c, a_s)


class FaceDraw(NamedTuple):
    """Drawn objects (faces by default), not yet rendered: what batch workers hand to the device that renders them."""

    structure: Structure
    appearance: Appearance
    size: int
    category: Category = FACES

    def render(self, device=None) -> torch.Tensor:
        """Images [N, 3, size, size] in [0, 1], rendered on ``device`` (default: the CPU)."""
        device = torch.device(device or "cpu")
        return render(self.structure.to(device), self.appearance.to(device), self.size, category=self.category)[0]


class ProceduralDataset(torch.utils.data.Dataset):
    """Map-style dataset of single images of a procedural ``category`` (faces by default); item ``i`` is fully
    determined by ``(seed, i)``.

    Structure and appearance of item ``i`` come from two independent generators. ``dataset[i]`` is a
    float tensor [3, size, size] in [0, 1]; :meth:`batch` renders many items at once (much faster).
    """

    def __init__(self, size: int = 64, length: int = 30_000, seed: int = 0, split: str = "easy",
                 category: Category = FACES):
        self.size, self.length, self.seed, self.split = size, length, seed, check_split(split)
        self.category = category

    def __len__(self) -> int:
        return self.length

    def parameters(self, index: int) -> tuple[Structure, Appearance]:
        """Structure and appearance (batch of one) of item ``index``."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        index %= self.length
        return (self.category.sample_structure(1, mix_seed(self.seed, index, 0), self.split),
                self.category.sample_appearance(1, mix_seed(self.seed, index, 1)))

    def draw(self, indices: Sequence[int]) -> "FaceDraw":
        """The parameters of the given items (CPU, a few hundred numbers per object), to render where wanted."""
        params = [self.parameters(int(i)) for i in indices]
        return FaceDraw(Structure.cat([p[0] for p in params]), Appearance.cat([p[1] for p in params]), self.size,
                        self.category)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Images [N, 3, size, size] of the given items, rendered in one call."""
        return self.draw(indices).render()

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.batch([index])[0]


FaceDataset = ProceduralDataset  # the faces' (its default category)
