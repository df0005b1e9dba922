"""README's module map names every module of coat_model/ and nodes/, and nothing that is not there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _map_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Module map"):]


def test_the_module_map_matches_the_tree():
    table = "\n".join(line for line in _map_section().splitlines() if line.startswith("| "))
    named = set()
    for cell in re.findall(r"`([\w/]+\.py)`", table):
        named.add(cell if cell.startswith("nodes/") else f"coat_model/{cell}")
    tree = {p.relative_to(ROOT).as_posix() for folder in ("coat_model", "nodes") for p in (ROOT / folder).rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(tree - named) == [], "modules missing from README's module map"
    assert sorted(named - tree) == [], "README's module map names modules that do not exist"
