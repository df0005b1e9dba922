"""Make the pack's own ``coat_model`` importable under its top-level name.

ComfyUI does not put a pack's folder on ``sys.path``, so a git clone into ``custom_nodes/`` could not
``import coat_model``. Importing it here by path (once, unless it is already imported, e.g. from a development
install) gives one copy with its real module names, so errors read ``coat_model.model.inputs.COATInputError: ...``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "coat_model"


def load():
    if "coat_model" not in sys.modules:
        spec = importlib.util.spec_from_file_location("coat_model", PACKAGE / "__init__.py",
                                                      submodule_search_locations=[str(PACKAGE)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["coat_model"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["coat_model"]
            raise
    return sys.modules["coat_model"]


coat_model = load()
