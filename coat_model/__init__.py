"""COAT: Correspondence-driven Object Appearance Transfer, in pure PyTorch (no ComfyUI import).

>>> import coat_model
>>> model = coat_model.load("coat_faces_64.safetensors")
>>> images, confidence = model.transfer(content, style)   # [B, 3, H, W] in [0, 1]
"""

from .io import CheckpointError, import_stylegan2, load, read_config, save
from .model.attention import attend, chunked_argmax, chunked_topk
from .model.coat import COAT, Alignment, Latents
from .model.config import COATConfig
from .model.inputs import COATInputError

__all__ = [
    "COAT", "COATConfig", "Latents", "Alignment", "load", "save", "read_config", "import_stylegan2",
    "attend", "chunked_argmax", "chunked_topk", "COATInputError", "CheckpointError",
]
__version__ = "0.1.0"
