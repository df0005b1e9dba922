"""Benchmarks: ``python -m coat_model.bench speed|quality|bounds|figures ...`` (``speed.py``, ``quality.py``,
``bounds.py``, ``figures.py``; the speed benchmark's parts: ``timing.py``, ``rss.py``, ``isolation.py``,
``units.py``, ``speed_report.py``, ``speed_cli.py``).

Results go to JSON and, with ``--update-md``, into the marked sections of ``BENCHMARKS.md``: a section named
``NAME`` is everything between the lines ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.
"""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the body of marked section ``name`` replaced by ``body`` (the markers stay)."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"no section {begin} ... {end} found")
    return pattern.sub(lambda _: f"{begin}\n{body.strip()}\n{end}", text, count=1)


def update_markdown(path, sections: dict[str, str]) -> None:
    """Rewrite the marked ``sections`` ({name: markdown}) of the file at ``path`` in place; sections without
    markers are appended at the end, under a heading of their name."""
    path = Path(path)
    text = path.read_text()
    for name, body in sections.items():
        if f"<!-- bench:{name} -->" not in text:
            text = text.rstrip("\n") + f"\n\n### {name}\n<!-- bench:{name} -->\n<!-- /bench:{name} -->\n"
        text = replace_section(text, name, body)
    path.write_text(text)
