"""Procedural cars (side view) with exact ground truth: a second category for the faces' renderer.

The recipe must work, with only ``--data`` changed, on categories it was not made on. Faces are what the project
tuned on; cars are kept out of that: nothing in the model, the losses or the defaults was chosen on them. They share
the faces' machinery (``faces.py``: implicit part shapes in local coordinates, analytic anti-aliasing, the true
transfer and the true correspondence) and differ in everything a category is made of: 12 part instances with 9
labels, their layout (an elongated object whose size, wheelbase and cabin vary), and their looks (a livery on the
body, spoked rims, glass, lights).

Hard negatives by construction, as the faces' eyes and brows: the two wheels and the two windows are the same
shape with the same texture, and the head and tail lights differ only by colour and end.

    coat-train --data procedural:cars ...                                           (training, like faces)
    python -m coat_model.bench quality --data procedural:cars --ckpt RUN/coat.safetensors   (the bench)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .faces import (
    TEXTURES, Appearance, Category, Instance, Structure, _choice, _mix, _Part, _posed, _random_colour, _rot,
    _stack, _strands, _sym, _uniform, _waves, check_split, make_generator,
)

__all__ = ["CARS", "CAR_LABELS", "CAR_INSTANCES", "sample_car_structure", "sample_car_appearance"]

CAR_LABELS: tuple[str, ...] = (
    "background", "body", "cabin", "windows", "tyres", "rims", "headlights", "taillights", "bumpers",
)
_L = {name: i for i, name in enumerate(CAR_LABELS)}

CAR_INSTANCES: tuple[Instance, ...] = (     # back to front
    Instance("cabin", _L["cabin"], None, (0.6, 0.35)),
    Instance("body", _L["body"], None, (2.0, 0.6)),
    Instance("window_front", _L["windows"], "cabin", (0.2, 0.12)),
    Instance("window_rear", _L["windows"], "cabin", (0.2, 0.12)),
    Instance("bumper_rear", _L["bumpers"], None, (0.12, 0.06)),
    Instance("bumper_front", _L["bumpers"], None, (0.12, 0.06)),
    Instance("wheel_rear", _L["tyres"], None, (0.2, 0.2)),
    Instance("wheel_front", _L["tyres"], None, (0.2, 0.2)),
    Instance("rim_rear", _L["rims"], "wheel_rear", (0.12, 0.12)),
    Instance("rim_front", _L["rims"], "wheel_front", (0.12, 0.12)),
    Instance("headlight", _L["headlights"], None, (0.08, 0.05)),
    Instance("taillight", _L["taillights"], None, (0.08, 0.05)),
)
_TEXTURE_GROUPS = {
    "cloth": ("body",),                                   # the livery: plain, stripes, checks or dots
    "blotch": ("cabin", "bumper_rear", "bumper_front"),
    "sclera": ("window_front", "window_rear"),            # glass: lighter towards its ends
    "strands": ("wheel_rear", "wheel_front"),             # tread
    "iris": ("rim_rear", "rim_front"),                    # spokes around a hub
    "lips": ("headlight", "taillight"),                   # a bright band
}
_TEXTURE_OF = {name: TEXTURES[group] for group, names in _TEXTURE_GROUPS.items() for name in names}


@dataclass(frozen=True)
class _Split:
    rotation: float                 # max |global rotation|, degrees
    scale: tuple[float, float]      # body half-length in image units
    translate: float                # max |translation|, image units
    flip: float                     # probability of facing left instead of right


_SPLITS = {
    "easy": _Split(4.0, (0.72, 0.85), 0.06, 0.0),
    "hard": _Split(15.0, (0.5, 0.9), 0.15, 0.5),
}


def _car_parts(g: torch.Generator, n: int) -> dict[str, _Part]:
    """Random car-space placement of every instance (the body near the origin, half-length about 1, front at +x,
    y down)."""
    u = lambda lo, hi: _uniform(g, n, lo, hi)  # noqa: E731
    s = lambda amplitude: _sym(g, n, amplitude)  # noqa: E731
    zero = torch.zeros(n)
    body_y, body_rx, body_ry = u(0.0, 0.08), u(0.95, 1.0), u(0.26, 0.34)
    cabin_x, cabin_rx, cabin_ry = u(-0.25, 0.05), u(0.45, 0.7), u(0.28, 0.4)
    cabin_y = body_y - 0.9 * body_ry
    wheel_y, wheel_r = body_y + body_ry * u(0.4, 0.6), u(0.17, 0.24)
    rim = wheel_r * u(0.5, 0.65)
    light_rx, light_ry = u(0.07, 0.1), u(0.04, 0.06)
    bumper_rx, bumper_ry = u(0.1, 0.14), u(0.05, 0.07)
    parts = {
        "cabin": _Part(cabin_x, cabin_y, cabin_rx, cabin_ry, zero, taper=u(-0.5, -0.2),
                       cut=(1.0, torch.full((n,), 0.1), 0.0, 0.0)),                    # its lower half is the body's
        "body": _Part(zero, body_y, body_rx, body_ry, zero, bend=u(0.0, 0.15), lens=u(0.0, 0.4),
                      cut=(1.0, u(0.45, 0.6), 0.0, 0.0)),                              # a flat underside
        "window_front": _Part(cabin_x + cabin_rx * u(0.25, 0.35), cabin_y - cabin_ry * u(0.35, 0.5),
                              cabin_rx * u(0.28, 0.36), cabin_ry * u(0.3, 0.4), zero, lens=u(0.2, 0.6)),
        "window_rear": _Part(cabin_x - cabin_rx * u(0.25, 0.35), cabin_y - cabin_ry * u(0.35, 0.5),
                             cabin_rx * u(0.28, 0.36), cabin_ry * u(0.3, 0.4), zero, lens=u(0.2, 0.6)),
        "bumper_rear": _Part(-body_rx * u(0.88, 0.95), body_y + body_ry * u(0.25, 0.4), bumper_rx, bumper_ry, zero),
        "bumper_front": _Part(body_rx * u(0.88, 0.95), body_y + body_ry * u(0.25, 0.4), bumper_rx, bumper_ry, zero),
        "wheel_rear": _Part(u(-0.7, -0.55), wheel_y, wheel_r, wheel_r, zero),
        "wheel_front": _Part(u(0.55, 0.7), wheel_y, wheel_r, wheel_r, zero),
        "headlight": _Part(body_rx * u(0.82, 0.9), body_y - body_ry * u(0.1, 0.3), light_rx, light_ry, s(0.3),
                           lens=u(0.0, 0.5)),
        "taillight": _Part(-body_rx * u(0.85, 0.93), body_y - body_ry * u(0.1, 0.3), light_rx, light_ry, s(0.3),
                           lens=u(0.0, 0.5)),
    }
    parts["rim_rear"] = parts["wheel_rear"]._replace(rx=rim, ry=rim)
    parts["rim_front"] = parts["wheel_front"]._replace(rx=rim, ry=rim)
    return parts


def sample_car_structure(n: int, generator: int | torch.Generator = 0, split: str = "easy") -> Structure:
    """Sample ``n`` car geometries. ``split="hard"`` adds cars facing left, larger turns, sizes and shifts."""
    cfg, g = _SPLITS[check_split(split)], make_generator(generator)
    p = _stack(_car_parts(g, n), n, CAR_INSTANCES)
    rotation, scale = torch.deg2rad(_sym(g, n, cfg.rotation)), _uniform(g, n, *cfg.scale)
    shift = torch.stack([_sym(g, n, cfg.translate), 0.1 * scale + _sym(g, n, cfg.translate)], -1)  # roof to wheels
    flipped = torch.rand(n, generator=g) < cfg.flip
    matrix = _rot(p["rotation"]) @ torch.diag_embed(torch.stack([p["rx"], p["ry"]], -1))
    return _posed(p, matrix, torch.stack([p["cx"], p["cy"]], -1), scale, rotation, shift, flipped)


def sample_car_appearance(n: int, generator: int | torch.Generator = 0) -> Appearance:
    """Sample ``n`` car appearances (independent of any structure)."""
    g = make_generator(generator)
    u = lambda lo, hi: _uniform(g, n, lo, hi)  # noqa: E731
    paint = _random_colour(g, n, (0.3, 1.0), (0.2, 0.95))
    grey = lambda lo, hi: _random_colour(g, n, (0.0, 0.1), (lo, hi))  # noqa: E731
    base = torch.stack([
        _random_colour(g, n, (0.0, 0.5), (0.3, 1.0)),                                   # background
        paint,                                                                          # body
        _mix(g, n, 0.5, paint * u(0.7, 0.9)[:, None], _random_colour(g, n)),            # cabin (roof, pillars)
        _random_colour(g, n, (0.1, 0.5), (0.1, 0.5), (0.5, 0.7)),                        # windows
        grey(0.05, 0.2),                                                                # tyres
        _mix(g, n, 0.6, grey(0.6, 0.9), _random_colour(g, n, (0.3, 1.0), (0.3, 0.9))),  # rims
        _random_colour(g, n, (0.0, 0.4), (0.8, 1.0), (0.1, 0.18)),                       # headlights
        _random_colour(g, n, (0.6, 1.0), (0.5, 0.9), (0.95, 1.05)),                      # taillights
        _mix(g, n, 0.5, grey(0.1, 0.35), paint * u(0.75, 0.9)[:, None]),                # bumpers
    ], 1)
    accent = base * torch.stack([
        torch.ones(n), torch.ones(n), u(0.8, 0.92), u(1.4, 1.8), u(0.5, 0.7), u(0.25, 0.4), u(0.8, 0.9),
        u(0.65, 0.8), u(0.8, 0.92),
    ], 1)[..., None]
    accent = accent.clamp(0.0, 1.0)
    accent[:, 0] = _random_colour(g, n, (0.0, 0.5), (0.3, 1.0))                     # background gradient end
    accent[:, _L["body"]] = _random_colour(g, n)                                     # the livery's second colour
    waves, tread = _waves(g, n), _strands(g, n)
    livery = torch.stack([_choice(g, n, (0.4, 0.3, 0.1, 0.2)).float(), u(0.0, math.pi), u(3.0, 7.0),
                          u(0.0, 2 * math.pi)], -1)
    spokes = torch.stack([torch.randint(4, 11, (n,), generator=g).float(), u(0.0, 2 * math.pi), u(0.25, 0.4)], -1)
    return Appearance(base, accent, waves, tread, livery, spokes, u(0.0, 2 * math.pi))


CARS = Category("cars", CAR_LABELS, CAR_INSTANCES, _TEXTURE_OF, sample_car_structure, sample_car_appearance)
