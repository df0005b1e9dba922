"""The COAT nodes (ComfyUI V3 schema through the pinned ``comfy_api.v0_0_2`` adapter) and their extension.

Inside the pack import relatively only: ComfyUI has a top-level module named ``nodes`` too.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from . import library  # noqa: F401  (first: makes `import coat_model` work in a git clone)
from . import paths
from .align import COATAlign
from .decode import COATDecode
from .encode import COATEncode
from .loader import COATModelLoader, COATSaveModel
from .preview import COATMatchPreview
from .train import COATTrain
from .transfer import COATTransfer

__all__ = ["COATExtension", "NODES", "paths"]

NODES: list[type[io.ComfyNode]] = [
    COATModelLoader, COATEncode, COATAlign, COATDecode, COATTransfer, COATMatchPreview, COATSaveModel,
    COATTrain,
]


class COATExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)

