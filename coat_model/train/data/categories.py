"""The procedural categories by name: ``procedural:faces``, ``procedural:cars-hard``, ... (the ``--data`` of the
trainer and of the quality bench)."""

from __future__ import annotations

from .cars import CARS
from .faces import FACES, Category

CATEGORIES: dict[str, Category] = {c.name: c for c in (FACES, CARS)}
PREFIX = "procedural:"


def parse_procedural(spec: str) -> tuple[Category, str]:
    """``procedural:NAME`` or ``procedural:NAME-hard`` -> (the category, its split: "easy" or "hard")."""
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else None
    base, split = (name[:-5], "hard") if name and name.endswith("-hard") else (name, "easy")
    if base not in CATEGORIES:
        known = ", ".join(f"{PREFIX}{n} ({PREFIX}{n}-hard)" for n in CATEGORIES)
        raise ValueError(f"unknown procedural dataset {spec!r}; use one of {known}")
    return CATEGORIES[base], split
